#!/bin/sh
# CPU benchmark of issue "Fast CPU inference": decode and prefill against the
# machine's ceilings (ds4-bench --roofline) at 1 and all threads, and the
# context-scaling CSV from 2K to 32K, on
#   - a Flash-geometry q2 model with 4 layers (full width, 256 experts) made
#     by ds4-mkmodel (random weights, real shapes and types), and
#   - the trained ds4-tiny model when ../shared/models/ds4-tiny exists.
# Usage: bench/cpu_bench.sh [OUTDIR]   (default bench/results-$(hostname))
# Needs ~10 GB of disk for the model; results are CSV + text files.
set -eu
cd "$(dirname "$0")/.."
OUT=${1:-bench/results-$(hostname)}
mkdir -p "$OUT"
MODEL=${FLASH_MODEL:-build/flash4-q2.gguf}
NPROC=$(nproc)
[ -f "$MODEL" ] || ./ds4-mkmodel "$MODEL" --layers 4 --tokenizer tests/data/fixtures/tokenizer/tokenizer.json
{
    echo "# $(date -u +%F) $(uname -m) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) nproc=$NPROC"
    for t in 1 "$NPROC"; do
        echo "## flash4 q2, $t thread(s), prefill chunk 512"
        ./ds4-bench -m "$MODEL" --roofline --prefill-chunk 512 --gen-tokens 64 -t "$t"
    done
} | tee "$OUT/roofline.txt"
./ds4-bench -m "$MODEL" --ctx-start 2048 --ctx-max 32768 --step-mul 2 --gen-tokens 16 --csv "$OUT/ctx_flash4.csv"
cat "$OUT/ctx_flash4.csv"
if [ -f ../shared/models/ds4-tiny/model.safetensors ]; then
    [ -f build/ds4-tiny.gguf ] || ./ds4-convert ../shared/models/ds4-tiny build/ds4-tiny.gguf --type bf16
    for t in 1 "$NPROC"; do
        echo "## ds4-tiny bf16, $t thread(s)"
        ./ds4-bench -m build/ds4-tiny.gguf --roofline --prefill-chunk 512 --gen-tokens 64 -t "$t"
    done | tee "$OUT/roofline_tiny.txt"
    ./ds4-bench -m build/ds4-tiny.gguf --ctx-start 2048 --ctx-max 32768 --step-mul 2 --gen-tokens 32 --csv "$OUT/ctx_tiny.csv"
    cat "$OUT/ctx_tiny.csv"
fi
