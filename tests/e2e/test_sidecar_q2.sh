#!/bin/sh
# Sidecar packages of a quantized Flash-width model (q2 mix: IQ2_XXS gate/up,
# Q2_K down records of the real 6.75 MiB size): the streamed slot bank at
# its minimum (experts per token) with O_DIRECT, and --resident, give logits
# bit-identical to the plain GGUF, in one prefill and token by token.
# Sidecar packages run on the CPU: every ds4 run here says --cpu, so the
# bit-for-bit comparisons with the plain GGUF hold in CUDA builds too.
set -eu
BIN=${DS4_BIN:?}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cmp="python3 $(dirname "$0")/compare_logits.py"
"$BIN/ds4-mkmodel" "$TMP/m.gguf" --layers 4 --experts 16 --vocab 4096 2>/dev/null
"$BIN/ds4-sidecar" export "$TMP/m.gguf" "$TMP/pkg" 2>/dev/null
"$BIN/ds4-sidecar" verify "$TMP/pkg" "$TMP/m.gguf" >/dev/null
T=0,100,2000,3000,17,4000,5,999
"$BIN/ds4" --cpu -m "$TMP/m.gguf" --tokens $T --dump-logits "$TMP/g.f32" -t 2
"$BIN/ds4" --cpu -m "$TMP/pkg" --tokens $T --dump-logits "$TMP/s.f32" --moe-slot-bank 6 --ssd-io direct -t 2 2>/dev/null
"$BIN/ds4" --cpu -m "$TMP/pkg" --tokens $T --dump-logits "$TMP/s1.f32" --moe-slot-bank 6 --prefill-chunk 1 -t 2 2>/dev/null
"$BIN/ds4" --cpu -m "$TMP/pkg" --tokens $T --dump-logits "$TMP/r.f32" --resident -t 2 2>/dev/null
for f in s s1 r; do echo -n "$f: "; $cmp "$TMP/$f.f32" "$TMP/g.f32" 4096 0 --finite; done
