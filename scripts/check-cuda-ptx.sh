#!/bin/sh
# Checks the PTX nvcc makes of every CUDA source: a kernel that copies to
# shared memory with cp.async must also commit those copies in groups
# (cp.async.commit_group), or its cp.async.wait_group calls do not wait for
# them. nvcc 13 once left a commit out of two of the tensor-core kernels
# (after an unbraced `if constexpr` statement), with nothing else to show
# for it than results that changed from run to run.
# Usage: scripts/check-cuda-ptx.sh [NVCC]   (run by `make cuda-test`)
set -eu
NVCC=${1:-${NVCC:-/usr/local/cuda/bin/nvcc}}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bad=0
for f in $(find src -name '*.cu' | sort); do
    "$NVCC" -Iinclude -Isrc -DDS4_WITH_CUDA -std=c++17 -O3 --fmad=false -arch=sm_90 -ptx -o "$tmp/k.ptx" "$f"
    out=$(awk '
        /^\.visible \.entry/ { if (name != "" && cp > 0 && cm == 0) print name; name = $3; cp = 0; cm = 0 }
        /cp\.async\.c[ag]\.shared/ { cp++ }
        /cp\.async\.commit_group/ { cm++ }
        END { if (name != "" && cp > 0 && cm == 0) print name }' "$tmp/k.ptx")
    if [ -n "$out" ]; then
        echo "$f: kernels with cp.async copies but no commit_group: $out"
        bad=1
    fi
done
[ $bad -eq 0 ] && echo "cp.async copies are committed in every kernel"
exit $bad
