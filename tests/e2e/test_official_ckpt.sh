#!/bin/sh
# An official-format checkpoint (FP8 e4m3 dense weights with 128x128 E8M0
# block scales, FP4 e2m1 routed experts with per-32 E8M0 scales, official
# names and .scale companions), made from the tiny-a fixture by
# make_official_ckpt.py, converts to the same model as a plain checkpoint
# holding exactly the dequantised values: identical GGUF bytes and
# bit-identical logits. With --type mxfp4 the FP4 experts are copied
# losslessly (same values as the dequantised F32 experts).
set -eu
BIN=${DS4_BIN:?}
DATA=${DS4_TEST_DATA:?}/fixtures
HERE=$(dirname "$0")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
V=1024
python3 "$HERE/make_official_ckpt.py" "$DATA/tiny-a" "$TMP/official/ckpt" "$TMP/plain/ckpt"
# Same directory name, so general.name agrees and whole files can be compared.
"$BIN/ds4-convert" "$TMP/official/ckpt" "$TMP/official.gguf" --type f32 2>/dev/null
"$BIN/ds4-convert" "$TMP/plain/ckpt" "$TMP/plain.gguf" --type f32 2>/dev/null
cmp "$TMP/official.gguf" "$TMP/plain.gguf"
echo "official FP8/FP4 and plain dequantised checkpoints convert to identical files"

tokens=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['tokens'][:64])))" "$DATA/tiny-a/reference.json")
"$BIN/ds4" -m "$TMP/official.gguf" --tokens "$tokens" --numerics hf --dump-logits "$TMP/official.f32"
"$BIN/ds4" -m "$TMP/plain.gguf" --tokens "$tokens" --numerics hf --dump-logits "$TMP/plain.f32"
echo -n "logits official vs plain: "
python3 "$HERE/compare_logits.py" "$TMP/official.f32" "$TMP/plain.f32" $V 0 --finite

"$BIN/ds4-convert" "$TMP/official/ckpt" "$TMP/mxfp4.gguf" --type mxfp4 2> "$TMP/log"
grep -q "120 FP4 expert matrices copied losslessly into MXFP4" "$TMP/log" || { cat "$TMP/log"; exit 1; }
python3 "$HERE/gguf_values.py" "$TMP/mxfp4.gguf" "$TMP/plain.gguf" '*_exps.weight'
# The plain checkpoint quantized to the same mix holds the same expert values
# (re-quantized by the MXFP4 quantizer): the engine must not tell them apart.
"$BIN/ds4-convert" "$TMP/plain/ckpt" "$TMP/plain-mxfp4.gguf" --type mxfp4 2>/dev/null
"$BIN/ds4" -m "$TMP/mxfp4.gguf" --tokens "$tokens" --numerics hf --dump-logits "$TMP/mxfp4.f32"
"$BIN/ds4" -m "$TMP/plain-mxfp4.gguf" --tokens "$tokens" --numerics hf --dump-logits "$TMP/plain-mxfp4.f32"
echo -n "logits mxfp4 from FP4 vs mxfp4 from the dequantised values: "
python3 "$HERE/compare_logits.py" "$TMP/mxfp4.f32" "$TMP/plain-mxfp4.f32" $V 0 --finite
