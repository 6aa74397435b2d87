#!/usr/bin/env python3
"""Re-encodes a fixture checkpoint the way DeepSeek ships V4 (spec/MODEL.md
§8.5-8.6), and writes the same weights dequantised.

usage: make_official_ckpt.py FIXTURE_DIR OFFICIAL_DIR PLAIN_DIR

OFFICIAL_DIR gets the official layout: names without the "model." prefix
(embed.weight, head.weight, norm.weight, hc_head_fn, layers.N.attn.kv_norm),
every dense 2-D linear weight of attention, compressor, indexer and shared
expert as FP8 e4m3 with one E8M0 scale per 128x128 block (companion
"X.scale", F8_E8M0), every routed expert as FP4 e2m1 packed two per byte
(I8, low nibble = even element) with one E8M0 scale per 32 inputs of a row.
Embedding, head, router, norms, mHC and ape stay BF16, tid2eid I64.

PLAIN_DIR gets the same names with the FP8/FP4 tensors replaced by F32
tensors holding exactly the dequantised values (w = code value * 2^(e-127)),
so converting both must give bit-identical models. Pure Python (no numpy):
meant for the small fixtures."""
import json
import math
import os
import shutil
import struct
import sys


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return header, data


def write_st(path, tensors):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, off = {}, 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, raw in tensors:
            f.write(raw)


def bf16_to_floats(raw):
    n = len(raw) // 2
    return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in struct.unpack("<%dH" % n, raw)]


# e4m3fn: bias 7, no infinities, 0x7f / 0xff are NaN (never produced here).
def e4m3_value(code):
    e, m = (code >> 3) & 15, code & 7
    v = m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
    return -v if code & 0x80 else v


E4M3_POS = sorted((e4m3_value(c), c) for c in range(0x7F))  # 0 .. 448
E2M1_POS = [(0.0, 0), (0.5, 1), (1.0, 2), (1.5, 3), (2.0, 4), (3.0, 5), (4.0, 6), (6.0, 7)]


def nearest(table, x):
    """Round |x| to the nearest table entry, ties to the even code."""
    a = abs(x)
    lo, hi = 0, len(table) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if table[mid][0] < a:
            lo = mid + 1
        else:
            hi = mid
    best = table[lo]
    if lo > 0:
        prev = table[lo - 1]
        da, db = a - prev[0], best[0] - a
        if da < db or (da == db and prev[1] % 2 == 0):
            best = prev
    return best


def e8m0_for(amax, top):
    """Smallest power-of-two scale with amax / scale <= top."""
    if amax == 0:
        return 127
    e = math.ceil(math.log2(amax / top))
    while amax / 2.0 ** e > top:
        e += 1
    return e + 127


def to_fp8(w, rows, cols):
    br, bc = (rows + 127) // 128, (cols + 127) // 128
    scales = bytearray(br * bc)
    codes = bytearray(rows * cols)
    deq = [0.0] * (rows * cols)
    for bi in range(br):
        for bj in range(bc):
            r0, c0 = bi * 128, bj * 128
            idx = [r * cols + c for r in range(r0, min(rows, r0 + 128)) for c in range(c0, min(cols, c0 + 128))]
            s = e8m0_for(max(abs(w[i]) for i in idx), 448.0)
            scales[bi * bc + bj] = s
            d = 2.0 ** (s - 127)
            for i in idx:
                v, c = nearest(E4M3_POS, w[i] / d)
                codes[i] = c | (0x80 if w[i] < 0 else 0)
                deq[i] = (-v if w[i] < 0 else v) * d
    return bytes(codes), bytes(scales), [br, bc], deq


def to_fp4(w, rows, cols):
    scales = bytearray(rows * cols // 32)
    packed = bytearray(rows * cols // 2)
    deq = [0.0] * (rows * cols)
    for r in range(rows):
        for g in range(cols // 32):
            base = r * cols + g * 32
            s = e8m0_for(max(abs(w[base + k]) for k in range(32)), 6.0)
            scales[r * cols // 32 + g] = s
            d = 2.0 ** (s - 127)
            for k in range(32):
                x = w[base + k]
                v, c = nearest(E2M1_POS, x / d)
                if x < 0 and v != 0:
                    c |= 8
                    v = -v
                deq[base + k] = v * d
                i = base + k
                packed[i // 2] |= c << (4 * (i % 2))
    return bytes(packed), bytes(scales), deq


def official_name(name):
    n = name[6:] if name.startswith("model.") else name
    n = {"embed_tokens.weight": "embed.weight", "hc_head.hc_fn": "hc_head_fn",
         "hc_head.hc_base": "hc_head_base", "hc_head.hc_scale": "hc_head_scale"}.get(n, n)
    return n.replace(".attn.norm.weight", ".attn.kv_norm.weight")


def kind(name, shape):
    if ".ffn.experts." in name:
        return "fp4"
    if len(shape) == 2 and name.endswith(".weight") and (".attn." in name or ".shared_experts." in name):
        return "fp8"
    return "keep"


def f32_bytes(vals):
    return struct.pack("<%df" % len(vals), *vals)


def main():
    src, off_dir, plain_dir = sys.argv[1:4]
    header, data = read_st(os.path.join(src, "model.safetensors"))
    official, plain = [], []
    counts = {"fp8": 0, "fp4": 0, "keep": 0}
    for name in sorted(header):
        info = header[name]
        a, b = info["data_offsets"]
        raw, shape, dtype = data[a:b], info["shape"], info["dtype"]
        oname = official_name(name)
        k = kind(oname, shape)
        counts[k] += 1
        if k == "keep":
            official.append((oname, dtype, shape, raw))
            plain.append((oname, dtype, shape, raw))
            continue
        if dtype != "BF16":
            sys.exit("%s: expected BF16, got %s" % (name, dtype))
        rows, cols = shape
        w = bf16_to_floats(raw)
        if k == "fp8":
            codes, scales, sshape, deq = to_fp8(w, rows, cols)
            official.append((oname, "F8_E4M3", shape, codes))
        else:
            codes, scales, deq = to_fp4(w, rows, cols)
            sshape = [rows, cols // 32]
            official.append((oname, "I8", [rows, cols // 2], codes))
        official.append((oname[: -len(".weight")] + ".scale", "F8_E8M0", sshape, scales))
        plain.append((oname, "F32", shape, f32_bytes(deq)))
    for d, tensors in ((off_dir, official), (plain_dir, plain)):
        os.makedirs(d, exist_ok=True)
        write_st(os.path.join(d, "model.safetensors"), tensors)
        shutil.copy(os.path.join(src, "config.json"), os.path.join(d, "config.json"))
    print("re-encoded %d FP8 and %d FP4 tensors, kept %d" % (counts["fp8"], counts["fp4"], counts["keep"]))


if __name__ == "__main__":
    main()
