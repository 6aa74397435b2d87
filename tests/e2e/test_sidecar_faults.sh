#!/bin/sh
# Damaged sidecar packages and failing reads end in a clear error naming the
# file, never in a crash or in wrong numbers: truncated layer file, corrupt
# manifests, wrong checksum, missing dense GGUF, unreadable layer file,
# read failures injected mid-decode (permanent: error exit; transient and
# short reads: retried, output unchanged), bad flags, failed export.
set -u
BIN=${DS4_BIN:?}
DATA=${DS4_TEST_DATA:?}/fixtures
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL $*"; fails=$((fails+1)); }

# expect_fail "description" "substring1" "substring2" -- command...
expect_fail() {
    what=$1; s1=$2; s2=$3; shift 4
    "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    msg=$(grep -v '^ds4: Flash-MoE' "$TMP/err"; cat "$TMP/out")
    if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then fail "$what: exit $rc"; return; fi
    case "$msg" in *"$s1"*) ;; *) fail "$what: message lacks '$s1': $msg"; return;; esac
    case "$msg" in *"$s2"*) ;; *) fail "$what: message lacks '$s2': $msg"; return;; esac
    echo "ok   $what: $(echo "$msg" | grep -m1 -F -e "$s1")"
}

"$BIN/ds4-convert" "$DATA/tiny-a" "$TMP/m.gguf" --type f32 2>/dev/null || { echo "FAIL: convert"; exit 1; }
"$BIN/ds4-sidecar" export "$TMP/m.gguf" "$TMP/good" 2>/dev/null || { echo "FAIL: export"; exit 1; }
fresh() { rm -rf "$TMP/p"; cp -r "$TMP/good" "$TMP/p"; }
edit_manifest() { # edit_manifest PYTHON-STATEMENTS (m is the manifest)
    python3 - "$TMP/p/manifest.json" "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
exec(sys.argv[2])
json.dump(m, open(sys.argv[1], "w"))
PY
}
RUN="$BIN/ds4 --tokens 1,2,3 -m $TMP/p"

fresh; truncate -s 500000 "$TMP/p/layer_002.bin"
expect_fail "truncated layer file" "layer_002.bin" "truncated" -- $RUN --moe-slot-bank 2
expect_fail "truncated layer file (verify)" "layer_002.bin" "truncated" -- "$BIN/ds4-sidecar" verify "$TMP/p"

fresh; head -c 3000 "$TMP/good/manifest.json" > "$TMP/p/manifest.json"
expect_fail "manifest cut short" "manifest.json" "not valid JSON" -- $RUN
fresh; edit_manifest 'm["entries"][4]["bytes_per_expert"] += 4'
expect_fail "bytes_per_expert wrong" "manifest.json" "bytes_per_expert" -- $RUN --resident
fresh; edit_manifest 'm["entries"][2]["shape"] = [64, 129, 8]'
expect_fail "shape wrong" "entries[2]" "does not match the model" -- $RUN
fresh; edit_manifest 'm["entries"][5] = dict(m["entries"][4])'
expect_fail "duplicate entry" "manifest.json" "duplicate" -- $RUN
fresh; edit_manifest 'del m["entries"][7]'
expect_fail "missing entry" "manifest.json" "14 entries, expected 15" -- $RUN
fresh; edit_manifest 'm["entries"][7] = dict(m["entries"][7], layer=0)'
expect_fail "entry moved to another layer" "layer 0 ffn_up_exps" "duplicate" -- $RUN
fresh; edit_manifest 'm["entries"][0]["quant_type"] = "Q9_Z"'
expect_fail "unknown quant type" "manifest.json" "Q9_Z" -- $RUN
fresh; edit_manifest 'm["entries"][3]["quant_type"] = "F16"; m["entries"][3]["bytes_per_expert"] //= 2'
expect_fail "gate/up types differ" "layer 1" "same quant_type" -- $RUN
fresh; edit_manifest 'm["entries"][0]["expert_stride"] = 4096'
expect_fail "strides of a layer differ" "layer 0" "expert_stride differs" -- $RUN
fresh; edit_manifest 'for e in m["entries"][:3]: e["expert_stride"] = 65536'
expect_fail "stride smaller than a record" "layer 0" "smaller than a record" -- $RUN
fresh; edit_manifest 'm["entries"][1]["repacked_offset"] = 16384'
expect_fail "families overlap" "layer 0" "overlap" -- $RUN
fresh; edit_manifest 'm["entries"][6]["repacked_file"] = "../m.gguf"'
expect_fail "file outside the package" "manifest.json" "leaves the package" -- $RUN
fresh; edit_manifest 'm["model"]["expert_count"] = 16'
expect_fail "manifest for another model" "manifest.json" "expert_count 16" -- $RUN
fresh; edit_manifest 'm["entries"] = {}'
expect_fail "entries not an array" "manifest.json" "entries" -- $RUN

fresh; printf '\001' | dd of="$TMP/p/layer_001.bin" bs=1 seek=4000 conv=notrunc 2>/dev/null
expect_fail "flipped byte (checksum)" "layer_001.bin" "SHA-256" -- "$BIN/ds4-sidecar" verify "$TMP/p"
expect_fail "flipped byte (source compare)" "layer_001.bin" "differs" -- "$BIN/ds4-sidecar" verify "$TMP/p" "$TMP/m.gguf"
fresh; edit_manifest 'm["files"][0]["sha256"] = "0" * 64'
expect_fail "wrong checksum in manifest" "layer_000.bin" "SHA-256" -- "$BIN/ds4-sidecar" verify "$TMP/p"

fresh; rm "$TMP/p/dense/model-dense.gguf"
expect_fail "missing dense GGUF" "dense/model-dense.gguf" "missing" -- $RUN
expect_fail "missing dense GGUF (verify)" "dense/model-dense.gguf" "missing" -- "$BIN/ds4-sidecar" verify "$TMP/p"
fresh; rm "$TMP/p/manifest.json"
expect_fail "missing manifest" "manifest.json" "not a sidecar package" -- $RUN
fresh; rm "$TMP/p/layer_004.bin"
expect_fail "missing layer file" "layer_004.bin" "No such file" -- $RUN
fresh; rm "$TMP/p/layer_003.bin"; mkdir "$TMP/p/layer_003.bin"
expect_fail "layer file is a directory" "layer_003.bin" "not a regular file" -- $RUN
if [ "$(id -u)" -ne 0 ]; then
    fresh; chmod 000 "$TMP/p/layer_003.bin"
    expect_fail "unreadable layer file" "layer_003.bin" "Permission denied" -- $RUN --moe-slot-bank 2
fi
expect_fail "dense GGUF passed directly" "model-dense.gguf" "sidecar package" -- \
    "$BIN/ds4" --tokens 1 -m "$TMP/good/dense/model-dense.gguf"

# Injected read failures (expert_io.h test hooks).
fresh
prompt=5,17,300,42,9,77,128,3
ref=$("$BIN/ds4" -m "$TMP/m.gguf" --tokens $prompt -n 30 --temp 0)
prefill_reads=$("$BIN/ds4" -m "$TMP/p" --moe-slot-bank 2 --tokens $prompt -n 1 --temp 0 --moe-stats 2>&1 >/dev/null |
    sed -n 's/.*Flash-MoE I\/O: reads=\([0-9]*\).*/\1/p')
N=$((prefill_reads + 12))
DS4_FAULT_READ_FAIL=$N "$BIN/ds4" -m "$TMP/p" --moe-slot-bank 2 --tokens $prompt -n 30 --temp 0 --moe-stats \
    >"$TMP/out" 2>"$TMP/err"
rc=$?
got=$(cat "$TMP/out")
if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then fail "read failure mid-decode: exit $rc"
elif ! grep -q "layer_00[0-4].bin: read of .* failed after 4 attempts" "$TMP/err"; then fail "read failure: unclear message: $(cat "$TMP/err")"
elif [ -z "$got" ] || [ "$got" = "$ref" ]; then fail "read failure should stop decode part way (got '$got')"
else
    case "$ref" in "$got"*) echo "ok   read failure at read $N (after $prefill_reads prefill reads): exit $rc after $(echo "$got" | tr ',' '\n' | wc -l) correct tokens: $(grep -m1 'failed after' "$TMP/err")";;
    *) fail "tokens before the read failure differ: got $got, want a prefix of $ref";; esac
fi
DS4_FAULT_READ_FAIL=3 "$BIN/ds4" -m "$TMP/p" --resident --tokens $prompt >/dev/null 2>"$TMP/err"
[ $? -ne 0 ] && grep -q "failed after" "$TMP/err" && echo "ok   read failure while loading --resident: $(grep -m1 'failed after' "$TMP/err")" ||
    fail "read failure while loading --resident was not reported"
for hook in DS4_FAULT_READ_FAIL_ONCE DS4_FAULT_READ_SHORT; do
    for io in direct buffered; do
        got=$(env $hook=$N "$BIN/ds4" -m "$TMP/p" --moe-slot-bank 2 --ssd-io $io --tokens $prompt -n 30 --temp 0 --moe-stats 2>"$TMP/err")
        if [ "$got" != "$ref" ]; then fail "$hook ($io): output changed: $got"
        elif [ $hook = DS4_FAULT_READ_FAIL_ONCE ] && ! grep -q "retries=1 " "$TMP/err"; then fail "$hook ($io): no retry counted"
        else echo "ok   $hook=$N ($io): retried/continued, same 30 tokens"; fi
    done
done

# Flags that do not fit.
expect_fail "slot bank below experts per token" "--moe-slot-bank 1" "[2, 8]" -- $RUN --moe-slot-bank 1
expect_fail "slot bank above experts" "--moe-slot-bank 9" "[2, 8]" -- $RUN --moe-slot-bank 9
expect_fail "cache too small" "--ssd-cache" "at least 2" -- $RUN --ssd-cache 100K
expect_fail "bad cache size" "--ssd-cache" "8G" -- $RUN --ssd-cache lots
expect_fail "bad io mode" "--ssd-io" "direct" -- $RUN --ssd-io fast
expect_fail "resident with a bank" "--resident" "--moe-slot-bank 4" -- $RUN --resident --moe-slot-bank 4
expect_fail "streaming a GGUF without experts" "blk.0.ffn_gate_exps.weight: missing" "dense part of a sidecar package" -- \
    "$BIN/ds4" --tokens 1 -m "$TMP/good/dense/model-dense.gguf" --ssd-streaming
expect_fail "read failure streaming a GGUF" "m.gguf: read of" "failed after 4 attempts" -- \
    env DS4_FAULT_READ_FAIL=20 "$BIN/ds4" --cpu -m "$TMP/m.gguf" --moe-slot-bank 2 --tokens 1,2,3,4,5 -n 4 --temp 0
expect_fail "a GGUF streamed with a conflicting bank" "--resident" "--moe-slot-bank 4" -- \
    "$BIN/ds4" --tokens 1 -m "$TMP/m.gguf" --resident --moe-slot-bank 4

# A failed export leaves nothing that looks like a package.
expect_fail "export of a model without experts" "ffn_gate_exps" "" -- \
    "$BIN/ds4-sidecar" export "$TMP/good/dense/model-dense.gguf" "$TMP/out1"
[ -e "$TMP/out1" ] && fail "failed export left $TMP/out1"
(trap '' XFSZ; ulimit -f 200; "$BIN/ds4-sidecar" export "$TMP/m.gguf" "$TMP/out2") >/dev/null 2>"$TMP/err"
if [ -e "$TMP/out2" ] || ls "$TMP" | grep -q 'out2.tmp'; then fail "export failing mid-write left files: $(ls "$TMP")"
elif ! grep -q "removed the incomplete" "$TMP/err"; then fail "export failing mid-write: $(cat "$TMP/err")"
else echo "ok   export failing mid-write: $(grep -m1 'write error' "$TMP/err")"; fi

[ $fails -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
