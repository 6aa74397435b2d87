#!/usr/bin/env python3
"""Where a decode step's time goes, from a trace of the diagnostic build.

    make cuda-trace
    DS4_TRACE_OUT=/tmp/t.bin build/cuda-trace/bin/ds4-bench -m M --cuda --roofline ...
    python3 bench/cuda-trace.py /tmp/t.bin [--src src/backends/cuda] [--all]

The diagnostic build records, for block 0 of every kernel, the global timer
when the block starts and when its programmatic wait returns (that is, when
the kernel before it in its stream has finished), with the source line of
its pdl_enter (and, for trace_mark() points inside a kernel, the time
the mark was passed, named kernel@line). Steps are cut at the embedding kernel; the steps with the
most common kernel sequence (the decode steps) are averaged. For each
kernel: its start and wait-return times from the step's embedding, and
"next-in": the wait-return of the next record minus its own, which on the
main chain is what the kernel adds to the step (its run and the hand-over
to the next kernel). Side-lane kernels interleave; read them with that in
mind. The sum at the end is per kernel name."""
import collections, os, re, struct, sys


def kernel_names(src):
    """(unit, line of pdl_enter) -> name of the __global__ function around it."""
    names = {}
    for f in sorted(os.listdir(src)):
        if not f.endswith('.cu'):
            continue
        text = open(os.path.join(src, f)).read()
        starts = []
        for g in re.finditer(r'__global__', text):
            v = re.compile(r'void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(').search(text, g.end())
            if v:
                starts.append((text.count('\n', 0, g.start()) + 1, v.group(1)))
        for i, line in enumerate(text.split('\n'), 1):
            mark = 'trace_mark()' in line
            if ('pdl_enter()' in line or mark) and 'define' not in line and starts:
                before = [n for (ln, n) in starts if ln <= i]
                if before:
                    names['%s:%d' % (f[:-3], i)] = before[-1] + ('@%d' % i if mark else '')
    return names


def read_trace(path, names):
    recs = []
    with open(path, 'rb') as fp:
        while True:
            head = fp.read(20)
            if len(head) < 20:
                break
            unit = head[:16].rstrip(b'\0').decode()
            count = struct.unpack('<I', head[16:])[0]
            for _ in range(count):
                t0, t1, line, grid = struct.unpack('<QQII', fp.read(24))
                key = '%s:%d' % (unit, line)
                recs.append((t1, t0, names.get(key, key), grid))
    recs.sort()
    return recs


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    src = 'src/backends/cuda'
    if '--src' in args:
        src = args[args.index('--src') + 1]
    recs = read_trace(args[0], kernel_names(src))
    cuts = [i for i, r in enumerate(recs) if r[2] == 'embed_kernel'] + [len(recs)]
    steps = [recs[cuts[j]:cuts[j + 1]] for j in range(len(cuts) - 1)]
    if len(steps) < 3:
        sys.exit('cuda-trace: fewer than 3 steps in %s' % args[0])
    sig = collections.Counter(tuple((r[2], r[3]) for r in s) for s in steps[:-1])
    best, _ = sig.most_common(1)[0]
    idx = [j for j in range(len(steps) - 1) if tuple((r[2], r[3]) for r in steps[j]) == best]
    n = len(best)
    mean = lambda v: sum(v) / len(v)
    us = lambda ns: ns / 1e3
    print('steps %d, decode-like %d, kernels per step %d' % (len(steps), len(idx), n))
    print('embedding to the last kernel\'s wait-return %.1f us; embedding to the next step\'s embedding %.1f us' %
          (mean([us(steps[j][-1][0] - steps[j][0][0]) for j in idx]),
           mean([us(steps[j + 1][0][0] - steps[j][0][0]) for j in idx])))
    per = collections.defaultdict(float)
    launches = collections.Counter()
    for i in range(n):
        t_wait = mean([us(steps[j][i][0] - steps[j][0][0]) for j in idx])
        t_start = mean([us(steps[j][i][1] - steps[j][0][0]) for j in idx])
        nxt = mean([us((steps[j][i + 1][0] if i + 1 < n else steps[j + 1][0][0]) - steps[j][i][0]) for j in idx])
        per[best[i][0]] += nxt
        launches[best[i][0]] += 1
        if '--all' in args or i < 60 or i >= n - 6:
            print('%3d %-28s grid %-6d start %8.1f  wait-return %8.1f  next-in %7.2f' %
                  (i, best[i][0], best[i][1], t_start, t_wait, nxt))
    print('per kernel, summed over a step (us):')
    for k, v in sorted(per.items(), key=lambda x: -x[1]):
        print('  %-30s %8.1f  (%d launches)' % (k, v, launches[k]))


if __name__ == '__main__':
    main()
