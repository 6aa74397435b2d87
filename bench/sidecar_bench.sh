#!/bin/sh
# Sidecar streaming benchmark (see bench/SIDECAR.md).
#
#   bench/sidecar_bench.sh [WORKDIR]      (default /tmp/ds4-sidecar-bench)
#
# Makes a Flash-geometry q2 package with random weights (ds4-mkmodel: width
# 4096, 256 experts of 2048, IQ2_XXS gate/up + Q2_K down, 6.75 MiB expert
# records; LAYERS layers) with ds4-sidecar export, deletes the GGUF (it is as
# large as the package), then, in one run, REPS times over:
#   * the disk: ds4-sidecar probe, random whole-record O_DIRECT reads, a
#     steady queue of 1, 6 and 12 and bursts of 6 (what a decode step that
#     misses all 6 experts of a layer issues and waits for)
#   * decode of the package with every expert in RAM (--resident: no I/O)
#   * decode through slot banks of several sizes, O_DIRECT (nothing served
#     from the page cache), in three modes: no overlap (--no-moe-prefetch),
#     overlap of each layer's reads with its own compute (--no-moe-guess),
#     and that plus reads of the experts guessed for the next layer (default)
# Configs of one repetition run back to back (the three modes of a bank size
# next to each other, in reversed order every other repetition), so slow and
# fast periods of a shared machine hit every config; "vs off" is the median
# over repetitions of a mode's t/s over the same repetition's "off" t/s.
# Prints a markdown table (also saved to WORKDIR/results.md): medians over
# the repetitions, t/s with its range.
# Knobs (environment): SLOTS ("6 24 64 128"), REPS (5), NPRED (32
# generated tokens), PROMPT (4 tokens), THREADS (all cores), LAYERS (6),
# HASH (1 hash-routed layer), RESIDENT (1: include the --resident ceiling),
# PROBE_S (1.5 seconds per probe point).
set -eu
cd "$(dirname "$0")/.."
W=${1:-/tmp/ds4-sidecar-bench}
SLOTS=${SLOTS:-"6 24 64 128"}
REPS=${REPS:-5}
NPRED=${NPRED:-32}
PROMPT=${PROMPT:-4}
THREADS=${THREADS:-}
LAYERS=${LAYERS:-6}
HASH=${HASH:-1}
RESIDENT=${RESIDENT:-1}
PROBE_S=${PROBE_S:-1.5}
mkdir -p "$W"
make -s all >/dev/null

geom="flash-q2-l${LAYERS}-h${HASH}"
if [ ! -f "$W/$geom.ok" ]; then
    rm -rf "$W/model.gguf" "$W/pkg" "$W"/*.ok
    ./ds4-mkmodel "$W/model.gguf" --layers "$LAYERS" --hash-layers "$HASH" 2>&1 | tail -n 1 >&2
    ./ds4-sidecar export "$W/model.gguf" "$W/pkg" 2>&1 | tail -n 1 >&2
    rm -f "$W/model.gguf"
    ./ds4-sidecar verify "$W/pkg" > /dev/null
    touch "$W/$geom.ok"
fi
python3 -c "import random; r=random.Random(7); print(','.join(str(r.randrange(129280)) for _ in range($PROMPT)))" \
    > "$W/prompt.txt"

out="$W/results.md"
rm -f "$W"/*.runs "$W"/probe.log

# probe: one line per point, "name MB/s" appended to $W/probe_NAME.runs
probe() {
    ./ds4-sidecar probe "$W/pkg" --qd 1,6,12 --seconds "$PROBE_S" >> "$W/probe.log"
    ./ds4-sidecar probe "$W/pkg" --qd 6 --seconds "$PROBE_S" --burst >> "$W/probe.log"
    tail -n 4 "$W/probe.log" | awk -v w="$W" '{ print $12 >> (w "/probe_" $2 $3 ".runs") }'
}
# one NAME ARGS...: a decode run; appends
# "t/s MB/token MB/s(decode) MB/s(busy) hit% prefetched% miss% stall_s busy_s decode_s decode_tokens"
# to $W/NAME.runs
one() {
    name=$1; shift
    ./ds4 ${THREADS:+-t "$THREADS"} --tokens @"$W/prompt.txt" -n "$NPRED" --temp 0 -v --moe-stats "$@" 2>"$W/last.log" >/dev/null
    awk '
        /generated [0-9]+ tokens/ { for (i = 1; i <= NF; i++) if ($i == "t/s" && $(i-2) == "generation") tps = $(i-1) }
        /Flash-MoE decode:/ {
            for (i = 1; i <= NF; i++) {
                if ($i == "hit") hit = $(i+1); if ($i == "prefetched") pre = $(i+1); if ($i == "miss") miss = $(i+1)
                if ($i == "MB/token,") mbt = substr($(i-1), 2); if ($i == "MB/s),") mbs = $(i-1)
                if ($i == "stall") st = $(i+1); if ($i == "io-busy") busy = $(i+1)
                if ($i == "while") mbb = substr($(i-2), 2)
                if ($i == "tokens" && $(i+1) == "in") { nt = $(i-1); ds = $(i+2) }
            }
        }
        function num(x) { gsub(/[^0-9.]/, "", x); return x == "" ? "-" : x }
        END { printf "%s %s %s %s %s %s %s %s %s %s %s\n", num(tps), num(mbt), num(mbs), num(mbb), num(hit), num(pre),
              num(miss), num(st), num(busy), num(ds), num(nt) }' \
        "$W/last.log" >> "$W/$name.runs"
}
med() { # med FILE COLUMN: median of a column
    awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "-") }'
}
row() { # row NAME LABEL
    f="$W/$1.runs"
    t=$(awk '{ print $1 }' "$f" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f (%.2f-%.2f)", v[int((NR + 1) / 2)], v[1], v[NR] }')
    printf "| %s | %s |" "$2" "$t"
    off="$W/${1%_*}_off.runs"
    if [ -f "$off" ] && [ "$f" != "$off" ]; then
        paste -d ' ' "$f" "$off" | awk '{ print $1 / $(NF / 2 + 1) }' | sort -g |
            awk '{ v[NR] = $1 } END { printf " %.2f |", v[int((NR + 1) / 2)] }'
    else printf " - |"; fi
    for c in 2 3 4; do printf " %s |" "$(med "$f" $c)"; done
    b=$(med "$f" 4)
    if [ "$b" != "-" ]; then awk -v b="$b" -v p="$P6" 'BEGIN { printf " %.0f%% |", 100 * b / p }'; else printf " - |"; fi
    for c in 5 6 7; do printf " %s |" "$(med "$f" $c)"; done
    # stall and the rest of decode (compute, and whatever else the CPU did), ms per token
    if [ "$(med "$f" 8)" != "-" ]; then
        awk '{ print 1000 * $8 / $11 }' "$f" | sort -g | awk '{ v[NR] = $1 } END { printf " %.1f |", v[int((NR + 1) / 2)] }'
        awk '{ print 1000 * ($10 - $8) / $11 }' "$f" | sort -g | awk '{ v[NR] = $1 } END { printf " %.1f |", v[int((NR + 1) / 2)] }'
    else printf " - | - |"; fi
    printf "\n"
}

mode() { # mode SLOTS off|own|on
    case $2 in
    off) one "s$1_off" -m "$W/pkg" --moe-slot-bank "$1" --ssd-io direct --no-moe-prefetch ;;
    own) one "s$1_own" -m "$W/pkg" --moe-slot-bank "$1" --ssd-io direct --no-moe-guess ;;
    on) one "s$1_on" -m "$W/pkg" --moe-slot-bank "$1" --ssd-io direct ;;
    esac
}
for r in $(seq "$REPS"); do
    echo "rep $r/$REPS" >&2
    probe
    [ "$RESIDENT" = 1 ] && one resident -m "$W/pkg" --resident
    order="off own on"; [ $((r % 2)) -eq 0 ] && order="on own off"
    for n in $SLOTS; do
        for m in $order; do mode "$n" "$m"; done
    done
done
probe

P6=$(med "$W/probe_qd6.runs" 1)
{
    echo "## ds4 sidecar benchmark"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)," \
         "$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)"
    echo "- disk: $(df -h "$W" | awk 'NR==2 {print $1 " (" $2 ")"}'), file system $(stat -f -c %T "$W")"
    echo "- model: $(./ds4-sidecar info "$W/pkg" | sed -n 's/^model *//p');" \
         "$(./ds4-sidecar info "$W/pkg" | sed -n 's/^experts *//p')"
    echo "- runs: prompt $PROMPT random tokens, $NPRED greedy tokens, threads ${THREADS:-all}, $REPS runs per config" \
         "(median, min-max); experts read with O_DIRECT"
    echo
    echo "### Disk: random whole-record reads (ds4-sidecar probe, O_DIRECT), median of $((REPS + 1)) probes"
    echo
    echo "| load | MB/s (median) | all probes |"
    echo "|---|---|---|"
    for p in qd1 qd6 qd12 burst6; do
        echo "| $p | $(med "$W/probe_$p.runs" 1) | $(sort -g "$W/probe_$p.runs" | tr '\n' ' ')|"
    done
    echo
    echo "### Decode"
    echo
    echo "off: --no-moe-prefetch (each layer reads, then computes); own: --no-moe-guess (a layer's reads start at"
    echo "routing and each expert computes as soon as its record is in); on: that plus reads of the experts guessed"
    echo "for the next layer. busy = bytes / time with a read in flight; vs probe = busy / probe qd6 ($P6 MB/s)."
    echo
    echo "stall = decode time spent waiting for reads, other = the rest of the decode time (compute), both per token."
    echo
    echo "| config | decode t/s | vs off | MB read / token | read MB/s (decode) | read MB/s (busy) | busy vs probe | hit % | prefetched % | miss % | stall ms/tok | other ms/tok |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    [ "$RESIDENT" = 1 ] && row resident "package --resident (no I/O)"
    for n in $SLOTS; do
        row "s${n}_off" "slot bank $n, off"
        row "s${n}_own" "slot bank $n, own"
        row "s${n}_on" "slot bank $n, on"
    done
} > "$out"
cat "$out"
