#!/bin/sh
# The trained ds4-tiny model (../shared/models/ds4-tiny, see its TRAINING.md)
# reproduces the three reference greedy generations of transformers, token
# for token (prompt = BOS + raw text ids, --numerics hf).
set -eu
BIN=${DS4_BIN:?}
SRC=${DS4_TINY_DIR:-$(dirname "$0")/../../../shared/models/ds4-tiny}
if [ ! -f "$SRC/model.safetensors" ]; then
    echo "ds4-tiny not present at $SRC"
    exit 77
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$BIN/ds4-convert" "$SRC" "$TMP/tiny.gguf" --type bf16 2>/dev/null
check() {
    got=$("$BIN/ds4" -m "$TMP/tiny.gguf" --tokens "$1" --numerics hf -n 40 --temp 0)
    [ "$got" = "$2" ] || { echo "prompt $1:"; echo " got  $got"; echo " want $2"; exit 1; }
    echo "ok: prompt $1"
}
check 0,4823,440,1904,721,328,14,270,1257,4368,436,1918,344 \
    14,270,2336,2562,294,201,1805,4245,396,515,2336,1341,295,270,4245,16,223,1162,344,3989,513,14134,260,201,35562,20288,1393,2019,295,260,9217,8667,305,1347,436,362,710,71187,16,223
check 0,50653,7660,312,85166 \
    269,9,4150,56263,716,20821,14,312,1639,14,716,612,80846,201,4269,75,17056,35298,36550,1298,2090,110128,14,312,847,15520,3307,30131,9861,295,333,806,201,85,614,280,2314,5193,3282,264
check 0,3465,55155,3913,2605 \
    5,44360,679,14,79690,3077,31,18,14,2329,36900,14,79690,3077,36900,14,79690,3077,36900,14,79690,3077,36900,14,79690,3077,36900,14,79690,3077,36900,14,79690,3077,36900,14,79690,3077,36900,14
