#!/usr/bin/env bash
# Builds the CPU emulation of every kernel in kernels/*.cu as a shared library for the emu_*.py
# drivers, and tsan_main (ThreadSanitizer race check of the expert and routing kernels).
# ASAN=1 / TSAN=1 instrument the library with AddressSanitizer / ThreadSanitizer (run python
# with LD_PRELOAD of the sanitizer's runtime; run.sh does). Output: $EMU_OUT (default
# /tmp/delo-kernel-emu).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
K=$here/../../kernels
OUT=${EMU_OUT:-/tmp/delo-kernel-emu}
mkdir -p "$OUT"
# One translation unit as build.rs makes (every .cu in name order); dynamic shared memory
# points at the emulator's buffer.
{
  echo "#include \"$here/cuda_emu.h\""
  for f in common.cuh $(cd "$K" && ls *.cu | sort); do
    sed -e 's/#include "common.cuh"//' -e 's/#pragma once//' \
      -e 's/extern __shared__ float4 delo_exp_smem\[\];/float4* delo_exp_smem = (float4*)g_dyn_smem;/' \
      -e 's/extern __shared__ float delo_route_smem\[\];/float* delo_route_smem = (float*)g_dyn_smem;/' \
      "$K/$f"
  done
  cat "$here/wrappers.cpp"
  echo "#include \"$here/exports.h\""
  python3 "$here/kernel_table.py"
} >"$OUT/emu_all.cpp"
san=
[ "${ASAN:-}" = 1 ] && san="-fsanitize=address -fno-omit-frame-pointer"
[ "${TSAN:-}" = 1 ] && san="-fsanitize=thread"
g++ -std=c++20 -O1 -g -fPIC -shared -Wno-unknown-pragmas $san \
  -o "$OUT/libemu.so" "$OUT/emu_all.cpp" -lpthread
if [ -z "$san" ]; then
  g++ -std=c++20 -O1 -g -fsanitize=thread -Wno-unknown-pragmas -o "$OUT/tsan_main" \
    "$here/tsan_main.cpp" "$OUT/emu_all.cpp" -lpthread
fi
echo "built $OUT/libemu.so${san:+ ($san)}"
