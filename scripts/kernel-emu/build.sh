#!/usr/bin/env bash
# Builds the CPU emulation of the DeLo kernels (kernels/experts.cu, kernels/route.cu) as a shared
# library for emu_experts.py / emu_route.py, and tsan_main (ThreadSanitizer race check).
# ASAN=1 instruments with AddressSanitizer (run python with LD_PRELOAD=$(gcc -print-file-name=libasan.so)
# ASAN_OPTIONS=detect_leaks=0). Output: $EMU_OUT (default /tmp/delo-kernel-emu).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
K=$here/../../kernels
OUT=${EMU_OUT:-/tmp/delo-kernel-emu}
mkdir -p "$OUT"
# One translation unit as build.rs makes; dynamic shared memory points at the emulator's buffer.
{
  echo "#include \"$here/cuda_emu.h\""
  for f in common.cuh experts.cu route.cu; do
    sed -e 's/#include "common.cuh"//' -e 's/#pragma once//' \
      -e 's/extern __shared__ float4 delo_exp_smem\[\];/float4* delo_exp_smem = (float4*)g_dyn_smem;/' \
      -e 's/extern __shared__ float delo_route_smem\[\];/float* delo_route_smem = (float*)g_dyn_smem;/' \
      "$K/$f"
  done
  cat "$here/wrappers.cpp"
} >"$OUT/emu_all.cpp"
g++ -std=c++20 -O1 -g -fPIC -shared -Wno-unknown-pragmas ${ASAN:+-fsanitize=address -fno-omit-frame-pointer} \
  -o "$OUT/libemu.so" "$OUT/emu_all.cpp" -lpthread
g++ -std=c++20 -O1 -g -fsanitize=thread -Wno-unknown-pragmas -o "$OUT/tsan_main" \
  "$here/tsan_main.cpp" "$OUT/emu_all.cpp" -lpthread
echo "built $OUT/libemu.so and $OUT/tsan_main"
