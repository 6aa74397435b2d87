#!/bin/sh
# ds4 --perplexity / --perplexity-file against a computation from the
# transformers fixture's reference logits (tiny-a, --numerics hf): the sum
# of -log softmax over the tokens after the first 32, in one prefill and in
# chunks of 7, all of them or the first N (-n N); too short an input and a
# misplaced flag refused. With the trained ds4-tiny present, a text file
# scores as the ids the tokenizer gives for it.
set -eu
BIN=${DS4_BIN:?}
DATA=${DS4_TEST_DATA:?}/fixtures
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fx=$DATA/tiny-a
"$BIN/ds4-convert" "$fx" "$TMP/a.gguf" --type f32 2>/dev/null
ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('$fx/reference.json'))['tokens'])))")

ref="python3 $(dirname "$0")/ppl_reference.py"
want() { $ref "$fx" $1; }
check() { $ref --check "$1" "$2" 1e-5; } # fp32 logits: close to the reference's
run() { "$BIN/ds4" -m "$TMP/a.gguf" --cpu --numerics hf --tokens "$ids" --perplexity "$@" 2>"$TMP/err"; }
check "$(run)" "$(want '')"
check "$(run --prefill-chunk 7)" "$(want '')"
check "$(run -n 10 --prefill-chunk 4)" "$(want 10)"

st=0
"$BIN/ds4" -m "$TMP/a.gguf" --cpu --tokens 1,2,3 --perplexity 2>"$TMP/err" >/dev/null || st=$?
[ $st = 1 ] && grep -q "3 tokens; at least 33 are needed" "$TMP/err" || { echo "short input: status $st"; cat "$TMP/err"; exit 1; }
st=0
"$BIN/ds4" -m "$TMP/a.gguf" --perplexity 2>"$TMP/err" >/dev/null || st=$?
[ $st = 2 ] && grep -q "scores the ids of --tokens" "$TMP/err" || { echo "--perplexity alone: status $st"; cat "$TMP/err"; exit 1; }
st=0
"$BIN/ds4" -m "$TMP/a.gguf" --perplexity-file "$TMP/none.txt" 2>"$TMP/err" >/dev/null || st=$?
[ $st = 1 ] && grep -q "none.txt: cannot open" "$TMP/err" || { echo "missing file: status $st"; cat "$TMP/err"; exit 1; }
echo "bad input refused"

SRC=${DS4_TINY_DIR:-$(dirname "$0")/../../../shared/models/ds4-tiny}
if [ -f "$SRC/model.safetensors" ]; then
    "$BIN/ds4-convert" "$SRC" "$TMP/tiny.gguf" --type bf16 2>/dev/null
    text=$(head -c 2000 "$SRC/TRAINING.md")
    printf '%s' "$text" > "$TMP/text.txt"
    a=$("$BIN/ds4" -m "$TMP/tiny.gguf" --cpu --perplexity-file "$TMP/text.txt" -n 100)
    tids=$("$BIN/ds4" --tokenize -m "$TMP/tiny.gguf" -p "$text")
    b=$("$BIN/ds4" -m "$TMP/tiny.gguf" --cpu --tokens "$tids" --perplexity -n 100)
    [ "$a" = "$b" ] || { echo "text file: $a"; echo "its ids:   $b"; exit 1; }
    echo "ok: a text file scores as its ids ($a)"
else
    echo "ds4-tiny not present at $SRC: its check skipped"
fi
