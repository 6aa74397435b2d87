#!/usr/bin/env python3
"""Compares tensor values of two GGUF files after dequantisation.

usage: gguf_values.py A.gguf B.gguf GLOB [GLOB...]

Every tensor whose name matches a glob must exist in both files and hold
exactly the same values (types may differ: F32, F16, BF16, Q8_0 and MXFP4
are decoded here, independently of the engine's C code). Prints the types
compared; exits 1 on the first difference. Pure Python: for small models."""
import fnmatch
import struct
import sys

# ggml type -> (block values, block bytes)
TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 8: ("Q8_0", 32, 34), 30: ("BF16", 1, 2), 39: ("MXFP4", 32, 17)}
E2M1_X2 = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]


def read_gguf(path):
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode("utf-8", "replace")
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(scalar[t])

    assert data[:4] == b"GGUF", path
    pos = 4
    _version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    kv = {}
    for _ in range(n_kv):
        k = string()
        kv[k] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        nd = take("I")
        ne = [take("Q") for _ in range(nd)]
        infos.append((name, ne, take("I"), take("Q")))
    align = kv.get("general.alignment", 32)
    base = (pos + align - 1) // align * align
    return data, base, {n: (ne, t, off) for n, ne, t, off in infos}


def half(h):
    return struct.unpack("<e", struct.pack("<H", h))[0]


def decode(data, base, ne, t, off):
    n = 1
    for d in ne:
        n *= d
    name, be, bb = TYPES[t]
    p = base + off
    if name == "F32":
        return list(struct.unpack_from("<%df" % n, data, p))
    if name == "F16":
        return [half(h) for h in struct.unpack_from("<%dH" % n, data, p)]
    if name == "BF16":
        return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in struct.unpack_from("<%dH" % n, data, p)]
    out = []
    for b in range(n // be):
        q = p + b * bb
        if name == "Q8_0":
            d = half(struct.unpack_from("<H", data, q)[0])
            out.extend(d * v for v in struct.unpack_from("<32b", data, q + 2))
        else:  # MXFP4: E8M0 exponent, qs[j] low nibble = value j, high = j + 16; value = x2 table * 2^(e-128)
            d = 2.0 ** (data[q] - 128)
            qs = data[q + 1:q + 17]
            out.extend(E2M1_X2[c & 15] * d for c in qs)
            out.extend(E2M1_X2[c >> 4] * d for c in qs)
    return out


def main():
    a_path, b_path, globs = sys.argv[1], sys.argv[2], sys.argv[3:]
    a, b = read_gguf(a_path), read_gguf(b_path)
    compared = 0
    seen = set()
    for name, (ne, t, off) in a[2].items():
        if not any(fnmatch.fnmatchcase(name, g) for g in globs):
            continue
        if name not in b[2]:
            sys.exit("%s: missing in %s" % (name, b_path))
        bne, bt, boff = b[2][name]
        if ne != bne:
            sys.exit("%s: shapes differ" % name)
        va, vb = decode(a[0], a[1], ne, t, off), decode(b[0], b[1], bne, bt, boff)
        for i, (x, y) in enumerate(zip(va, vb)):
            if x != y:
                sys.exit("%s (%s vs %s): value %d differs: %r vs %r" % (name, TYPES[t][0], TYPES[bt][0], i, x, y))
        compared += 1
        seen.add((TYPES[t][0], TYPES[bt][0]))
    if not compared:
        sys.exit("no tensor matches %s" % globs)
    print("%d tensors identical (%s)" % (compared, ", ".join("%s vs %s" % p for p in sorted(seen))))


if __name__ == "__main__":
    main()
