#!/bin/sh
# Chunked prefill on a quantized Flash-width model (q2 mix: IQ2_XXS gate/up
# and Q2_K down experts, Q8_0 attention, shared expert and head): one
# prefill, chunks of 1 (the decode path), 7 and 64 give bit-identical
# logits. Chunks of 3 or more tokens go through the tile kernels, single
# tokens through the per-row kernels, so this pins the two together end to
# end, with one thread and with two.
set -eu
BIN=${DS4_BIN:?}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cmp="python3 $(dirname "$0")/compare_logits.py"
"$BIN/ds4-mkmodel" "$TMP/m.gguf" --layers 2 --experts 16 --vocab 4096 --seed 3 2>/dev/null
T=$(python3 -c "print(','.join(str((i * 2654435761) % 4096) for i in range(70)))")
"$BIN/ds4" --cpu -m "$TMP/m.gguf" --tokens $T --dump-logits "$TMP/full.f32" -t 2
for t in 1 2; do
    for c in 1 7 64; do
        "$BIN/ds4" --cpu -m "$TMP/m.gguf" --tokens $T --dump-logits "$TMP/c$c.f32" --prefill-chunk $c -t $t
        echo -n "threads $t chunk $c vs full: "; $cmp "$TMP/c$c.f32" "$TMP/full.f32" 4096 0 --finite
    done
done
