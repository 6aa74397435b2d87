#!/bin/sh
# ds4-mkmodel: a reduced model at the real Flash width (4096 wide, 64 heads
# x 512, CSA and HCA layers) runs to finite, non-degenerate logits; output is
# a function of the seed alone (not of the thread count); a full-geometry
# --sparse q2 file (81 GB apparent, holes only) loads and describes itself
# with the published sizes; a real tokenizer is embedded on request.
set -eu
BIN=${DS4_BIN:?}
DATA=${DS4_TEST_DATA:?}/fixtures
HERE=$(dirname "$0")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Reduced Flash geometry: 4 layers (sliding, sliding, CSA, HCA), 16 experts.
"$BIN/ds4-mkmodel" "$TMP/flash4.gguf" --layers 4 --experts 16 --vocab 4096 2>/dev/null
"$BIN/ds4" -m "$TMP/flash4.gguf" --inspect > "$TMP/inspect"
grep -q "4 layers, 4096 wide, 64 heads x 512 (rope 64), q/o lora 1024/1024, 8 output groups" "$TMP/inspect"
grep -q "2 sliding (window 128), 1 CSA (ratio 4, indexer top-512), 1 HCA (ratio 128)" "$TMP/inspect"
"$BIN/ds4" -m "$TMP/flash4.gguf" --tokens 0,17,300,4000,5,99,1234,7 --dump-logits "$TMP/flash4.f32"
python3 - "$TMP/flash4.f32" <<'PY'
import math, struct, sys
d = open(sys.argv[1], "rb").read()
v = struct.unpack("<%df" % (len(d) // 4), d)
assert len(v) == 8 * 4096, len(v)
for t in range(8):
    r = v[t * 4096:(t + 1) * 4096]
    assert all(math.isfinite(x) for x in r), "position %d: non-finite logits" % t
    m = sum(r) / len(r)
    s = math.sqrt(sum((x - m) ** 2 for x in r) / len(r))
    assert 0.1 < s < 100, "position %d: logit std %g" % (t, s)
print("reduced Flash geometry: 8 positions of finite logits")
PY

# Deterministic in the seed, whatever the thread count.
small="--layers 3 --embd 256 --vocab 512 --experts 8 --ff 256 --heads 4 --head-dim 64 --q-lora 256 --o-lora 64
       --o-groups 2 --idx-heads 4 --idx-head-dim 64 --window 8 --hca-ratio 8"
"$BIN/ds4-mkmodel" "$TMP/a.gguf" $small --seed 5 -t 1 2>/dev/null
"$BIN/ds4-mkmodel" "$TMP/b.gguf" $small --seed 5 -t 3 2>/dev/null
"$BIN/ds4-mkmodel" "$TMP/c.gguf" $small --seed 6 2>/dev/null
cmp "$TMP/a.gguf" "$TMP/b.gguf"
if cmp -s "$TMP/a.gguf" "$TMP/c.gguf"; then echo "different seeds gave the same model"; exit 1; fi
echo "seeded output is reproducible across thread counts"

# A real tokenizer: the fixture (DeepSeek V3's) plus V4's special tokens.
python3 "$HERE/v4_tokenizer.py" "$DATA/tokenizer" "$TMP/tok"
"$BIN/ds4-mkmodel" "$TMP/tok.gguf" $small --vocab 129280 --tokenizer "$TMP/tok/tokenizer.json" 2>/dev/null
"$BIN/ds4" -m "$TMP/tok.gguf" --inspect | grep -q "tokenizer      129280 tokens, 127741 merges (bos 0, eos 1)"
"$BIN/ds4" -m "$TMP/tok.gguf" --tokenize -p "Hello world" --tokenizer "$TMP/tok.gguf" > /dev/null
echo "tokenizer embedded"

# Full geometry, sparse: only where holes cost nothing.
truncate -s 1G "$TMP/probe"
if [ "$(du -k "$TMP/probe" | cut -f1)" -gt 1024 ]; then
    echo "skipping the sparse full-size file: $TMP has no sparse files"
    exit 0
fi
rm -f "$TMP/probe"
"$BIN/ds4-mkmodel" "$TMP/full.gguf" --sparse 2>/dev/null
[ "$(du -k "$TMP/full.gguf" | cut -f1)" -lt 65536 ] || { echo "the sparse file takes disk space"; exit 1; }
[ "$(stat -c %s "$TMP/full.gguf")" -gt 86000000000 ]
"$BIN/ds4" -m "$TMP/full.gguf" --inspect > "$TMP/inspect"
cat "$TMP/inspect"
for want in "43 layers, 4096 wide, 64 heads x 512 (rope 64), q/o lora 1024/1024, 8 output groups" \
    "256 routed (6 used, width 2048) + 1 shared; hash routing in the first 3 layers" \
    "2 sliding (window 128), 21 CSA (ratio 4, indexer top-512), 20 HCA (ratio 128); mHC x4" \
    "vocab 129280, context 1048576" \
    "1328, 86.7 GB (80.76 GiB): F32 492 (1.85 MB) F16 359 (2.19 GB) Q8_0 345 (6.60 GB) Q2_K 43 (30.3 GB) IQ2_XXS 86 (47.6 GB) I32 3 (9.31 MB)" \
    "layers 0-42: gate/up IQ2_XXS, down Q2_K"; do
    grep -qF "$want" "$TMP/inspect" || { echo "missing: $want"; exit 1; }
done
rm -f "$TMP/full.gguf"
"$BIN/ds4-mkmodel" "$TMP/q4.gguf" --sparse --type q4 2>/dev/null
"$BIN/ds4" -m "$TMP/q4.gguf" --inspect | grep -qF "(153.32 GiB)"
echo "sparse full-geometry q2 and q4 files load"
