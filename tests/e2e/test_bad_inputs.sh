#!/bin/sh
# Bad inputs to the tools exit non-zero with a message naming the file and
# the problem: converter config and safetensors errors, truncated GGUF,
# tensor data past EOF, wrong flags.
set -u
BIN=${DS4_BIN:?}
DATA=${DS4_TEST_DATA:?}/fixtures
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0

# expect_fail "description" "substring1" "substring2" -- command...
expect_fail() {
    what=$1; s1=$2; s2=$3; shift 4
    "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    msg=$(cat "$TMP/err")
    if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then
        echo "FAIL $what: exit $rc"; fails=$((fails+1)); return
    fi
    case "$msg" in *"$s1"*) ;; *) echo "FAIL $what: message lacks '$s1': $msg"; fails=$((fails+1)); return;; esac
    case "$msg" in *"$s2"*) ;; *) echo "FAIL $what: message lacks '$s2': $msg"; fails=$((fails+1)); return;; esac
    echo "ok   $what: $msg"
}

cp -r "$DATA/tiny-a" "$TMP/ck"
chmod -R u+w "$TMP/ck"
python3 - "$TMP/ck/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); del c["hidden_size"]; json.dump(c, open(sys.argv[1], "w"))
PY
expect_fail "missing config field" "config.json" "hidden_size" -- "$BIN/ds4-convert" "$TMP/ck" "$TMP/o.gguf"
[ -e "$TMP/o.gguf" ] && { echo "FAIL: a failed conversion left an output file"; fails=$((fails+1)); }

cp "$DATA/tiny-a/config.json" "$TMP/ck/config.json"
printf 'not json' > "$TMP/ck/config.json.bad"
head -c 5000 "$DATA/tiny-a/model.safetensors" > "$TMP/ck/model.safetensors"
expect_fail "truncated safetensors" "model.safetensors" "" -- "$BIN/ds4-convert" "$TMP/ck" "$TMP/o.gguf"
ls "$TMP" | grep -q 'o.gguf' && { echo "FAIL: temporary output left behind"; fails=$((fails+1)); }

"$BIN/ds4-convert" "$DATA/tiny-a" "$TMP/good.gguf" --type f32 2>/dev/null || { echo "FAIL: converting tiny-a"; exit 1; }
size=$(stat -c %s "$TMP/good.gguf")
for cut in 3 100 4000 $((size / 2)) $((size - 1)); do
    head -c $cut "$TMP/good.gguf" > "$TMP/cut.gguf"
    expect_fail "GGUF truncated at $cut" "cut.gguf" "" -- "$BIN/ds4" -m "$TMP/cut.gguf" --tokens 1,2
done
expect_fail "missing model" "nope.gguf" "" -- "$BIN/ds4" -m "$TMP/nope.gguf" --tokens 1
expect_fail "unknown flag" "--bogus" "" -- "$BIN/ds4" --bogus
expect_fail "bad token list" "--tokens" "" -- "$BIN/ds4" -m "$TMP/good.gguf" --tokens 1,x
expect_fail "token out of vocab" "99999" "vocabulary" -- "$BIN/ds4" -m "$TMP/good.gguf" --tokens 1,99999
expect_fail "bad numerics" "--numerics" "" -- "$BIN/ds4" -m "$TMP/good.gguf" --tokens 1 --numerics fp64
expect_fail "unknown backend" "--backend" "this engine has cuda and cpu" -- "$BIN/ds4" -m "$TMP/good.gguf" --tokens 1 --backend metal
expect_fail "no server in the CLI" "ds4-server" "not include" -- "$BIN/ds4" --server
expect_fail "bad convert type" "--type" "" -- "$BIN/ds4-convert" "$DATA/tiny-a" "$TMP/x.gguf" --type q9
[ $fails -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
