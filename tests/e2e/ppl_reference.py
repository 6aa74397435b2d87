#!/usr/bin/env python3
"""The perplexity line a fixture's reference logits give.

usage: ppl_reference.py FIXTURE_DIR [N]

Sums -log softmax(logits[t - 1])[tokens[t]] over t = 32 .. 32 + N - 1 (N:
all the tokens after the first 32 when absent), from the transformers
reference logits (logits.f32, [tokens x vocab]) of reference.json's tokens,
and prints "TOKENS SCORED NLL"."""
import json
import math
import struct
import sys


def main():
    fx = sys.argv[1]
    toks = json.load(open(fx + "/reference.json"))["tokens"]
    vocab = json.load(open(fx + "/config.json"))["vocab_size"]
    raw = open(fx + "/logits.f32", "rb").read()
    scored = len(toks) - 32
    if len(sys.argv) > 2:
        scored = min(int(sys.argv[2]), scored)
    nll = 0.0
    for t in range(32, 32 + scored):
        row = struct.unpack_from(f"<{vocab}f", raw, (t - 1) * vocab * 4)
        m = max(row)
        nll += m + math.log(sum(math.exp(x - m) for x in row)) - row[toks[t]]
    print(f"{len(toks)} {scored} {nll:.9f}")


def check():
    """ppl_reference.py --check LINE "TOKENS SCORED NLL" REL: ds4's line
    against the reference's, nll within REL relative."""
    got = dict(kv.split("=") for kv in sys.argv[2].split())
    n, s, nll = sys.argv[3].split()
    rel = float(sys.argv[4])
    if got["tokens"] != n or got["scored"] != s:
        sys.exit(f"counts {sys.argv[2]} against the reference's {n} {s}")
    g = float(got["nll"])
    if abs(g - float(nll)) > rel * abs(float(nll)):
        sys.exit(f"nll {g} against the reference's {nll} (more than {rel} relative)")
    if abs(float(got["avg_nll"]) - g / int(s)) > 1e-6 or abs(float(got["ppl"]) / math.exp(g / int(s)) - 1) > 1e-6:
        sys.exit(f"avg_nll or ppl inconsistent with nll: {sys.argv[2]}")
    print(f"ok: {sys.argv[2]}")


if __name__ == "__main__":
    check() if sys.argv[1] == "--check" else main()
