#!/bin/sh
# End-to-end against the transformers references (tests/data/fixtures):
# convert, dump logits with HF numerics, compare every position, greedy
# generation, chunked-prefill equivalence, bf16/f16 conversions, official
# numerics finite. Needs python3 for the comparisons.
set -eu
BIN=${DS4_BIN:?}
DATA=${DS4_TEST_DATA:?}/fixtures
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cmp="python3 $(dirname "$0")/compare_logits.py"
ids() { python3 -c "import json,sys; t=json.load(open(sys.argv[1]))[sys.argv[2]]; n=int(sys.argv[3]) if len(sys.argv)>3 else len(t); print(','.join(map(str,t[:n])))" "$@"; }

for fx in tiny-a-nosel tiny-a; do
    echo "== $fx"
    ref=$DATA/$fx/reference.json
    V=$(python3 -c "import json; print(json.load(open('$DATA/$fx/config.json'))['vocab_size'])")
    "$BIN/ds4-convert" "$DATA/$fx" "$TMP/$fx.f32.gguf" --type f32 2>/dev/null
    ids "$ref" tokens > "$TMP/tokens.txt"
    "$BIN/ds4" -m "$TMP/$fx.f32.gguf" --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/full.f32"
    $cmp "$TMP/full.f32" "$DATA/$fx/logits.f32" "$V" 1e-4

    # greedy generation from the 160-token prompt
    gen=$("$BIN/ds4" -m "$TMP/$fx.f32.gguf" --tokens "$(ids "$ref" tokens 160)" --numerics hf -n 48 --temp 0)
    want=$(ids "$ref" generated)
    [ "$gen" = "$want" ] || { echo "generation differs:"; echo " got  $gen"; echo " want $want"; exit 1; }
    echo "generation: 48 tokens exact"

    # chunked prefill == token by token == one pass, both numerics
    for num in hf official; do
        "$BIN/ds4" -m "$TMP/$fx.f32.gguf" --tokens @"$TMP/tokens.txt" --numerics $num --dump-logits "$TMP/c0.f32"
        [ $num = official ] && $cmp "$TMP/c0.f32" "$TMP/c0.f32" "$V" 0 --finite
        for c in 1 7 64; do
            "$BIN/ds4" -m "$TMP/$fx.f32.gguf" --tokens @"$TMP/tokens.txt" --numerics $num --prefill-chunk $c --dump-logits "$TMP/c$c.f32"
            echo -n "$num chunk $c vs full: "; $cmp "$TMP/c$c.f32" "$TMP/c0.f32" "$V" 1e-5
        done
    done
done

# reduced-precision conversions stay near the reference
fx=tiny-a-nosel
for ty in bf16 f16; do
    "$BIN/ds4-convert" "$DATA/$fx" "$TMP/$fx.$ty.gguf" --type $ty 2>/dev/null
    ids "$DATA/$fx/reference.json" tokens > "$TMP/tokens.txt"
    "$BIN/ds4" -m "$TMP/$fx.$ty.gguf" --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/$ty.f32"
    echo -n "$ty: "; $cmp "$TMP/$ty.f32" "$DATA/$fx/logits.f32" 1024 1e-2
done
