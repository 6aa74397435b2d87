#!/bin/sh
# The main job. Uses ./ds4flash.gguf when present; otherwise converts the
# small trained demo model (../shared/models/ds4-tiny, real tokenizer) and
# continues a prompt as text; without it, the random-weight test model
# embedded in the repository (tests/data/fixtures/tiny-a) continues its
# reference prompt as token ids.
set -e
cd "$(dirname "$0")/.."
if [ -f ./ds4flash.gguf ]; then
    exec ./ds4 -m ./ds4flash.gguf -p "Explain in two sentences what a mixture-of-experts model is." --nothink -n 200
fi
mkdir -p build
if [ -f ../shared/models/ds4-tiny/model.safetensors ]; then
    model=build/ds4-tiny.gguf
    [ -f "$model" ] || ./ds4-convert ../shared/models/ds4-tiny "$model" --type bf16
    echo "ds4: no ./ds4flash.gguf here; running the small ds4-tiny demo model (trained on vim docs, Manzoni and Python)"
    exec ./ds4 -m "$model" -p "When you start Vim, the first thing it does is" --raw --temp 0 -n 80
fi
model=build/tiny-a.gguf
[ -f "$model" ] || ./ds4-convert tests/data/fixtures/tiny-a "$model" --type f32
ids=$(python3 -c "import json; print(','.join(map(str, json.load(open('tests/data/fixtures/tiny-a/reference.json'))['tokens'][:160])))")
echo "ds4: no ./ds4flash.gguf here; running the embedded test model (random weights, 1024-token vocab, no text)"
echo "generated ids:"
./ds4 -m "$model" --tokens "$ids" -n 48 --temp 0 -v
