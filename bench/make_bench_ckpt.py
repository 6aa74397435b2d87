#!/usr/bin/env python3
"""Writes a random-weight DeepSeek V4 checkpoint (config.json +
model.safetensors, transformers naming as in tests/data/fixtures/tiny-a)
whose routed experts are large enough to make SSD streaming measurable,
for bench/sidecar_bench.sh. Attention stays tiny-a sized; only the MoE
(hidden width, expert width, expert count) grows.

usage: make_bench_ckpt.py OUTDIR [--hidden H] [--ff F] [--experts X]
                          [--used K] [--layers L] [--vocab V]

Values are bf16 draws of N(0, 0.02) taken from one shared random pool at
varying offsets (pure Python, no numpy: fast enough for gigabytes).
Router weights get their own fresh draws so routing is diverse."""
import json
import os
import random
import struct
import sys

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "fixtures", "tiny-a", "config.json")


def bf16_bytes(n, rng, scale):
    out = bytearray(2 * n)
    for i in range(n):
        f = struct.pack("<f", rng.gauss(0.0, scale))
        out[2 * i:2 * i + 2] = f[2:4]
    return bytes(out)


def main():
    args = sys.argv[1:]
    opt = {"--hidden": 1024, "--ff": 512, "--experts": 128, "--used": 6, "--layers": 8, "--vocab": 4096}
    out = None
    i = 0
    while i < len(args):
        if args[i] in opt:
            opt[args[i]] = int(args[i + 1])
            i += 2
        else:
            out = args[i]
            i += 1
    if not out:
        sys.exit(__doc__)
    H, FF, X, K, L, V = (opt[k] for k in ("--hidden", "--ff", "--experts", "--used", "--layers", "--vocab"))
    cfg = json.load(open(TEMPLATE))
    kinds = ["sliding_attention", "sliding_attention"] + [
        ("compressed_sparse_attention", "heavily_compressed_attention")[j % 2] for j in range(L - 2)]
    mlp = ["hash_moe"] * min(2, L) + ["moe"] * (L - 2)
    cfg.update({"hidden_size": H, "moe_intermediate_size": FF, "n_routed_experts": X, "num_experts_per_tok": K,
                "num_hidden_layers": L, "vocab_size": V, "layer_types": kinds[:L], "mlp_layer_types": mlp[:L]})
    D, NH, QL, OL, OG = cfg["head_dim"], cfg["num_attention_heads"], cfg["q_lora_rank"], cfg["o_lora_rank"], cfg["o_groups"]
    IH, ID, HC = cfg["index_n_heads"], cfg["index_head_dim"], cfg["hc_mult"]
    ratio = {"compressed_sparse_attention": cfg["compress_rates"]["compressed_sparse_attention"],
             "heavily_compressed_attention": cfg["compress_rates"]["heavily_compressed_attention"]}
    tensors = []  # (name, dtype, shape, kind)

    def t(name, shape, kind="w", dtype="BF16"):
        tensors.append((name, dtype, shape, kind))
    t("model.embed_tokens.weight", [V, H])
    t("head.weight", [V, H])
    t("model.norm.weight", [H], "one")
    t("model.hc_head.hc_base", [HC])
    t("model.hc_head.hc_fn", [HC, HC * H])
    t("model.hc_head.hc_scale", [1], "one")
    nmix = (2 + HC) * HC
    for l in range(L):
        p = "model.layers.%d." % l
        t(p + "attn.attn_sink", [NH])
        t(p + "attn.norm.weight", [D], "one")
        t(p + "attn.q_norm.weight", [QL], "one")
        t(p + "attn.wkv.weight", [D, H])
        t(p + "attn.wo_a.weight", [OG * OL, NH * D // OG])
        t(p + "attn.wo_b.weight", [H, OG * OL])
        t(p + "attn.wq_a.weight", [QL, H])
        t(p + "attn.wq_b.weight", [NH * D, QL])
        t(p + "attn_norm.weight", [H], "one")
        t(p + "ffn_norm.weight", [H], "one")
        for s in ("attn", "ffn"):
            t(p + "hc_%s_base" % s, [nmix])
            t(p + "hc_%s_fn" % s, [nmix, HC * H])
            t(p + "hc_%s_scale" % s, [3], "one")
        kind = kinds[l]
        if kind != "sliding_attention":
            r = ratio[kind]
            halves = 2 if r == 4 else 1
            c = p + "attn.compressor."
            t(c + "ape", [r, halves * D])
            t(c + "norm.weight", [D], "one")
            t(c + "wgate.weight", [halves * D, H])
            t(c + "wkv.weight", [halves * D, H])
            if r == 4:
                c = p + "attn.indexer."
                t(c + "compressor.ape", [r, 2 * ID])
                t(c + "compressor.norm.weight", [ID], "one")
                t(c + "compressor.wgate.weight", [2 * ID, H])
                t(c + "compressor.wkv.weight", [2 * ID, H])
                t(c + "weights_proj.weight", [IH, H])
                t(c + "wq_b.weight", [IH * ID, QL])
        t(p + "ffn.gate.weight", [X, H], "router")
        if mlp[l] == "hash_moe":
            t(p + "ffn.gate.tid2eid", [V, K], "tid2eid", "I64")
        else:
            t(p + "ffn.gate.bias", [X], "zero")
        for e in range(X):
            q = p + "ffn.experts.%d." % e
            t(q + "w1.weight", [FF, H])
            t(q + "w2.weight", [H, FF])
            t(q + "w3.weight", [FF, H])
        t(p + "ffn.shared_experts.w1.weight", [FF, H])
        t(p + "ffn.shared_experts.w2.weight", [H, FF])
        t(p + "ffn.shared_experts.w3.weight", [FF, H])

    header, off = {}, 0
    for name, dtype, shape, kind in tensors:
        n = 1
        for x in shape:
            n *= x
        nb = n * (8 if dtype == "I64" else 2)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
    hj = json.dumps(header).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    os.makedirs(out, exist_ok=True)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
    rng = random.Random(1234)
    pool = bf16_bytes(1 << 20, rng, 0.02)  # 1 Mi values
    one = struct.pack("<f", 1.0)[2:4]
    zero = b"\0\0"
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj)
        cursor = 0
        for name, dtype, shape, kind in tensors:
            n = 1
            for x in shape:
                n *= x
            if kind == "one":
                f.write(one * n)
            elif kind == "zero":
                f.write(zero * n)
            elif kind == "tid2eid":
                # each token's K experts are distinct, as in the real tables
                f.write(b"".join(struct.pack("<%dq" % K, *rng.sample(range(X), K)) for _ in range(n // K)))
            elif kind == "router":
                f.write(bf16_bytes(n, rng, 0.5))
            else:
                left = 2 * n
                while left:
                    start = (cursor * 2) % (len(pool) - 2)
                    k = min(left, len(pool) - start)
                    f.write(pool[start:start + k])
                    left -= k
                    cursor += 7919  # a prime stride: tensors do not repeat each other
    print("wrote %s: %d layers, hidden %d, %d experts x (3 x %d x %d) bf16 = %.1f MB of experts" %
          (out, L, H, X, H, FF, L * X * 3 * H * FF * 2 / 1e6))


if __name__ == "__main__":
    main()
