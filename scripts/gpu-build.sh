#!/usr/bin/env bash
# Builds, here, what a GPU machine without cargo or network runs: gpu-dist/ (ignored by git),
# small enough to travel with the working tree (at most MAX_MIB, default 40 MiB):
#
#   gpu-dist/delo-gpu.tar.xz   the binaries that touch CUDA, stripped of all symbols: delo
#                                (release) and tests/{cuda_parity,cuda_experts,cuda_model,cuda_step,cuda_cli,
#                                cuda_ptx} (the CUDA test binaries, release), laid out as the
#                                tests' common::delo_exe() expects (delo beside tests/)
#   gpu-dist/kernels.ptx       the PTX embedded in every one of them (checked below)
#   gpu-dist/MANIFEST.txt      what was built, with what, and each file's size and sha256
#   gpu-dist/gpu-check.sh      a copy of scripts/gpu-check.sh, which unpacks the archive into a
#                                temporary folder and runs the tests and the benchmarks
#
# On the GPU machine, from the repository root of the copied tree: gpu-dist/gpu-check.sh
#
# nvcc: $NVCC when set; else the pinned PyPI nvcc 13.0.88 in ${DELO_NVCC_DIR:-~/.cache/delo/
# nvcc-13.0.88} (installed there as .ci/run does, when missing); only then $CUDA_HOME/bin/nvcc or
# one on PATH. A newer nvcc emits a PTX ISA that CUDA 13.0 drivers refuse to load: after the
# build the embedded PTX's `.version` must be at most PTX_ISA_MAX (default 9.0, CUDA 13.0's
# ISA) and its `.target` must not be an arch-specific (`a`) one, or the build fails.
#
# Environment: NVCC, DELO_NVCC_DIR, CUDA_ARCH (default sm_80, whose PTX the driver JIT-compiles
# for any newer GPU), DIST (default gpu-dist), GPU_TESTS (the test targets to ship, default
# "cuda_parity cuda_experts cuda_model cuda_step cuda_cli cuda_ptx"), MAX_MIB (default 40), PTX_ISA_MAX (9.0).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIST=${DIST:-$ROOT/gpu-dist}
MAX_MIB=${MAX_MIB:-40}
PTX_ISA_MAX=${PTX_ISA_MAX:-9.0}
GPU_TESTS=${GPU_TESTS:-cuda_parity cuda_experts cuda_model cuda_step cuda_cli cuda_ptx}
die() {
  echo "gpu-build: $*" >&2
  exit 1
}

# ---- nvcc --------------------------------------------------------------------------------------
NVCC_DIR=${DELO_NVCC_DIR:-$HOME/.cache/delo/nvcc-13.0.88}
PINNED=$NVCC_DIR/nvidia/cu13/bin/nvcc
if [ -n "${NVCC:-}" ]; then
  [ -x "$NVCC" ] || die "NVCC=$NVCC is not an executable file"
  nvcc_from="\$NVCC"
else
  if [ ! -x "$PINNED" ]; then
    # Exactly as .ci/run installs it.
    echo "gpu-build: installing nvcc 13.0 into $NVCC_DIR"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$NVCC_DIR" \
      nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 ||
      echo "gpu-build: WARNING: could not install the pinned nvcc 13.0.88" >&2
  fi
  if [ -x "$PINNED" ]; then
    NVCC=$PINNED
    nvcc_from="the pinned PyPI nvcc 13.0.88"
  else
    for c in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "$(command -v nvcc || true)"; do
      if [ -n "$c" ] && [ -x "$c" ]; then
        NVCC=$c
        nvcc_from="a fallback (the pinned 13.0.88 is unavailable; the PTX ISA check decides)"
        break
      fi
    done
  fi
fi
[ -n "${NVCC:-}" ] || die "no nvcc found; set NVCC=/path/to/nvcc (.ci/run shows the pinned PyPI install)"
export NVCC REQUIRE_NVCC=1
export CUDA_ARCH=${CUDA_ARCH:-sm_80}
nvcc_version=$("$NVCC" --version | tail -n 1)
echo "gpu-build: nvcc $NVCC, $nvcc_from ($nvcc_version), CUDA_ARCH $CUDA_ARCH"

# ---- build -------------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/delo-gpu-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
test_args=()
for t in $GPU_TESTS; do test_args+=(--test "$t"); done
# JSON messages on stdout (artifacts, build-script outputs), diagnostics rendered on stderr.
cargo build --release --bin delo --message-format=json-render-diagnostics >"$work/bin.json"
cargo test --release --no-run "${test_args[@]}" --message-format=json-render-diagnostics \
  >"$work/tests.json"

# Picks the executables by target name (failing when one is missing) and the PTX that the
# delo build script wrote (one, identical for both builds).
python3 - "$work" "$GPU_TESTS" <<'PY'
import json, os, sys
work, wanted = sys.argv[1], sys.argv[2].split()
exes, ptxs = {}, set()
for fname, test in (("bin.json", False), ("tests.json", True)):
    for line in open(os.path.join(work, fname)):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        r = m.get("reason")
        if r == "build-script-executed" and "#delo@" in m.get("package_id", ""):
            p = os.path.join(m["out_dir"], "kernels.ptx")
            if os.path.exists(p):
                ptxs.add(open(p, "rb").read())
        if r != "compiler-artifact" or not m.get("executable"):
            continue
        t, prof = m["target"], m.get("profile", {})
        if not test and "bin" in t["kind"] and t["name"] == "delo" and not prof.get("test"):
            exes["delo"] = m["executable"]
        if test and "test" in t["kind"] and t["name"] in wanted:
            exes["tests/" + t["name"]] = m["executable"]
missing = [w for w in ["delo"] + ["tests/" + t for t in wanted] if w not in exes]
if missing:
    sys.exit("gpu-build: cargo reported no executable for: " + ", ".join(missing))
if len(ptxs) != 1:
    sys.exit(f"gpu-build: expected one kernels.ptx from the delo build script, found {len(ptxs)}"
             " (built without nvcc?)")
open(os.path.join(work, "kernels.ptx"), "wb").write(ptxs.pop())
with open(os.path.join(work, "exes.txt"), "w") as f:
    for k in sorted(exes):
        f.write(f"{k}\t{exes[k]}\n")
PY

# ---- the PTX: loadable by CUDA 13.0 drivers? -----------------------------------------------------
ptx=$work/kernels.ptx
ptx_version=$(sed -n 's/^[[:space:]]*\.version[[:space:]]\{1,\}\([0-9.]*\).*/\1/p' "$ptx" | head -n 1)
ptx_target=$(sed -n 's/^[[:space:]]*\.target[[:space:]]\{1,\}\([^ ,;]*\).*/\1/p' "$ptx" | head -n 1)
[ -n "$ptx_version" ] || die "the embedded PTX has no .version line"
[ -n "$ptx_target" ] || die "the embedded PTX has no .target line"
if ! python3 -c 'import sys
v = lambda s: tuple(int(x) for x in s.split("."))
sys.exit(0 if v(sys.argv[1]) <= v(sys.argv[2]) else 1)' "$ptx_version" "$PTX_ISA_MAX"; then
  die "the embedded PTX is ISA .version $ptx_version, above $PTX_ISA_MAX: CUDA 13.0 drivers JIT" \
    "PTX ISA <= 9.0 only and would refuse to load it. $NVCC ($nvcc_version) is too new: set" \
    "NVCC to the pinned nvcc 13.0.88 (see .ci/run) or unset it so that this script uses it"
fi
case $ptx_target in
  *a) die "the embedded PTX targets $ptx_target, an arch-specific ('a') target that loads on" \
    "one chip only; set CUDA_ARCH to e.g. sm_80 or sm_90" ;;
esac
echo "gpu-build: embedded PTX: .version $ptx_version (<= $PTX_ISA_MAX), .target $ptx_target"

# ---- stage, strip, check the embedded PTX, pack ------------------------------------------------
stage=$work/stage
mkdir -p "$stage/tests"
while IFS=$'\t' read -r rel exe; do
  strip --strip-all -o "$stage/$rel" "$exe"
  chmod 755 "$stage/$rel"
done <"$work/exes.txt"
# Every binary that embeds PTX must embed exactly this one (a stale binary from another nvcc
# would not).
python3 - "$ptx" "$stage" <<'PY'
import os, sys
ptx = open(sys.argv[1], "rb").read()
bad = []
for d, _, files in os.walk(sys.argv[2]):
    for f in files:
        rel = os.path.relpath(os.path.join(d, f), sys.argv[2])
        data = open(os.path.join(d, f), "rb").read()
        # delo must carry the kernels; a test binary that carries any PTX must carry this one
        # (tests/cuda_cli only runs delo, so the linker drops the PTX from it).
        if ptx not in data and (rel == "delo" or b"Generated by NVIDIA NVVM Compiler" in data):
            bad.append(rel)
if bad:
    sys.exit("gpu-build: these binaries do not embed kernels.ptx: " + ", ".join(sorted(bad)))
PY

rm -rf "$DIST"
mkdir -p "$DIST"
cp "$ptx" "$DIST/kernels.ptx"
cp scripts/gpu-check.sh "$DIST/gpu-check.sh"
chmod 755 "$DIST/gpu-check.sh"
if command -v xz >/dev/null; then
  archive=delo-gpu.tar.xz
  (cd "$stage" && tar -cf - delo tests) | xz -6 -T0 >"$DIST/$archive"
else
  archive=delo-gpu.tar.gz
  (cd "$stage" && tar -cf - delo tests) | gzip -9 >"$DIST/$archive"
fi

{
  echo "# delo gpu-dist manifest"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n) ($(uname -m), $(ldd --version 2>/dev/null | head -n 1 | sed 's/.* //') glibc)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "rustc: $(rustc --version)"
  echo "nvcc: $NVCC ($nvcc_version), $nvcc_from"
  echo "cuda_arch: $CUDA_ARCH"
  echo "ptx: .version $ptx_version .target $ptx_target, $(grep -c '\.entry' "$ptx") kernels (embedded in delo and in every test binary that launches kernels)"
  echo "archive: $archive $(stat -c %s "$DIST/$archive") $(sha256sum "$DIST/$archive" | cut -d' ' -f1)"
  echo "archived files (stripped):"
  (cd "$stage" && find . -type f | sort | while read -r f; do
    echo "  ${f#./} $(stat -c %s "$f") $(sha256sum "$f" | cut -c1-16)"
  done)
} >"$DIST/MANIFEST.txt"
cat "$DIST/MANIFEST.txt"

bytes=$(du -sb "$DIST" | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}')
echo "gpu-build: $DIST is $bytes bytes ($mib MiB; limit $MAX_MIB MiB)"
if [ "$bytes" -gt $((MAX_MIB * 1048576)) ]; then
  die "$DIST is $mib MiB, above the $MAX_MIB MiB that may travel with the working tree"
fi
