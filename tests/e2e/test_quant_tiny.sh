#!/bin/sh
# Quantized conversions of the trained ds4-tiny model (../shared/models/
# ds4-tiny, hidden and expert width 256) against its f32 conversion, on the
# three prompts of its TRAINING.md, --numerics hf. Bounds are the measured
# errors with a margin (docs/NUMERICS.md, "Quantized models"):
#   mix    max rel L2   mean    max KL   also
#   q8_0   0.07         0.03    0.05     same top-1 at every position, the
#                                        first 16 greedy tokens identical
#   q4     0.25         0.10    0.15
#   mxfp4  0.45         0.15    0.40
#   q2     0.75         0.30    1.5
# and q2 with an importance matrix (llama.cpp .dat) converts, records it,
# changes the experts and stays a q2-quality model (max 1.0, mean 0.4, KL 3).
set -eu
BIN=${DS4_BIN:?}
HERE=$(dirname "$0")
SRC=${DS4_TINY_DIR:-$HERE/../../../shared/models/ds4-tiny}
if [ ! -f "$SRC/model.safetensors" ]; then
    echo "ds4-tiny not present at $SRC"
    exit 77
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
V=129280
P1=0,4823,440,1904,721,328,14,270,1257,4368,436,1918,344
P2=0,50653,7660,312,85166
P3=0,3465,55155,3913,2605

for ty in f32 q8_0 q4 q2 mxfp4; do
    "$BIN/ds4-convert" "$SRC" "$TMP/$ty.gguf" --type $ty 2>/dev/null
done
"$BIN/ds4" -m "$TMP/q2.gguf" --inspect | grep -q "layers 0-3: gate/up IQ2_XXS, down Q2_K"
"$BIN/ds4" -m "$TMP/q4.gguf" --inspect | grep -q "layers 0-3: gate/up Q4_K, down Q4_K"

check() { # mix max mean kl [extra]
    ty=$1; shift
    i=0
    for p in $P1 $P2 $P3; do
        i=$((i + 1))
        [ -f "$TMP/f32.$i" ] || "$BIN/ds4" -m "$TMP/f32.gguf" --tokens $p --numerics hf --dump-logits "$TMP/f32.$i"
        "$BIN/ds4" -m "$TMP/$ty.gguf" --tokens $p --numerics hf --dump-logits "$TMP/$ty.$i"
        echo -n "$ty prompt $i: "
        python3 "$HERE/compare_logits.py" "$TMP/$ty.$i" "$TMP/f32.$i" $V "$1" --mean "$2" --kl "$3" --finite ${4:-}
    done
}
check q8_0 0.07 0.03 0.05 --top1
check q4 0.25 0.10 0.15
check mxfp4 0.45 0.15 0.40
check q2 0.75 0.30 1.5

for p in $P1 $P2 $P3; do
    a=$("$BIN/ds4" -m "$TMP/f32.gguf" --tokens $p --numerics hf -n 16 --temp 0)
    b=$("$BIN/ds4" -m "$TMP/q8_0.gguf" --tokens $p --numerics hf -n 16 --temp 0)
    [ "$a" = "$b" ] || { echo "q8_0 greedy differs for $p:"; echo " f32  $a"; echo " q8_0 $b"; exit 1; }
done
echo "q8_0: the first 16 greedy tokens equal f32's for all three prompts"

# An importance matrix in llama.cpp's legacy format for the routed experts:
# odd columns 1.5 times as important as even ones (unit importance would
# equal the quantizers' default), one entry per expert tensor: the experts
# change and the result must stay a q2-quality model.
python3 - "$TMP/im.dat" <<'PY'
import struct, sys
f = open(sys.argv[1], "wb")
names = ["blk.%d.ffn_%s_exps.weight" % (l, k) for l in range(4) for k in ("gate", "up", "down")]
f.write(struct.pack("<i", len(names)))
for n in names:
    vals = [1.0 + 0.5 * (c % 2) for c in range(256)] * 16
    f.write(struct.pack("<i", len(n)) + n.encode() + struct.pack("<ii", 1, len(vals)))
    f.write(struct.pack("<%df" % len(vals), *vals))
f.write(struct.pack("<ii", 3, 4) + b"test")
PY
"$BIN/ds4-convert" "$SRC" "$TMP/q2i.gguf" --type q2 --imatrix "$TMP/im.dat" 2> "$TMP/log"
grep -q "importance matrix .*: 12 entries" "$TMP/log" || { cat "$TMP/log"; exit 1; }
grep -q "quantize.imatrix.file" "$TMP/q2i.gguf"
grep -q "quantize.imatrix.chunks_count" "$TMP/q2i.gguf"
if cmp -s "$TMP/q2.gguf" "$TMP/q2i.gguf"; then echo "the importance matrix changed nothing"; exit 1; fi
# q2 at this size is chaotic (one IQ2_XXS super-block per expert row): any
# other valid weighting moves single positions a lot, so only looser bounds.
check q2i 1.0 0.4 3
