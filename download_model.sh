#!/bin/sh
# Downloads a published DeepSeek V4 Flash GGUF in the ds4 layout and links
# it as ./ds4flash.gguf (the default model of ds4).
#
#   ./download_model.sh q2     IQ2_XXS/Q2_K experts, ~81 GB  (fits 96-128 GB machines)
#   ./download_model.sh q4     Q4_K experts, ~153 GB
#   ./download_model.sh mtp    the MTP draft layer, ~3.5 GB (speculative decoding)
#
# Downloads resume where they stopped (curl -C -). Set HF_TOKEN for
# authenticated downloads and DS4_MODEL_DIR to choose where files go.
set -eu
REPO=https://huggingface.co/antirez/deepseek-v4-gguf/resolve/main
DIR=${DS4_MODEL_DIR:-.}

case "${1:-}" in
q2) FILE=DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2.gguf ;;
q4) FILE=DeepSeek-V4-Flash-Q4KExperts-F16HC-F16Compressor-F16Indexer-Q8Attn-Q8Shared-Q8Out-chat-v2.gguf ;;
mtp) FILE=DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf ;;
*)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

command -v curl >/dev/null || { echo "download_model.sh: curl is required (apt-get install curl)" >&2; exit 1; }
mkdir -p "$DIR"
echo "downloading $FILE into $DIR"
set -- -L --fail -C - --progress-bar -o "$DIR/$FILE"
[ -n "${HF_TOKEN:-}" ] && set -- "$@" -H "Authorization: Bearer $HF_TOKEN"
curl "$@" "$REPO/$FILE"
case "$FILE" in
*MTP*) echo "done: $DIR/$FILE (MTP speculative decoding is not implemented in ds4 yet)" ;;
*)
    ln -sf "$DIR/$FILE" ds4flash.gguf
    echo "done: ./ds4flash.gguf -> $DIR/$FILE"
    ;;
esac
