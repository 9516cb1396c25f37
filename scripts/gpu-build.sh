#!/usr/bin/env bash
# Builds everything a GPU machine without cargo or network needs into one folder, gpu-dist/
# (ignored by git): the release `delo` binary and every test binary, all with the kernels' PTX
# embedded, plus gpu-check.sh and a manifest. Copy the folder (or the whole repository with it)
# to the GPU machine and run scripts/gpu-check.sh there.
#
# Environment: NVCC (else $CUDA_HOME/bin/nvcc, PATH, the CI's cached PyPI nvcc), CUDA_ARCH
# (default sm_80, whose PTX the driver JIT-compiles for any newer GPU), DIST (default gpu-dist),
# KEEP_DEBUG=1 to keep the debug info (the copies are stripped of it by default so that the
# folder stays small to ship).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIST=${DIST:-$ROOT/gpu-dist}

if [ -z "${NVCC:-}" ]; then
  for c in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "$(command -v nvcc || true)" \
    "${DELO_NVCC_DIR:-$HOME/.cache/delo/nvcc-13.0.88}/nvidia/cu13/bin/nvcc" \
    "$HOME/.cache/delo/nvcc/nvidia/cu13/bin/nvcc"; do
    if [ -n "$c" ] && [ -x "$c" ]; then
      NVCC=$c
      break
    fi
  done
fi
if [ -z "${NVCC:-}" ]; then
  echo "gpu-build: no nvcc found; set NVCC=/path/to/nvcc (.ci/run shows the pinned PyPI install)" >&2
  exit 1
fi
export NVCC REQUIRE_NVCC=1
export CUDA_ARCH=${CUDA_ARCH:-sm_80}
echo "gpu-build: nvcc $NVCC ($("$NVCC" --version | tail -n 1)), CUDA_ARCH $CUDA_ARCH"

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

cargo build --release --bin delo
# The test binaries' paths, from cargo's JSON messages.
json=$(mktemp)
trap 'rm -f "$json"' EXIT
cargo test --release --no-run --message-format=json >"$json"

rm -rf "$DIST"
mkdir -p "$DIST/tests"
python3 - "$json" "$DIST" <<'PY'
import json, shutil, sys, os
src, dist = sys.argv[1], sys.argv[2]
seen = []
for line in open(src):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "build-script-executed" and "#delo@" in m.get("package_id", ""):
        ptx = os.path.join(m["out_dir"], "kernels.ptx")
        if os.path.exists(ptx):
            shutil.copy2(ptx, os.path.join(dist, "kernels.ptx"))
    if m.get("reason") != "compiler-artifact" or not m.get("profile", {}).get("test"):
        continue
    exe = m.get("executable")
    if not exe:
        continue
    kind = m["target"]["kind"][0]
    name = m["target"]["name"] if kind == "test" else f"{kind}-{m['target']['name']}"
    dst = os.path.join(dist, "tests", name)
    shutil.copy2(exe, dst)
    seen.append(name)
if not seen:
    sys.exit("gpu-build: cargo reported no test binary")
print("gpu-build: test binaries:", " ".join(sorted(seen)))
PY
cp "$TARGET_DIR/release/delo" "$DIST/delo"
cp scripts/gpu-check.sh "$DIST/gpu-check.sh"

if [ "${KEEP_DEBUG:-0}" != 1 ] && command -v strip >/dev/null; then
  strip --strip-debug "$DIST/delo" "$DIST"/tests/*
fi

# The PTX that was embedded (identical in every binary of this build), copied by the step above.
ptx=$DIST/kernels.ptx
[ -f "$ptx" ] || ptx=
{
  echo "# delo gpu-dist manifest"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n) ($(uname -m), $(ldd --version 2>/dev/null | head -n 1 | sed 's/.* //') glibc)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "rustc: $(rustc --version)"
  echo "nvcc: $("$NVCC" --version | tail -n 1)"
  echo "cuda_arch: $CUDA_ARCH"
  if [ -n "$ptx" ]; then
    echo "ptx: $(grep -m1 '^\.version' "$ptx") $(grep -m1 '^\.target' "$ptx"), $(grep -c '\.entry' "$ptx") kernels"
  fi
  echo "files:"
  (cd "$DIST" && find . -type f ! -name MANIFEST.txt | sort | while read -r f; do
    echo "  $f $(stat -c %s "$f") $(sha256sum "$f" | cut -c1-16)"
  done)
} >"$DIST/MANIFEST.txt"
cat "$DIST/MANIFEST.txt"
echo "gpu-build: $(du -sh "$DIST" | cut -f1) in $DIST"
