#!/usr/bin/env python3
"""Per-position relative L2 error between two float32 [rows x vocab] files.

usage: compare_logits.py A.f32 B.f32 VOCAB MAX_REL [--rows N] [--finite]
Prints the worst positions; exits 1 when any position exceeds MAX_REL
(or, with --finite, when A holds a non-finite value)."""
import math
import struct
import sys


def load(path, vocab, rows=None):
    data = open(path, "rb").read()
    n = len(data) // 4
    vals = struct.unpack("<%df" % n, data[: n * 4])
    if n % vocab:
        sys.exit("%s: %d floats is not a multiple of vocab %d" % (path, n, vocab))
    out = [vals[i * vocab:(i + 1) * vocab] for i in range(n // vocab)]
    return out[:rows] if rows else out


def main():
    args = sys.argv[1:]
    rows = None
    finite = "--finite" in args
    args = [a for a in args if a != "--finite"]
    if "--rows" in args:
        i = args.index("--rows")
        rows = int(args[i + 1])
        del args[i:i + 2]
    a_path, b_path, vocab, tol = args[0], args[1], int(args[2]), float(args[3])
    a, b = load(a_path, vocab, rows), load(b_path, vocab, rows)
    if len(a) != len(b):
        sys.exit("row count differs: %d vs %d" % (len(a), len(b)))
    if finite and any(not math.isfinite(x) for r in a for x in r):
        sys.exit("%s holds non-finite logits" % a_path)
    errs = []
    for t, (ra, rb) in enumerate(zip(a, b)):
        num = math.sqrt(sum((x - y) ** 2 for x, y in zip(ra, rb)))
        den = math.sqrt(sum(y * y for y in rb)) or 1.0
        errs.append((num / den, t))
    worst = sorted(errs, reverse=True)[:5]
    print("positions %d, max rel err %.3g, worst %s" % (len(errs), worst[0][0],
          ", ".join("t=%d:%.2g" % (t, e) for e, t in worst)))
    bad = [t for e, t in errs if not e <= tol]
    if bad:
        print("FAIL: %d positions above %g (first %s)" % (len(bad), tol, bad[:10]))
        sys.exit(1)


if __name__ == "__main__":
    main()
