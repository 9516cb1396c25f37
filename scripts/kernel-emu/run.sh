#!/usr/bin/env bash
# Every check of the kernels' CPU emulation: builds it and runs each driver against its NumPy
# reference, plus tsan_main (races in the expert and routing kernels). SANITIZERS=1 adds the
# drivers under AddressSanitizer and, on their small cases, ThreadSanitizer.
# PYTHON: a python with numpy (default python3). TSAN_PYTHON: one that starts with libtsan
# preloaded (a venv of the distribution's /usr/bin/python3 does; pyenv builds crash).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=${EMU_OUT:-/tmp/delo-kernel-emu}
PY=${PYTHON:-python3}
new="emu_elementwise emu_indexing emu_losses emu_norm emu_reduce"
run() {
  local py=$1; shift
  for d in "$@"; do
    echo "== $d"
    "$py" "$here/$d.py"
  done
}

EMU_OUT=$base "$here/build.sh"
EMU_OUT=$base run "$PY" $new emu_route emu_experts
"$base/tsan_main" >/dev/null
echo "tsan_main ok"
[ "${SANITIZERS:-}" = 1 ] || exit 0

EMU_OUT=$base/asan ASAN=1 "$here/build.sh"
EMU_OUT=$base/asan LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
  run "$PY" $new emu_route emu_experts
EMU_OUT=$base/tsan TSAN=1 "$here/build.sh"
EMU_OUT=$base/tsan EMU_SMALL=1 LD_PRELOAD=$(gcc -print-file-name=libtsan.so) \
  TSAN_OPTIONS=halt_on_error=1 run "${TSAN_PYTHON:-$PY}" $new
echo "all emulation checks ok"
