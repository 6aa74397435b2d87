#!/bin/sh
# ds4-bench end to end on the transformers fixture tiny-a (CPU): the CSV's
# header and frontiers (--step-incr, --step-mul as INTERFACES.md 7.1 defines
# them), each row's prefill interval and generated count; prompt files
# tokenized as the Rust `tokenizers` library does (cases.jsonl: the text as
# it is; a chat turn with an empty system prompt adds BOS, User, Assistant
# and </think>, a token of V4's vocabulary that v4_tokenizer.py adds to the
# fixture's V3 tokenizer); --roofline's lines, and its host slot bank line
# for streamed experts; and clear errors, naming the file, for bad input. With the
# trained ds4-tiny present, a run from a prompt file through its own
# embedded tokenizer.
set -eu
BIN=${DS4_BIN:?}
DATA=${DS4_TEST_DATA:?}/fixtures
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$BIN/ds4-convert" "$DATA/tiny-a" "$TMP/a.gguf" --type f32 2>/dev/null
bench() { "$BIN/ds4-bench" -m "$TMP/a.gguf" --cpu -t 1 "$@"; }

# rows: frontier, interval, generated count, positive rates and KV bytes
check_csv() { # FILE "frontiers" GEN
    python3 - "$@" <<'PY'
import sys
path, want, gen = sys.argv[1], [int(x) for x in sys.argv[2].split()], int(sys.argv[3])
lines = open(path).read().split("\n")
assert lines[0] == "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes", lines[0]
rows = [l.split(",") for l in lines[1:] if l]
got = [int(r[0]) for r in rows]
assert got == want, f"frontiers {got}, want {want}"
prev, kv = 0, 0
for r in rows:
    f, p, ptps, g, gtps, k = int(r[0]), int(r[1]), float(r[2]), int(r[3]), float(r[4]), int(r[5])
    assert p == f - prev, f"row {r}: prefill interval {p}, want {f - prev}"
    assert g == gen and ptps > 0 and gtps > 0 and k >= kv > -1 and k > 0, f"row {r}"
    prev, kv = f, k
print(f"{path}: frontiers {got} ok")
PY
}
python3 -c "print(', '.join(str(i * 37 % 1000 + 2) for i in range(40)))" > "$TMP/ids.txt"
bench --tokens-file "$TMP/ids.txt" --ctx-start 4 --ctx-max 10 --step-incr 3 --gen-tokens 5 > "$TMP/incr.csv" 2>"$TMP/err"
check_csv "$TMP/incr.csv" "4 7 10" 5
grep -q "ids.txt: 40 tokens (ids)" "$TMP/err" || { cat "$TMP/err"; exit 1; }
bench --tokens-file "$TMP/ids.txt" --ctx-start 4 --ctx-max 10 --step-mul 1.5 --gen-tokens 3 --csv "$TMP/mul.csv" 2>/dev/null
check_csv "$TMP/mul.csv" "4 6 9 10" 3
bench --ctx-start 8 --ctx-max 16 --gen-tokens 2 > "$TMP/synth.csv" 2>/dev/null # no prompt: synthetic ids
check_csv "$TMP/synth.csv" "8 16" 2

# prompt files: token counts against the reference ids
python3 "$(dirname "$0")/v4_tokenizer.py" "$DATA/tokenizer" "$TMP/tok"
python3 - "$DATA/tokenizer/cases.jsonl" "$TMP" <<'PY'
import json, sys
cases = sorted((json.loads(l) for l in open(sys.argv[1])), key=lambda c: -len(c["ids"]))[:4]
with open(sys.argv[2] + "/want.txt", "w") as w:
    for i, c in enumerate(cases):
        open(f"{sys.argv[2]}/case{i}.txt", "w", encoding="utf-8", newline="").write(c["text"])
        w.write(f"{i} {len(c['ids'])}\n")
PY
while read -r i n; do
    f=$TMP/case$i.txt
    bench --prompt-file "$f" --tokenizer "$TMP/tok/tokenizer.json" --ctx-start 1 --ctx-max 1 --gen-tokens 1 \
        >/dev/null 2>"$TMP/err" || true
    grep -q "case$i.txt: $n tokens (text, no template)" "$TMP/err" || { echo "case $i: want $n tokens"; cat "$TMP/err"; exit 1; }
    bench --chat-prompt-file "$f" -sys "" --tokenizer "$TMP/tok/tokenizer.json" --ctx-start 1 --ctx-max 1 \
        --gen-tokens 1 >/dev/null 2>"$TMP/err" || true
    grep -q "case$i.txt: $((n + 4)) tokens (one chat turn, no thinking)" "$TMP/err" ||
        { echo "case $i as a chat turn: want $((n + 4)) tokens"; cat "$TMP/err"; exit 1; }
done < "$TMP/want.txt"
echo "prompt files tokenized as the reference"

# bad input: a clear message naming the cause, status 1 (input) or 2 (usage)
expect() { # STATUS PATTERN ARGS...
    st=$1 pat=$2
    shift 2
    set +e
    bench "$@" >/dev/null 2>"$TMP/err"
    got=$?
    set -e
    [ "$got" = "$st" ] && grep -q -- "$pat" "$TMP/err" || { echo "ds4-bench $*: status $got, want $st and '$pat':"; cat "$TMP/err"; exit 1; }
}
printf '1, 2, x3\n' > "$TMP/junk.txt"
printf '1, 2, 5000\n' > "$TMP/big.txt"
expect 1 "junk.txt: not a token id at 'x3" --tokens-file "$TMP/junk.txt" --ctx-start 1 --ctx-max 2
expect 1 "big.txt: token 2 is id 5000, outside the model's vocabulary of 1024" --tokens-file "$TMP/big.txt" --ctx-start 1 --ctx-max 2
expect 1 "ids.txt gives 40 tokens, fewer than --ctx-max 64" --tokens-file "$TMP/ids.txt" --ctx-start 8 --ctx-max 64
expect 1 "nowhere.txt: cannot open" --prompt-file "$TMP/nowhere.txt" --tokenizer "$TMP/tok/tokenizer.json" --ctx-start 1 --ctx-max 8
expect 1 "a.gguf has no tokenizer; give --tokenizer" --prompt-file "$TMP/case0.txt" --ctx-start 1 --ctx-max 8
expect 2 "at most one of" --prompt-file "$TMP/case0.txt" --tokens-file "$TMP/ids.txt"
expect 2 "expects 'auto' or a size" --gpu-expert-cache 12Q
expect 2 "backend .metal.: this engine has cuda and cpu" --backend metal
expect 2 "--csv needs a value" --csv
echo "bad input refused"

# --roofline: the machine's ceilings and the decode and prefill rates
# against them; with streamed experts, the decode's host bank line, whose
# hits, prefetched and misses are every expert the decode asked for (6
# tokens x 5 layers x 2 experts)
bench --roofline --prefill-chunk 8 --gen-tokens 6 > "$TMP/roof.txt" 2>/dev/null
grep -Eq "^decode +[0-9.]+ t/s; bandwidth ceiling [0-9.]+ t/s; ratio [0-9.]+%" "$TMP/roof.txt" &&
    grep -q "^bytes per decoded token" "$TMP/roof.txt" && ! grep -q "^host slot bank" "$TMP/roof.txt" ||
    { echo "--roofline:"; cat "$TMP/roof.txt"; exit 1; }
bench --roofline --prefill-chunk 8 --gen-tokens 6 --ssd-cache 2M > "$TMP/roof.txt" 2>/dev/null
line=$(grep "^host slot bank (decode)" "$TMP/roof.txt" || true)
refs=$(echo "$line" | sed -n 's/.* \([0-9]*\) hits, \([0-9]*\) prefetched, \([0-9]*\) misses.*/\1 + \2 + \3/p')
[ -n "$refs" ] && [ $(( $refs )) -eq 60 ] || { echo "--roofline, streamed: $line"; cat "$TMP/roof.txt"; exit 1; }
echo "roofline: $(grep "^decode" "$TMP/roof.txt" | tr -s ' ')"
echo "roofline, streamed: $line"

SRC=${DS4_TINY_DIR:-$(dirname "$0")/../../../shared/models/ds4-tiny}
if [ -f "$SRC/model.safetensors" ]; then
    "$BIN/ds4-convert" "$SRC" "$TMP/tiny.gguf" --type bf16 2>/dev/null
    "$BIN/ds4-bench" -m "$TMP/tiny.gguf" --cpu --prompt-file "$SRC/TRAINING.md" --ctx-start 128 --ctx-max 256 \
        --step-incr 128 --gen-tokens 4 > "$TMP/tiny.csv" 2>/dev/null
    check_csv "$TMP/tiny.csv" "128 256" 4
else
    echo "ds4-tiny not present at $SRC: its run skipped"
fi
