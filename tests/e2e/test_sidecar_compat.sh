#!/bin/sh
# Compatibility: packages made by an independent packer written from the
# spec's format description (sidecar_pack.py, not ds4-sidecar) load and run
# with logits bit-identical to the resident GGUF: expert-major records
# with odd padding (offsets not 4 KiB aligned: reads asked to be O_DIRECT
# fall back to buffered ones), 16 KiB-aligned records without an
# expert_stride field, the legacy family-major layout, and the
# llama.cpp-fork layout (model-dense.gguf + sidecar/manifest.json).
# Sidecar packages run on the CPU: every ds4 run here says --cpu, so the
# bit-for-bit comparisons with the plain GGUF hold in CUDA builds too.
set -eu
BIN=${DS4_BIN:?}
DATA=${DS4_TEST_DATA:?}/fixtures
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pack="python3 $(dirname "$0")/sidecar_pack.py"
fx=tiny-a
V=$(python3 -c "import json; print(json.load(open('$DATA/$fx/config.json'))['vocab_size'])")
python3 -c "import json; print(','.join(map(str, json.load(open('$DATA/$fx/reference.json'))['tokens'])))" > "$TMP/tokens.txt"
"$BIN/ds4-convert" "$DATA/$fx" "$TMP/m.gguf" --type f32 2>/dev/null
"$BIN/ds4" --cpu -m "$TMP/m.gguf" --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/ref.f32"

check() { # check PKG ARGS...
    pkg=$1; shift
    "$BIN/ds4" --cpu -m "$pkg" --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/out.f32" "$@" 2>"$TMP/log" ||
        { cat "$TMP/log"; exit 1; }
    cmp -s "$TMP/out.f32" "$TMP/ref.f32" ||
        { echo "FAIL: $(basename "$pkg") $* differs"; python3 "$(dirname "$0")/compare_logits.py" "$TMP/out.f32" "$TMP/ref.f32" "$V" 0; exit 1; }
    echo "bit-identical: $(basename "$pkg") $*"
}

$pack "$TMP/m.gguf" "$TMP/unaligned" --pad 100
$pack "$TMP/m.gguf" "$TMP/aligned" --align 16384 --no-stride
$pack "$TMP/m.gguf" "$TMP/legacy" --layout family-major
$pack "$TMP/m.gguf" "$TMP/fork" --subdir --align 4096
for p in unaligned aligned legacy fork; do
    "$BIN/ds4-sidecar" verify "$TMP/$p" "$TMP/m.gguf" > "$TMP/verify.log" || { cat "$TMP/verify.log"; exit 1; }
    grep -q "lists no file checksums" "$TMP/verify.log"
    check "$TMP/$p" --resident
    check "$TMP/$p" --resident --ssd-io direct
    check "$TMP/$p" --moe-slot-bank 2 --prefill-chunk 1 --ssd-io direct
    check "$TMP/$p" --moe-slot-bank 5 --ssd-io buffered
done
"$BIN/ds4-sidecar" info "$TMP/legacy" | grep -q "family-major (legacy)"
# records that are not 4 KiB aligned were read buffered (but expert 0's,
# at offset 0), aligned ones all O_DIRECT
io_counts() {
    "$BIN/ds4" --cpu -m "$1" --moe-slot-bank 2 --ssd-io direct --tokens 1,2,3,4,5,6,7,8 --moe-stats 2>&1 |
        sed -n 's/.*(direct \([0-9]*\), buffered \([0-9]*\)).*/\1 \2/p'
}
set -- $(io_counts "$TMP/unaligned")
[ "$2" -gt "$1" ] || { echo "FAIL: unaligned records: direct $1, buffered $2"; exit 1; }
echo "unaligned records: $1 direct (offset 0), $2 buffered reads"
set -- $(io_counts "$TMP/aligned")
[ "$1" -gt 0 ] && [ "$2" -eq 0 ] || { echo "FAIL: aligned records: direct $1, buffered $2"; exit 1; }
echo "aligned records: $1 direct, $2 buffered reads"
