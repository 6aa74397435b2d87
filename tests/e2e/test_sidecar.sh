#!/bin/sh
# Sidecar packages end to end: convert tiny-a, export a package, verify it
# (checksums and byte equality with the source), then show the logits are
# BIT-identical between the resident GGUF, --resident on the package, and
# slot banks from the minimum (experts per token) to all experts, with
# token-by-token and whole-prompt prefill, O_DIRECT and buffered reads,
# prefetch on and off; greedy generations equal too.
# Sidecar packages run on the CPU: every ds4 run here says --cpu, so the
# bit-for-bit comparisons with the plain GGUF hold in CUDA builds too.
set -eu
BIN=${DS4_BIN:?}
DATA=${DS4_TEST_DATA:?}/fixtures
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cmp_logits="python3 $(dirname "$0")/compare_logits.py"
fx=tiny-a
V=$(python3 -c "import json; print(json.load(open('$DATA/$fx/config.json'))['vocab_size'])")
K=$(python3 -c "import json; print(json.load(open('$DATA/$fx/config.json'))['num_experts_per_tok'])")
X=$(python3 -c "import json; print(json.load(open('$DATA/$fx/config.json'))['n_routed_experts'])")
python3 -c "import json; print(','.join(map(str, json.load(open('$DATA/$fx/reference.json'))['tokens'])))" > "$TMP/tokens.txt"
prompt=$(python3 -c "import json; print(','.join(map(str, json.load(open('$DATA/$fx/reference.json'))['tokens'][:160])))")

"$BIN/ds4-convert" "$DATA/$fx" "$TMP/m.gguf" --type f32 2>/dev/null
"$BIN/ds4-sidecar" export "$TMP/m.gguf" "$TMP/pkg" 2>"$TMP/export.log" || { cat "$TMP/export.log"; exit 1; }
ls "$TMP" | grep -q 'pkg.tmp' && { echo "FAIL: export left its temporary directory"; exit 1; }
"$BIN/ds4-sidecar" verify "$TMP/pkg" "$TMP/m.gguf" > "$TMP/verify.log" || { cat "$TMP/verify.log"; exit 1; }
tail -n 1 "$TMP/verify.log"
"$BIN/ds4-sidecar" info "$TMP/pkg" | head -n 6
# records start 4 KiB aligned so O_DIRECT can read them
python3 - "$TMP/pkg/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
assert all(e["expert_stride"] % 4096 == 0 and e["expert_major"] for e in m["entries"]), "stride not 4 KiB aligned"
assert len(m["files"]) == len({e["layer"] for e in m["entries"]}) + 1, "checksums missing"
PY
# exporting over an existing package is refused, and leaves it alone
if "$BIN/ds4-sidecar" export "$TMP/m.gguf" "$TMP/pkg" 2>"$TMP/err"; then echo "FAIL: export over an existing directory"; exit 1; fi
grep -q "already exists" "$TMP/err" || { echo "FAIL: unclear message: $(cat "$TMP/err")"; exit 1; }

run() { # run NAME ARGS... : dump logits to $TMP/NAME.f32
    name=$1; shift
    "$BIN/ds4" --cpu --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/$name.f32" "$@" 2>"$TMP/$name.log" ||
        { cat "$TMP/$name.log"; exit 1; }
}
same() { # same NAME: bit-identical to the resident GGUF
    cmp -s "$TMP/$1.f32" "$TMP/ref.f32" || { echo "FAIL: $1 differs from the resident GGUF"; $cmp_logits "$TMP/$1.f32" "$TMP/ref.f32" "$V" 0; exit 1; }
    $cmp_logits "$TMP/$1.f32" "$TMP/ref.f32" "$V" 0 > /dev/null
    echo "bit-identical: $1"
}

run ref -m "$TMP/m.gguf"
run resident -m "$TMP/pkg" --resident --moe-stats
grep -q "Flash-MoE sidecar loaded: .*resident=$X" "$TMP/resident.log" || { echo "FAIL: no resident startup line"; cat "$TMP/resident.log"; exit 1; }
same resident
run resident_c1 -m "$TMP/pkg" --resident --prefill-chunk 1
same resident_c1

n=$K
while [ "$n" -le "$X" ]; do
    for chunk in 0 1; do
        io=buffered; [ $(( (n + chunk) % 2 )) -eq 0 ] && io=direct
        run "s${n}_c${chunk}" -m "$TMP/pkg" --moe-slot-bank "$n" --prefill-chunk "$chunk" --ssd-io $io --moe-stats
        grep -q "Flash-MoE sidecar loaded: .*slot-bank=$n" "$TMP/s${n}_c${chunk}.log" ||
            { echo "FAIL: no slot-bank startup line"; cat "$TMP/s${n}_c${chunk}.log"; exit 1; }
        same "s${n}_c${chunk}"
    done
    n=$((n + 1))
done
# the smallest bank really streamed: far more reads than records
reads=$(sed -n 's/.*Flash-MoE I\/O: reads=\([0-9]*\).*/\1/p' "$TMP/s${K}_c1.log")
[ "${reads:-0}" -gt $(( X * 5 * 4 )) ] || { echo "FAIL: only ${reads:-0} reads with $K slots"; cat "$TMP/s${K}_c1.log"; exit 1; }
echo "$K slots: $reads record reads for 300 tokens"
# the full bank reads every expert exactly once, then only hits
grep -E "Flash-MoE I/O: reads=$(( X * 5 )) " "$TMP/s${X}_c1.log" > /dev/null ||
    { echo "FAIL: a full bank should read each of the $((X * 5)) records once"; cat "$TMP/s${X}_c1.log"; exit 1; }
run noprefetch -m "$TMP/pkg" --moe-slot-bank "$K" --prefill-chunk 1 --no-moe-prefetch --moe-stats
grep -q "prefetch issued=0 " "$TMP/noprefetch.log" || { echo "FAIL: --no-moe-prefetch still prefetched"; exit 1; }
same noprefetch
# overlap within a layer, no guessed reads: only the hash layers are read ahead
run noguess -m "$TMP/pkg" --moe-slot-bank "$K" --prefill-chunk 1 --no-moe-guess --moe-stats --ssd-io direct
same noguess
run chunk7 -m "$TMP/pkg" --moe-slot-bank "$((K + 1))" --prefill-chunk 7
same chunk7
run auto -m "$TMP/pkg" --ssd-cache auto
grep -q -- "--ssd-cache auto: available=" "$TMP/auto.log" || { echo "FAIL: no auto sizing line"; exit 1; }
same auto
# where the page cache cannot keep the experts (DS4_MEM_AVAILABLE pretends
# 14 MiB) reads bypass it and the automatic bank takes 40%, not 20%
export DS4_MEM_AVAILABLE=14M
run auto_direct -m "$TMP/pkg"
run auto_buffered -m "$TMP/pkg" --ssd-io buffered
unset DS4_MEM_AVAILABLE
grep -q -- "(40%, DS4_SSD_CACHE_AUTO_PCT" "$TMP/auto_direct.log" && grep -q -- "(20%, DS4_SSD_CACHE_AUTO_PCT" "$TMP/auto_buffered.log" ||
    { echo "FAIL: automatic share"; grep -h -- "--ssd-cache auto" "$TMP/auto_direct.log" "$TMP/auto_buffered.log"; exit 1; }
same auto_direct
same auto_buffered
run budget -m "$TMP/pkg" --ssd-cache 2M --prefill-chunk 1
grep -q -- "--ssd-cache 2.0 MiB resolved Flash-MoE slot bank: slots=4 " "$TMP/budget.log" ||
    { echo "FAIL: 2 MiB should hold 4 slots of 5 x 96 KiB records"; cat "$TMP/budget.log"; exit 1; }
same budget

# a plain GGUF streams its own experts (family-major runs of the file: three
# reads an expert, each from the 4 KiB block its part starts in, so that
# O_DIRECT takes them where it takes the package's)
run g_s${K} -m "$TMP/m.gguf" --moe-slot-bank "$K" --prefill-chunk 1 --moe-stats --ssd-io direct
grep -q "routed experts streamed from the GGUF: $TMP/m.gguf" "$TMP/g_s${K}.log" ||
    { echo "FAIL: no GGUF streaming line"; cat "$TMP/g_s${K}.log"; exit 1; }
same g_s${K}
if grep -q "Flash-MoE I/O: .*(direct [1-9][0-9]*, buffered 0)" "$TMP/noguess.log"; then
    grep -q "Flash-MoE I/O: .*(direct [1-9][0-9]*, buffered 0)" "$TMP/g_s${K}.log" ||
        { echo "FAIL: the package's reads were O_DIRECT, the GGUF's not"; grep "I/O" "$TMP/g_s${K}.log"; exit 1; }
    echo "GGUF reads: O_DIRECT"
fi
greads=$(sed -n 's/.*Flash-MoE I\/O: reads=\([0-9]*\).*/\1/p' "$TMP/g_s${K}.log")
[ "${greads:-0}" -gt $(( X * 5 * 3 * 4 )) ] || { echo "FAIL: only ${greads:-0} reads from the GGUF with $K slots"; exit 1; }
run g_full -m "$TMP/m.gguf" --moe-slot-bank "$X" --moe-stats
grep -E "Flash-MoE I/O: reads=$(( X * 5 * 3 )) " "$TMP/g_full.log" > /dev/null ||
    { echo "FAIL: a full bank should read each of the $((X * 5)) experts once, in 3 reads"; cat "$TMP/g_full.log"; exit 1; }
same g_full
run g_auto -m "$TMP/m.gguf" --ssd-streaming
grep -q -- "--ssd-cache auto: available=" "$TMP/g_auto.log" || { echo "FAIL: --ssd-streaming did not size a bank"; exit 1; }
same g_auto
run g_res -m "$TMP/m.gguf" --resident --prefill-chunk 7
same g_res
# a GGUF larger than the memory available streams by itself
# (DS4_MEM_AVAILABLE pretends 6 MiB: the file is about 7.5 MB)
export DS4_MEM_AVAILABLE=6M
run g_small -m "$TMP/m.gguf"
unset DS4_MEM_AVAILABLE
grep -q "is larger than the host memory available" "$TMP/g_small.log" && grep -q "streamed from the GGUF" "$TMP/g_small.log" ||
    { echo "FAIL: no streaming by itself"; cat "$TMP/g_small.log"; exit 1; }
same g_small
run g_big -m "$TMP/m.gguf"
if grep -q "streamed from the GGUF" "$TMP/g_big.log"; then echo "FAIL: streamed with enough memory"; exit 1; fi
# ds4-sidecar info describes a GGUF's experts as they stream from it
"$BIN/ds4-sidecar" info "$TMP/m.gguf" > "$TMP/info.txt" || { echo "FAIL: info of a GGUF"; cat "$TMP/info.txt"; exit 1; }
grep -q "^layout     the GGUF's tensors: a run per family, three reads an expert" "$TMP/info.txt" &&
    [ "$(grep -c "^  layer .* m.gguf " "$TMP/info.txt")" = 5 ] || { echo "FAIL: info of a GGUF:"; cat "$TMP/info.txt"; exit 1; }
# verify checks packages only
if "$BIN/ds4-sidecar" verify "$TMP/m.gguf" > "$TMP/verify.txt" 2>&1; then echo "FAIL: verify took a GGUF"; exit 1; fi
# ds4-sidecar probe reads whole records of a package, and of a GGUF the
# gate part of an expert (its first run), each at random
for what in pkg m.gguf; do
    "$BIN/ds4-sidecar" probe "$TMP/$what" --seconds 0.2 --qd 1,4 > "$TMP/probe.txt" ||
        { echo "FAIL: probe $what"; cat "$TMP/probe.txt"; exit 1; }
    python3 - "$TMP/probe.txt" "$what" <<'PY'
import re, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("probe qd")]
assert len(lines) == 2, lines
for l in lines:
    m = re.search(r"(\d+) reads of +(\d+) B", l)
    reads, size = int(m.group(1)), int(m.group(2))
    want = (98304, 98304) if sys.argv[2] == "pkg" else (32768, 32768 + 4096)
    assert reads > 0 and want[0] <= size <= want[1], l
print("probe %s: %s" % (sys.argv[2], lines[-1].strip()))
PY
done

# official numerics too, and greedy generation
"$BIN/ds4" --cpu -m "$TMP/m.gguf" --tokens @"$TMP/tokens.txt" --dump-logits "$TMP/off_ref.f32"
"$BIN/ds4" --cpu -m "$TMP/pkg" --moe-slot-bank "$K" --tokens @"$TMP/tokens.txt" --dump-logits "$TMP/off_s.f32" 2>/dev/null
cmp "$TMP/off_ref.f32" "$TMP/off_s.f32" && echo "bit-identical: official numerics, $K slots"
want=$("$BIN/ds4" --cpu -m "$TMP/m.gguf" --tokens "$prompt" --numerics hf -n 48 --temp 0)
for args in "--resident" "--moe-slot-bank $K" "--moe-slot-bank $((K + 1)) --ssd-io direct"; do
    # shellcheck disable=SC2086
    got=$("$BIN/ds4" --cpu -m "$TMP/pkg" $args --tokens "$prompt" --numerics hf -n 48 --temp 0 2>/dev/null)
    [ "$got" = "$want" ] || { echo "FAIL: generation with $args differs"; echo " got  $got"; echo " want $want"; exit 1; }
    echo "generation equal: $args"
done
