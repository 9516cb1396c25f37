"""Fails unless every kernel of the PTX module was launched at least once under the emulated
CUDA driver: reads the counters each process wrote (DELO_EMU_STATS=DIR/%p.json) and the PTX
that build.rs embedded.

usage: python3 .ci/kernel_coverage.py STATS_DIR KERNELS_PTX
"""
import glob
import json
import re
import sys

stats_dir, ptx_path = sys.argv[1], sys.argv[2]
with open(ptx_path) as f:
    kernels = set(re.findall(r"\.entry\s+(\w+)", f.read()))
launched = {}
files = glob.glob(f"{stats_dir}/*.json")
for path in files:
    with open(path) as f:
        for name, n in json.load(f)["launches_by_kernel"].items():
            launched[name] = launched.get(name, 0) + n
missing = sorted(kernels - set(launched))
total = sum(launched.values())
print(f"kernel coverage: {len(kernels) - len(missing)} of {len(kernels)} kernels launched "
      f"({total} launches, cuBLAS calls included, in {len(files)} processes)")
if missing:
    sys.exit("never launched under the emulated driver: " + ", ".join(missing))
