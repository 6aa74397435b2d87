#!/usr/bin/env python3
"""Per-position relative L2 error between two float32 [rows x vocab] files.

usage: compare_logits.py A.f32 B.f32 VOCAB MAX_REL [--rows N] [--finite]
                         [--mean MAX] [--kl MAX] [--top1]
B is the reference. Prints the worst positions; exits 1 when any position
exceeds MAX_REL, or (with the options) when A holds a non-finite value, the
mean over positions exceeds --mean, a position's KL(softmax B || softmax A)
exceeds --kl, or the two disagree on the most likely token somewhere."""
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


def kl(ref, got):
    mr, mg = max(ref), max(got)
    lr = mr + math.log(sum(math.exp(x - mr) for x in ref))
    lg = mg + math.log(sum(math.exp(x - mg) for x in got))
    return sum(math.exp(x - lr) * ((x - lr) - (y - lg)) for x, y in zip(ref, got))


def option(args, name, conv):
    if name not in args:
        return None
    i = args.index(name)
    v = conv(args[i + 1])
    del args[i:i + 2]
    return v


def main():
    args = sys.argv[1:]
    finite = "--finite" in args
    top1 = "--top1" in args
    args = [a for a in args if a not in ("--finite", "--top1")]
    rows = option(args, "--rows", int)
    mean_max = option(args, "--mean", float)
    kl_max = option(args, "--kl", float)
    a_path, b_path, vocab, tol = args[0], args[1], int(args[2]), float(args[3])
    a, b = load(a_path, vocab, rows), load(b_path, vocab, rows)
    if len(a) != len(b):
        sys.exit("row count differs: %d vs %d" % (len(a), len(b)))
    if finite and any(not math.isfinite(x) for r in a for x in r):
        sys.exit("%s holds non-finite logits" % a_path)
    errs, kls, flips = [], [], []
    for t, (ra, rb) in enumerate(zip(a, b)):
        num = math.sqrt(sum((x - y) ** 2 for x, y in zip(ra, rb)))
        den = math.sqrt(sum(y * y for y in rb)) or 1.0
        errs.append((num / den, t))
        if kl_max is not None:
            kls.append(kl(rb, ra))
        if top1 and ra.index(max(ra)) != rb.index(max(rb)):
            flips.append(t)
    worst = sorted(errs, reverse=True)[:5]
    mean = sum(e for e, _ in errs) / len(errs)
    line = "positions %d, max rel err %.3g, mean %.3g, worst %s" % (
        len(errs), worst[0][0], mean, ", ".join("t=%d:%.2g" % (t, e) for e, t in worst))
    if kls:
        line += "; max KL %.3g" % max(kls)
    print(line)
    bad = [t for e, t in errs if not e <= tol]
    if bad:
        print("FAIL: %d positions above %g (first %s)" % (len(bad), tol, bad[:10]))
        sys.exit(1)
    if mean_max is not None and not mean <= mean_max:
        print("FAIL: mean relative error %.3g above %g" % (mean, mean_max))
        sys.exit(1)
    if kls and not max(kls) <= kl_max:
        print("FAIL: KL %.3g above %g at t=%d" % (max(kls), kl_max, kls.index(max(kls))))
        sys.exit(1)
    if flips:
        print("FAIL: the most likely token differs at positions %s" % flips[:10])
        sys.exit(1)


if __name__ == "__main__":
    main()
