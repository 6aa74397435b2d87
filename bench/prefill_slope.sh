#!/bin/sh
# Prefill speed of the full model from two smaller ones: the time of one
# prefill chunk on synthetic Flash-geometry models of A and B layers
# (ds4-mkmodel, real shapes and types, random weights), the difference per
# layer, and that per-layer time times the full layer count plus the rest
# (embedding, head) for the full model. Used where the full model does not
# fit the card (the H100's 80 GB against 81 GB of q2 weights).
#
# Usage: bench/prefill_slope.sh [--cpu] [A B] (default 6 12; binaries in
# BIN, default build/cuda/bin; models in MODELS, default build)
# Environment: CHUNK (2048), ROUNDS (2, binaries alternating), FULL (43).
# Prints each run's CSV row, then per-layer ms and the projection from the
# median chunk time of each model.
set -eu
cd "$(dirname "$0")/.."
BACKEND=--cuda
if [ "${1:-}" = --cpu ]; then BACKEND=--cpu; shift; fi
A=${1:-6}
B=${2:-12}
BIN=${BIN:-build/cuda/bin}
MODELS=${MODELS:-build}
CHUNK=${CHUNK:-2048}
ROUNDS=${ROUNDS:-2}
FULL=${FULL:-43}
if [ "$A" -ge "$B" ]; then
    echo "prefill_slope: A ($A) must be below B ($B)" >&2
    exit 2
fi
for L in "$A" "$B"; do
    m="$MODELS/synth$L.gguf"
    [ -f "$m" ] || "$BIN/ds4-mkmodel" "$m" --layers "$L"
done
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
r=0
while [ "$r" -lt "$ROUNDS" ]; do
    for L in "$A" "$B"; do
        row=$("$BIN/ds4-bench" -m "$MODELS/synth$L.gguf" $BACKEND --ctx-start "$CHUNK" --ctx-max "$CHUNK" \
            --gen-tokens 1 --prefill-chunk "$CHUNK" | tail -n 1)
        echo "layers $L: $row"
        # CSV: frontier, prefilled tokens, prefill t/s, ...
        echo "$L $row" | awk -F'[ ,]' '{ printf "%s %.6f\n", $1, $3 / $4 * 1000 }' >> "$tmp"
    done
    r=$((r + 1))
done
awk -v a="$A" -v b="$B" -v full="$FULL" -v chunk="$CHUNK" '
    function median(v, n,    i, j, t) {
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    $1 == a { ta[++na] = $2 } $1 == b { tb[++nb] = $2 }
    END {
        ma = median(ta, na); mb = median(tb, nb)
        per = (mb - ma) / (b - a); rest = ma - a * per; tfull = full * per + rest
        printf "chunk of %d tokens: %d layers %.1f ms, %d layers %.1f ms (medians)\n", chunk, a, ma, b, mb
        printf "per layer %.2f ms, the rest %.2f ms; %d layers: %.0f ms, %.0f tokens/s\n", per, rest, full, tfull, chunk / tfull * 1000
    }' "$tmp"
