#!/usr/bin/env bash
# Runs, on a GPU machine that has neither cargo nor network, what scripts/gpu-build.sh built:
# every test binary in gpu-dist/ (the CUDA parity tests among them) and the `delo bench`
# benchmarks (`delo bench kernels`, the CUDA kernel microbenchmarks, first and in full; then
# `delo bench train --preset base --device cuda --torch` at batch 4 and 32), and
# writes one report, ${OUT:-gpu-dist}/gpu-report.md, with pass/fail counts.
#
# Run it from the repository root (it uses ./gpu-dist) or from inside gpu-dist (the build copies
# it there); DIST=/path/to/gpu-dist overrides both. It finds the CUDA driver library and cuBLAS
# 13 (which pip wheels and toolkits often keep outside the loader's default path) and exports
# LD_LIBRARY_PATH for what it runs. A failing test binary does not stop the run: every binary
# runs, and the exit status is non-zero when any failed.
#
# Environment: DIST, OUT, TEST_TIMEOUT (seconds per test binary, default 900), BENCH_TIMEOUT
# (seconds per benchmark, default 600), SKIP_BENCH=1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${DIST:-}" ]; then
  :
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
LOGS=$OUT/gpu-logs
mkdir -p "$LOGS"
TEST_TIMEOUT=${TEST_TIMEOUT:-900}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-600}
# The repository root, when DIST sits in one (tests may read fixtures relative to it).
REPO=$(cd "$DIST/.." && pwd)
[ -f "$REPO/Cargo.toml" ] || REPO=$DIST

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
    while IFS= read -r d; do sp+=("$d"); done < <(python3 -c \
      'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))' \
      2>/dev/null || true)
  fi
  sp+=(${VIRTUAL_ENV:+"$VIRTUAL_ENV"/lib/python3*/site-packages}
    ${CONDA_PREFIX:+"$CONDA_PREFIX"/lib/python3*/site-packages}
    /usr/local/lib/python3*/dist-packages /usr/local/lib/python3*/site-packages
    /usr/lib/python3/dist-packages "$HOME"/.local/lib/python3*/site-packages
    /opt/conda/lib/python3*/site-packages /opt/conda/envs/*/lib/python3*/site-packages
    "$HOME"/miniconda3/lib/python3*/site-packages "$HOME"/anaconda3/lib/python3*/site-packages)
  for d in "${sp[@]}"; do
    [ -d "$d/nvidia" ] || continue
    cands+=("$d"/nvidia/cu13/lib "$d"/nvidia/cublas/lib "$d"/nvidia/*/lib)
  done
  for d in "${cands[@]}"; do
    [ -d "$d" ] || continue
    compgen -G "$d/$pat" >/dev/null && echo "$d"
  done | awk '!seen[$0]++'
}

# Whether the dynamic loader already finds library $1 (soname) without help.
loader_has() {
  ldconfig -p 2>/dev/null | grep -q "[[:space:]]$1 " && return 0
  case ":${LD_LIBRARY_PATH:-}:" in
    ::) return 1 ;;
  esac
  local d
  IFS=: read -ra _dirs <<<"${LD_LIBRARY_PATH:-}"
  for d in "${_dirs[@]}"; do
    [ -n "$d" ] && [ -e "$d/$1" ] && return 0
  done
  return 1
}

add_path() {
  case ":${LD_LIBRARY_PATH:-}:" in
    *":$1:"*) ;;
    *) export LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
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
    d=$(lib_dirs "$soname*" | head -n 1 || true)
    if [ -n "$d" ]; then
      add_path "$d"
      libnotes+=("$what: $soname in $d (added to LD_LIBRARY_PATH)")
      return 0
    fi
  done
  if [ "$optional" = 1 ]; then
    libnotes+=("$what: not found (optional; looked for $*)")
    return 1
  fi
  # Last resort: a bounded search of the whole file system for the first name.
  # (Toolkit stubs/ libraries only link; loading one makes every CUDA call fail.)
  d=$(timeout 60 find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$1*" \
    ! -path '*/stubs/*' -print 2>/dev/null | head -n 1 || true)
  if [ -n "$d" ]; then
    add_path "$(dirname "$d")"
    libnotes+=("$what: $d (found by a file-system search, added to LD_LIBRARY_PATH)")
    return 0
  fi
  libnotes+=("$what: NOT FOUND (looked for $*)")
  return 1
}

find_lib "CUDA driver" libcuda.so.1 libcuda.so || true
find_lib "cuBLAS" libcublas.so.13 libcublas.so.12 libcublas.so || true
find_lib "cuBLASLt" libcublasLt.so.13 libcublasLt.so.12 libcublasLt.so || true
# NVTX ranges (nsys timelines) need libnvToolsExt, which CUDA 13 toolkits no longer ship; older
# toolkits, Nsight Systems and the nvidia-nvtx wheels do. Without it the ranges are no-ops.
find_lib "NVTX" --optional libnvToolsExt.so.1 libnvToolsExt.so || true

# ---- report header ---------------------------------------------------------------------------
smi=$( (timeout 60 nvidia-smi 2>&1) || echo "(nvidia-smi unavailable)")
{
  echo "# delo GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), host $(uname -n), $(uname -srm)"
  echo "- gpu-dist: $DIST"
  echo "- LD_LIBRARY_PATH: ${LD_LIBRARY_PATH:-(empty)}"
  for n in "${libnotes[@]}"; do echo "- $n"; done
  echo
  echo "## Build manifest"
  echo
  echo '```'
  cat "$DIST/MANIFEST.txt"
  echo '```'
  echo
  echo "## nvidia-smi"
  echo
  echo '```'
  echo "$smi"
  echo '```'
  echo
} >"$REPORT"
echo "$smi"
printf '%s\n' "${libnotes[@]}"

if [ -x "$DIST/delo" ]; then
  devs=$( (timeout 120 "$DIST/delo" devices 2>&1) || true)
  echo "$devs"
  {
    echo "## delo devices"
    echo
    echo '```'
    echo "$devs"
    echo '```'
    echo
  } >>"$REPORT"
fi

# ---- tests -----------------------------------------------------------------------------------
total_pass=0
total_fail=0
total_skip=0
failed_bins=()
rows=()
details=()
for bin in "$DIST"/tests/*; do
  [ -x "$bin" ] || continue
  name=$(basename "$bin")
  log=$LOGS/test-$name.log
  echo "=== $name"
  start=$(date +%s)
  set +e
  # One test at a time: the CUDA tests share the device, and the log reads in order.
  (cd "$REPO" && CARGO_MANIFEST_DIR=$REPO timeout "$TEST_TIMEOUT" "$bin" --test-threads=1 \
    --nocapture) >"$log" 2>&1
  rc=$?
  set -e
  secs=$(($(date +%s) - start))
  # libtest's summary: "test result: ok. 16 passed; 0 failed; 0 ignored; ..."
  pass=$({ grep -Eo '[0-9]+ passed' "$log" || true; } | awk '{s += $1} END {print s + 0}')
  fail=$({ grep -Eo '[0-9]+ failed' "$log" || true; } | awk '{s += $1} END {print s + 0}')
  skip=$(grep -c 'SKIP: no CUDA device' "$log" || true)
  status=ok
  if [ "$rc" -ne 0 ]; then
    status="FAILED (exit $rc)"
    if [ "$rc" -eq 124 ]; then status="FAILED (timed out after ${TEST_TIMEOUT}s)"; fi
    failed_bins+=("$name")
    if [ "$fail" -eq 0 ]; then fail=1; fi
  fi
  total_pass=$((total_pass + pass))
  total_fail=$((total_fail + fail))
  total_skip=$((total_skip + skip))
  rows+=("| $name | $pass | $fail | $skip | ${secs}s | $status |")
  echo "$name: $pass passed ($skip skipped: no CUDA device), $fail failed ($status)"
  if [ "$rc" -ne 0 ]; then
    details+=("### $name" "" '```' "$({ grep -E '^test .* FAILED$|panicked at' "$log" || true; } | head -n 40)" ""
      "$(tail -n 60 "$log")" '```' "")
  fi
done

{
  echo "## Tests"
  echo
  echo "**$total_pass passed, $total_fail failed** over ${#rows[@]} test binaries; of the" \
    "passed, $total_skip only printed \`SKIP: no CUDA device\`. Failing binaries:" \
    "${failed_bins[*]:-none}."
  echo
  echo "| binary | passed | failed | skipped (no device) | time | status |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  if [ "${#details[@]}" -gt 0 ]; then
    echo "### Failures"
    echo
    printf '%s\n' "${details[@]}"
  fi
  echo "Full logs: $LOGS"
  echo
} >>"$REPORT"

# ---- benchmarks ------------------------------------------------------------------------------
{
  echo "## Benchmarks"
  echo
} >>"$REPORT"
if [ "${SKIP_BENCH:-0}" = 1 ]; then
  echo "Skipped (SKIP_BENCH=1)." >>"$REPORT"
elif [ -x "$DIST/delo" ] && "$DIST/delo" bench --help >/dev/null 2>&1; then
  # The subcommands that `delo bench --help` lists (clap's "Commands:" section).
  subs=$("$DIST/delo" bench --help | awk '/^Commands:/ {on = 1; next} on && /^[^ ]/ {on = 0}
    on && NF {print $1}' | grep -v '^help$' || true)
  if [ -z "$subs" ]; then
    echo "\`delo bench\` lists no benchmark." >>"$REPORT"
  fi
  # The CUDA kernel microbenchmarks first, their whole output in the report: fused vs unfused
  # DeLo expert composition in GB/s and % of the device's peak bandwidth.
  if echo "$subs" | grep -qx kernels; then
    log=$LOGS/bench-kernels.log
    echo "=== delo bench kernels"
    set +e
    (cd "$REPO" && timeout "$BENCH_TIMEOUT" "$DIST/delo" bench kernels) >"$log" 2>&1
    rc=$?
    set -e
    cat "$log"
    {
      echo "### Kernel microbenchmarks: delo bench kernels (exit $rc)"
      echo
      if [ "$rc" -ne 0 ]; then
        echo "**delo bench kernels failed** (exit $rc$([ "$rc" -eq 124 ] && echo ", timed out after ${BENCH_TIMEOUT}s"))."
        echo
      fi
      echo '```'
      cat "$log"
      echo '```'
      echo
    } >>"$REPORT"
    if [ "$rc" -ne 0 ]; then failed_bins+=("delo bench kernels"); fi
  else
    echo "This \`delo\` has no \`bench kernels\` command." >>"$REPORT"
  fi
  # The DeLo training step on the GPU beside the PyTorch reference (eager and torch.compile),
  # at the paper's batch and at 32; `train` is left out of the generic loop below, whose
  # defaults are the CPU's.
  if echo "$subs" | grep -qx train; then
    for b in 4 32; do
      log=$LOGS/bench-train-b$b.log
      echo "=== delo bench train --preset base --batch $b --device cuda --torch"
      set +e
      (cd "$REPO" && timeout "$BENCH_TIMEOUT" "$DIST/delo" bench train --preset base --batch "$b" \
        --device cuda --torch) >"$log" 2>&1
      rc=$?
      set -e
      cat "$log"
      {
        echo "### Training step: delo bench train --preset base --batch $b --device cuda --torch (exit $rc)"
        echo
        if [ "$rc" -ne 0 ]; then
          echo "**delo bench train failed** (exit $rc$([ "$rc" -eq 124 ] && echo ", timed out after ${BENCH_TIMEOUT}s"))."
          echo
        fi
        echo '```'
        tail -n 40 "$log"
        echo '```'
        echo
      } >>"$REPORT"
      if [ "$rc" -ne 0 ]; then failed_bins+=("delo bench train --batch $b"); fi
    done
  fi
  for sub in $subs; do
    [ "$sub" = kernels ] && continue
    [ "$sub" = train ] && continue
    log=$LOGS/bench-$sub.log
    echo "=== delo bench $sub"
    set +e
    (cd "$REPO" && timeout "$BENCH_TIMEOUT" "$DIST/delo" bench "$sub") >"$log" 2>&1
    rc=$?
    set -e
    cat "$log"
    {
      echo "### delo bench $sub (exit $rc)"
      echo
      echo '```'
      tail -n 80 "$log"
      echo '```'
      echo
    } >>"$REPORT"
  done
else
  echo "This \`delo\` has no \`bench\` command yet." >>"$REPORT"
fi

echo
echo "gpu-check: $total_pass passed ($total_skip of them skipped: no CUDA device)," \
  "$total_fail failed; failing: ${failed_bins[*]:-none}; report: $REPORT"
[ "${#failed_bins[@]}" -eq 0 ]
