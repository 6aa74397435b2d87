#!/bin/sh
# The main job: run ./ds4flash.gguf when present, otherwise convert the small
# embedded test model and greedily continue its reference prompt.
set -e
cd "$(dirname "$0")/.."
if [ -f ./ds4flash.gguf ]; then
    exec ./ds4 -m ./ds4flash.gguf --tokens 0,1000,2000 -n 32 --temp 0 -v
fi
mkdir -p build
model=build/tiny-a.gguf
[ -f "$model" ] || ./ds4-convert tests/data/fixtures/tiny-a "$model" --type f32
ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('tests/data/fixtures/tiny-a/reference.json'))['tokens'][:160])))")
echo "ds4: no ./ds4flash.gguf here; running the embedded test model (random weights, 1024-token vocab)"
echo "generated ids:"
./ds4 -m "$model" --tokens "$ids" -n 48 --temp 0 -v
