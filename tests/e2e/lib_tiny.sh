# Shared set-up for the end-to-end tests on the trained ds4-tiny model:
# sets TMP (removed at exit) and converts the model to $TMP/tiny.gguf with
# its tokenizer. Exits 77 (skip) when the model is not present.
BIN=${DS4_BIN:?}
SRC=${DS4_TINY_DIR:-$(dirname "$0")/../../../shared/models/ds4-tiny}
if [ ! -f "$SRC/model.safetensors" ]; then
    echo "ds4-tiny not present at $SRC"
    exit 77
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$BIN/ds4-convert" "$SRC" "$TMP/tiny.gguf" --type bf16 2>/dev/null
