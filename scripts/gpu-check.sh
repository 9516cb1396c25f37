#!/usr/bin/env bash
# Runs, on a GPU machine that has neither cargo nor network, what scripts/gpu-build.sh built, in
# at most DEADLINE seconds (default 330), correctness first:
#
#   1. the CUDA test binaries (cuda_parity, cuda_experts, cuda_model, cuda_step, cuda_cli,
#      cuda_ptx), each under TEST_TIMEOUT (default 120 s), one test at a time (TEST_THREADS=1: they share the device);
#   2. `delo bench kernels --reps KERNEL_REPS` (default 20), under KERNELS_TIMEOUT (90 s);
#   3. `delo bench train --preset base --batch B --device cuda --torch --steps TRAIN_STEPS
#      --rounds TRAIN_ROUNDS` (2 and 1) for B in TRAIN_BATCHES ("4 32"), each under
#      TRAIN_TIMEOUT (150 s), torch.compile given at most COMPILE_BUDGET (90 s) of it.
#
# Each step appends its section to $OUT/gpu-report.md as soon as it ends (a run cut short still
# returns what ran); a step that would start with too little of DEADLINE left is skipped, and the
# report says so. The raw output of every step goes to one file, $OUT/gpu-check.log. Nothing
# else is written under $OUT (default: the gpu-dist folder).
#
# Test counts come from libtest's summary lines ("test result: ok. N passed; N failed; N
# ignored; ..."). The CUDA tests report the tests they cannot run here as ignored, with the
# reason: on the GPU machine an ignored test means the CUDA device (or the embedded PTX) was not
# found, which is a failure, except a test ignored only for want of ptxas (a build tool), which is
# a warning. `delo devices` is asked first: no CUDA device is a loud failure, and then the
# benchmarks are skipped. The exit status is 0 only when everything ran and passed.
#
# Run it as gpu-dist/gpu-check.sh from the repository root (the tests read tests/data through
# CARGO_MANIFEST_DIR, which this script exports as that root; REPO=/path overrides it), or as
# scripts/gpu-check.sh next to a built gpu-dist/ (DIST=/path/to/gpu-dist overrides). The
# binaries are unpacked from gpu-dist/delo-gpu.tar.{xz,gz} into a temporary folder removed at
# the end. It finds the CUDA driver library and cuBLAS 13 (pip wheels and toolkits often keep
# them outside the loader's default path) and adds their folders to the END of LD_LIBRARY_PATH:
# a library the loader already finds (ldconfig or LD_LIBRARY_PATH, e.g. an emulated driver) is
# used as it is.
#
# Environment: DIST, OUT, REPO, DEADLINE, TEST_TIMEOUT, TEST_THREADS, KERNELS_TIMEOUT,
# KERNEL_REPS, TRAIN_TIMEOUT, TRAIN_BATCHES, TRAIN_STEPS, TRAIN_ROUNDS, COMPILE_BUDGET,
# SKIP_BENCH=1.
set -uo pipefail
T0=$SECONDS
DEADLINE=${DEADLINE:-330}
TEST_TIMEOUT=${TEST_TIMEOUT:-120}
TEST_THREADS=${TEST_THREADS:-1}
KERNELS_TIMEOUT=${KERNELS_TIMEOUT:-90}
KERNEL_REPS=${KERNEL_REPS:-20}
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-150}
TRAIN_BATCHES=${TRAIN_BATCHES:-4 32}
TRAIN_STEPS=${TRAIN_STEPS:-2}
TRAIN_ROUNDS=${TRAIN_ROUNDS:-1}
COMPILE_BUDGET=${COMPILE_BUDGET:-90}
# A step starts only with at least this many seconds of DEADLINE left.
MIN_TEST_S=15
MIN_KERNELS_S=20
MIN_TRAIN_S=60

here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${DIST:-}" ]; then
  DIST=$(cd "$DIST" && pwd)
elif [ -f "$PWD/gpu-dist/MANIFEST.txt" ]; then
  DIST=$PWD/gpu-dist
elif [ -f "$here/MANIFEST.txt" ]; then
  DIST=$here
elif [ -f "$here/../gpu-dist/MANIFEST.txt" ]; then
  DIST=$(cd "$here/../gpu-dist" && pwd)
else
  echo "gpu-check: no gpu-dist/MANIFEST.txt found; run scripts/gpu-build.sh first (or set DIST)" >&2
  exit 2
fi
OUT=${OUT:-$DIST}
mkdir -p "$OUT"
REPORT=$OUT/gpu-report.md
LOG=$OUT/gpu-check.log
: >"$REPORT"
: >"$LOG"

say() {
  echo "gpu-check: $*"
  echo "gpu-check: $*" >>"$LOG"
}
md() { printf '%s\n' "$@" >>"$REPORT"; }
remaining() { echo $((DEADLINE - (SECONDS - T0))); }
elapsed() { echo $((SECONDS - T0)); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

failures=() # one line each, for the summary
warnings=()
skipped=()
rows=()

# ---- where things are ------------------------------------------------------------------------
# The repository root whose tests/data the test binaries read (through CARGO_MANIFEST_DIR).
if [ -n "${REPO:-}" ]; then
  REPO=$(cd "$REPO" && pwd)
elif [ -d "$PWD/tests/data" ]; then
  REPO=$PWD
elif [ -d "$DIST/../tests/data" ]; then
  REPO=$(cd "$DIST/.." && pwd)
else
  REPO=$PWD
fi
if [ ! -d "$REPO/tests/data" ]; then
  failures+=("no tests/data under $REPO: the fixture tests cannot find their data (run from the repository root or set REPO)")
fi
export CARGO_MANIFEST_DIR=$REPO

WORK=$(mktemp -d "${TMPDIR:-/tmp}/delo-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'say "interrupted"; exit 130' INT TERM

md "# delo GPU check" ""
md "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), host $(uname -n), $(uname -srm), $(nproc 2>/dev/null || echo '?') cores"
md "- gpu-dist: $DIST; repository root (CARGO_MANIFEST_DIR): $REPO; deadline ${DEADLINE}s"

# ---- unpack ------------------------------------------------------------------------------------
archive=
for a in "$DIST"/delo-gpu.tar.xz "$DIST"/delo-gpu.tar.gz; do
  [ -f "$a" ] && archive=$a && break
done
unpacked=0
if [ -z "$archive" ]; then
  failures+=("no delo-gpu.tar.xz or delo-gpu.tar.gz in $DIST: rebuild with scripts/gpu-build.sh")
else
  want=$(awk '$1 == "archive:" {print $4}' "$DIST/MANIFEST.txt")
  got=$(sha256sum "$archive" | cut -d' ' -f1)
  if [ -n "$want" ] && [ "$want" != "$got" ]; then
    failures+=("$(basename "$archive") does not match MANIFEST.txt (sha256 $got, expected $want): a partial copy?")
  fi
  case $archive in
    *.xz) flag=-J mod=xz ;;
    *) flag=-z mod=gzip ;;
  esac
  if command -v "$mod" >/dev/null && tar -C "$WORK" "$flag" -xf "$archive" >>"$LOG" 2>&1; then
    unpacked=1
  elif python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$archive" "$WORK" >>"$LOG" 2>&1; then
    unpacked=1
  else
    failures+=("could not unpack $archive (tar/$mod and python3's tarfile failed; see gpu-check.log)")
  fi
fi
DELO=$WORK/delo
# Tests that run the CLI find it through CARGO_BIN_EXE_delo.
export CARGO_BIN_EXE_delo=$DELO
md "- binaries: $([ "$unpacked" = 1 ] && echo "$(basename "$archive") unpacked into $WORK" || echo "NOT UNPACKED")"

# ---- libraries -------------------------------------------------------------------------------
# Directories that hold a file matching $1 (a glob), in search order, one per line.
lib_dirs() {
  local pat=$1 d
  local cands=(
    ${CUDA_HOME:+"$CUDA_HOME/lib64"} ${CUDA_HOME:+"$CUDA_HOME/lib"}
    ${CUDA_PATH:+"$CUDA_PATH/lib64"}
    /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib
    /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/targets/x86_64-linux/lib
    /usr/local/cuda-1[0-9]*/lib64
    /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib
    /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/wsl/lib /run/opengl-driver/lib
  )
  # Python wheels: nvidia/cu13/lib (CUDA 13 wheels), nvidia/cublas/lib (CUDA 12 wheels).
  local sp=()
  if command -v python3 >/dev/null; then
    while IFS= read -r d; do sp+=("$d"); done < <(timeout 30 python3 -c \
      'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))' \
      2>/dev/null || true)
  fi
  sp+=(${VIRTUAL_ENV:+"$VIRTUAL_ENV"/lib/python3*/site-packages}
    ${CONDA_PREFIX:+"$CONDA_PREFIX"/lib/python3*/site-packages}
    /opt/*/.venv/lib/python3*/site-packages
    /usr/local/lib/python3*/dist-packages /usr/local/lib/python3*/site-packages
    /usr/lib/python3/dist-packages "$HOME"/.local/lib/python3*/site-packages
    /opt/conda/lib/python3*/site-packages /opt/conda/envs/*/lib/python3*/site-packages)
  for d in "${sp[@]}"; do
    [ -d "$d/nvidia" ] || continue
    cands+=("$d"/nvidia/cu13/lib "$d"/nvidia/cublas/lib "$d"/nvidia/*/lib)
  done
  for d in "${cands[@]}"; do
    [ -d "$d" ] || continue
    compgen -G "$d/$pat" >/dev/null && echo "$d"
  done | awk '!seen[$0]++'
}

# Whether the dynamic loader already finds library $1 (soname) without help: in ldconfig's
# cache or in a folder of LD_LIBRARY_PATH. (No `grep -q`: with pipefail, ldconfig's SIGPIPE
# would read as "not found".)
loader_has() {
  ldconfig -p 2>/dev/null | grep "[[:space:]]$1 " >/dev/null && return 0
  local d dirs
  IFS=: read -ra dirs <<<"${LD_LIBRARY_PATH:-}"
  for d in "${dirs[@]}"; do
    [ -n "$d" ] && [ -e "$d/$1" ] && return 0
  done
  return 1
}

# Appends (never prepends): what LD_LIBRARY_PATH already names keeps precedence.
add_path() {
  case ":${LD_LIBRARY_PATH:-}:" in
    *":$1:"*) ;;
    *) export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$1" ;;
  esac
}

libnotes=()
find_lib() {
  local what=$1
  shift
  local optional=0
  if [ "$1" = --optional ]; then
    optional=1
    shift
  fi
  local soname d
  for soname in "$@"; do
    if loader_has "$soname"; then
      libnotes+=("$what: $soname found by the loader")
      return 0
    fi
  done
  for soname in "$@"; do
    d=$(lib_dirs "$soname*" | head -n 1 || true)
    if [ -n "$d" ]; then
      add_path "$d"
      libnotes+=("$what: $soname in $d (appended to LD_LIBRARY_PATH)")
      return 0
    fi
  done
  if [ "$optional" = 1 ]; then
    libnotes+=("$what: not found (optional; looked for $*)")
    return 1
  fi
  # Last resort: a bounded search of the system folders (not the repository, /tmp or homes)
  # for the first name. Toolkit stubs/ libraries only link; loading one fails every CUDA call.
  d=$(timeout 20 find /usr /opt /lib /lib64 /run /var/lib /srv -name "$1*" ! -path '*/stubs/*' \
    -print 2>/dev/null | head -n 1 || true)
  if [ -n "$d" ]; then
    add_path "$(dirname "$d")"
    libnotes+=("$what: $d (found by a file-system search, appended to LD_LIBRARY_PATH)")
    return 0
  fi
  libnotes+=("$what: NOT FOUND (looked for $*)")
  return 1
}

find_lib "CUDA driver" libcuda.so.1 libcuda.so
find_lib "cuBLAS" libcublas.so.13 libcublas.so
# libcublas finds its cuBLASLt next to it by itself; noted for the report.
find_lib "cuBLASLt" --optional libcublasLt.so.13 libcublasLt.so
# NVTX ranges (nsys timelines) need libnvToolsExt, which CUDA 13 toolkits no longer ship; older
# toolkits, Nsight Systems and the nvidia-nvtx wheels do. Without it the ranges are no-ops.
find_lib "NVTX" --optional libnvToolsExt.so.1 libnvToolsExt.so
# cuda_ptx assembles the PTX with the ptxas next to $NVCC (or next to an nvcc on PATH): point it
# at a toolkit's when neither is given.
if [ -z "${NVCC:-}" ] && ! command -v nvcc >/dev/null; then
  for d in ${CUDA_HOME:+"$CUDA_HOME/bin"} /usr/local/cuda/bin /usr/local/cuda-13*/bin; do
    if [ -x "$d/ptxas" ]; then
      export NVCC=$d/nvcc
      libnotes+=("ptxas: $d/ptxas (NVCC=$NVCC exported for cuda_ptx)")
      break
    fi
  done
fi

for n in "${libnotes[@]}"; do md "- $n"; done
md "- LD_LIBRARY_PATH: ${LD_LIBRARY_PATH:-(empty)}" ""
md "## Build manifest" "" '```' "$(cat "$DIST/MANIFEST.txt")" '```' ""
smi=$( (timeout 20 nvidia-smi 2>&1) || echo "(nvidia-smi unavailable or failed)")
md "## nvidia-smi" "" '```' "$smi" '```' ""
{
  printf '%s\n' "${libnotes[@]}" "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" "$smi"
} >>"$LOG"

# ---- is there a CUDA device? -------------------------------------------------------------------
NO_DEVICE=0
if [ "$unpacked" = 1 ]; then
  devs=$( (cd "$REPO" && timeout -k 5 60 "$DELO" devices) 2>&1)
  rc=$?
  echo "$devs" >>"$LOG"
  md "## delo devices (exit $rc)" "" '```' "$devs" '```' ""
  if ! printf '%s\n' "$devs" | grep -E '^cuda.*: available' >/dev/null; then
    NO_DEVICE=1
    why=$(printf '%s\n' "$devs" | grep -m1 '^cuda' || echo "delo devices exited $rc")
    failures+=("NO CUDA DEVICE: \`delo devices\` says: $why")
    md "**FAILURE: NO CUDA DEVICE FOUND.** \`delo devices\`: $why" ""
    say "FAILURE: no CUDA device found: $why"
  else
    say "$(printf '%s\n' "$devs" | grep -m1 '^cuda')"
  fi
fi

# ---- tests -------------------------------------------------------------------------------------
total_pass=0
total_fail=0
total_ign=0
device_ignored=0
md "## Tests" ""
tests=()
if [ "$unpacked" = 1 ]; then
  for t in "$WORK"/tests/*; do [ -x "$t" ] && tests+=("$t"); done
  [ "${#tests[@]}" -gt 0 ] || failures+=("the archive holds no test binary")
fi
for bin in "${tests[@]}"; do
  name=$(basename "$bin")
  rem=$(remaining)
  if [ "$rem" -lt "$MIN_TEST_S" ]; then
    skipped+=("test $name (only ${rem}s of the ${DEADLINE}s deadline left)")
    failures+=("test binary $name did not run: only ${rem}s of the ${DEADLINE}s deadline were left")
    rows+=("| $name | - | - | - | - | SKIPPED (deadline) |")
    md "### $name: SKIPPED, only ${rem}s of the ${DEADLINE}s deadline left" ""
    say "$name: skipped (deadline)"
    continue
  fi
  t=$(min "$TEST_TIMEOUT" "$rem")
  off=$(stat -c %s "$LOG")
  echo "===== test $name (timeout ${t}s, $(elapsed)s into the check) =====" >>"$LOG"
  start=$SECONDS
  (cd "$REPO" && timeout -k 5 "$t" "$bin" --test-threads="$TEST_THREADS" --color never \
    --nocapture) >>"$LOG" 2>&1
  rc=$?
  secs=$((SECONDS - start))
  seg=$WORK/segment.log
  tail -c +"$((off + 1))" "$LOG" | sed 's/\x1b\[[0-9;]*m//g' >"$seg"
  # libtest's (and libtest-mimic's) summary: "test result: ok. 16 passed; 0 failed; 2 ignored; ..."
  read -r pass fail ign nsum < <(grep -E '^test result: ' "$seg" |
    sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/' |
    awk 'NF == 3 {p += $1; f += $2; i += $3; n++} END {print p + 0, f + 0, i + 0, n + 0}')
  # "test NAME ... ignored (REASON)" (libtest: "ignored, REASON").
  ignored_lines=$(grep -E '^test .* \.\.\. ignored' "$seg" |
    sed -E 's/^test +([^ ]+) +\.\.\. ignored,? *\(?([^)]*)\)?$/\1: \2/' || true)
  failed_names=$(awk '/^failures:$/ {buf = ""; on = 1; next} on && /^    [^ ]/ {buf = buf " " $1}
    on && /^$/ && buf != "" {on = 0} END {print buf}' "$seg")
  status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="TIMED OUT after ${t}s"
  elif [ "$rc" -ne 0 ]; then
    status="FAILED (exit $rc)"
  elif [ "$nsum" -eq 0 ]; then
    status="FAILED (no libtest summary line)"
  fi
  if [ "$status" != ok ] && [ "$fail" -eq 0 ]; then fail=1; fi
  # Ignored tests: on the GPU machine each one is a test that could not run. Only a missing
  # ptxas (a build tool the GPU machine need not have) is a warning; anything else, the CUDA
  # device above all, is a failure.
  dev_ign=0
  tool_ign=0
  if [ -n "$ignored_lines" ]; then
    tool_ign=$(printf '%s\n' "$ignored_lines" | grep -ci 'ptxas' || true)
    dev_ign=$((ign - tool_ign))
    [ "$dev_ign" -ge 0 ] || dev_ign=0
  else
    dev_ign=$ign
  fi
  total_pass=$((total_pass + pass))
  total_fail=$((total_fail + fail))
  total_ign=$((total_ign + ign))
  device_ignored=$((device_ignored + dev_ign))
  if [ "$status" != ok ]; then
    failures+=("test binary $name: $status; failed tests:${failed_names:- (none named)}")
  elif [ "$fail" -gt 0 ]; then
    failures+=("test binary $name: $fail failed:${failed_names}")
  fi
  if [ "$dev_ign" -gt 0 ]; then
    failures+=("test binary $name: $dev_ign CUDA tests IGNORED, i.e. could not run: THE CUDA DEVICE WAS NOT FOUND")
  fi
  if [ "$tool_ign" -gt 0 ]; then
    warnings+=("test binary $name: $tool_ign tests ignored for want of ptxas (a build tool, not the device)")
  fi
  shown=$status
  if [ "$dev_ign" -gt 0 ]; then
    if [ "$status" = ok ]; then shown="FAILED: $dev_ign IGNORED (no device)"; else shown="$status; $dev_ign IGNORED (no device)"; fi
  fi
  rows+=("| $name | $pass | $fail | $ign | ${secs}s | $shown |")
  say "$name: $pass passed, $fail failed, $ign ignored in ${secs}s ($shown)"
  md "### $name: $pass passed, $fail failed, $ign ignored, ${secs}s: $shown" ""
  if [ "$dev_ign" -gt 0 ]; then
    md "**FAILURE: $dev_ign CUDA tests of $name were IGNORED: they could not run, the CUDA device (or the embedded PTX) was not found.**" ""
  fi
  if [ -n "$ignored_lines" ]; then
    md "Ignored:" "" '```' "$ignored_lines" '```' ""
  fi
  if [ "$status" != ok ] || [ "$fail" -gt 0 ]; then
    md "Failing:${failed_names:- (none named)}" "" '```' "$(tail -n 60 "$seg")" '```' ""
  fi
done
if [ "${#rows[@]}" -gt 0 ]; then
  md "**Tests: $total_pass passed, $total_fail failed, $total_ign ignored** over ${#rows[@]} binaries." ""
  md "| binary | passed | failed | ignored | time | status |" "|---|---|---|---|---|---|" "${rows[@]}" ""
fi

# ---- benchmarks --------------------------------------------------------------------------------
# run_bench LABEL CAP MIN LINES -- COMMAND...: runs COMMAND under min(CAP, time left) seconds
# when at least MIN are left, and appends its section (the last LINES lines of its output).
run_bench() {
  local label=$1 cap=$2 need=$3 lines=$4
  shift 5
  local rem t off start rc secs seg=$WORK/segment.log
  rem=$(remaining)
  if [ "$rem" -lt "$need" ]; then
    skipped+=("$label (only ${rem}s of the ${DEADLINE}s deadline left)")
    md "### $label: SKIPPED, only ${rem}s of the ${DEADLINE}s deadline left (needs ${need}s)" ""
    say "$label: skipped (deadline)"
    return
  fi
  t=$(min "$cap" "$rem")
  say "$label (timeout ${t}s, $(elapsed)s into the check) ..."
  off=$(stat -c %s "$LOG")
  echo "===== $label =====" >>"$LOG"
  start=$SECONDS
  (cd "$REPO" && timeout -k 10 "$t" "$@") >>"$LOG" 2>&1
  rc=$?
  secs=$((SECONDS - start))
  tail -c +"$((off + 1))" "$LOG" | tail -n +2 >"$seg"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    warnings+=("$label timed out after ${t}s (no result)")
    md "### $label: TIMED OUT after ${t}s (partial output below)" ""
  elif [ "$rc" -ne 0 ]; then
    failures+=("$label: exit $rc")
    md "### $label: FAILED (exit $rc, ${secs}s)" ""
  else
    md "### $label (${secs}s)" ""
  fi
  md '```' "$(tail -n "$lines" "$seg")" '```' ""
  say "$label: exit $rc in ${secs}s"
}

md "## Benchmarks" ""
if [ "${SKIP_BENCH:-0}" = 1 ]; then
  md "Skipped (SKIP_BENCH=1)." ""
elif [ "$unpacked" != 1 ]; then
  md "Skipped: no binaries." ""
elif [ "$NO_DEVICE" = 1 ]; then
  skipped+=("the benchmarks (no CUDA device)")
  md "Skipped: no CUDA device." ""
else
  run_bench "delo bench kernels --reps $KERNEL_REPS" "$KERNELS_TIMEOUT" "$MIN_KERNELS_S" 200 -- \
    "$DELO" bench kernels --reps "$KERNEL_REPS"
  for b in $TRAIN_BATCHES; do
    rem=$(remaining)
    t=$(min "$TRAIN_TIMEOUT" "$rem")
    # torch.compile gets what the step leaves after ~90 s for the engine and eager PyTorch.
    cb=$(min "$COMPILE_BUDGET" $((t - 90)))
    if [ "$cb" -ge 30 ]; then compile=(--compile-budget "$cb"); else compile=(--no-compile); fi
    run_bench "delo bench train --preset base --batch $b --device cuda --torch --steps $TRAIN_STEPS --rounds $TRAIN_ROUNDS ${compile[*]}" \
      "$TRAIN_TIMEOUT" "$MIN_TRAIN_S" 60 -- \
      "$DELO" bench train --preset base --batch "$b" --device cuda --torch \
      --steps "$TRAIN_STEPS" --rounds "$TRAIN_ROUNDS" "${compile[@]}"
  done
fi

# ---- summary -----------------------------------------------------------------------------------
md "## Summary" ""
md "- tests: $total_pass passed, $total_fail failed, $total_ign ignored ($device_ignored of them for want of the CUDA device or the PTX)"
md "- took $(elapsed)s of the ${DEADLINE}s deadline"
for s in "${skipped[@]}"; do md "- skipped: $s"; done
for w in "${warnings[@]}"; do md "- warning: $w"; done
for f in "${failures[@]}"; do md "- **FAILURE: $f**"; done
if [ "${#failures[@]}" -eq 0 ]; then
  md "" "**OK**"
else
  md "" "**FAILED: ${#failures[@]} failures (above).**"
fi

echo
say "tests: $total_pass passed, $total_fail failed, $total_ign ignored; $(elapsed)s; report: $REPORT"
for s in "${skipped[@]}"; do say "skipped: $s"; done
for w in "${warnings[@]}"; do say "warning: $w"; done
for f in "${failures[@]}"; do say "FAILURE: $f"; done
if [ "${#failures[@]}" -eq 0 ]; then
  say OK
  exit 0
fi
say "FAILED (${#failures[@]} failures)"
exit 1
