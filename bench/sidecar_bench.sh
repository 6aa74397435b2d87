#!/bin/sh
# Sidecar streaming benchmark (see bench/SIDECAR.md).
#
#   bench/sidecar_bench.sh [WORKDIR]      (default /tmp/ds4-sidecar-bench)
#
# Makes a random-weight model whose routed experts are a few GB
# (bench/make_bench_ckpt.py -> ds4-convert bf16 -> ds4-sidecar export), then
# in one run measures
#   * the disk: ds4-sidecar probe, random whole-record O_DIRECT reads at
#     several queue depths (the bandwidth a miss-bound decode can hope for)
#   * decode tokens/s of the resident GGUF and of --resident (no I/O)
#   * decode tokens/s, MB read per token and read MB/s of the slot bank at
#     several sizes, O_DIRECT (nothing served from the page cache), with
#     prefetch on and off; runs of a pair alternate, each config REPS times
# and prints a markdown table (also saved to WORKDIR/results.md).
# Knobs (environment): SLOTS ("6 12 24 48 96 128"), REPS (3), NPRED (32
# generated tokens), PROMPT (16 tokens), THREADS (0 = all cores), and the
# model geometry HIDDEN FF EXPERTS USED LAYERS (1024 512 128 6 8).
set -eu
cd "$(dirname "$0")/.."
W=${1:-/tmp/ds4-sidecar-bench}
SLOTS=${SLOTS:-"6 12 24 48 96 128"}
REPS=${REPS:-3}
NPRED=${NPRED:-32}
PROMPT=${PROMPT:-16}
THREADS=${THREADS:-0}
HIDDEN=${HIDDEN:-1024} FF=${FF:-512} EXPERTS=${EXPERTS:-128} USED=${USED:-6} LAYERS=${LAYERS:-8}
mkdir -p "$W"
make -s all >/dev/null

geom="h${HIDDEN}-f${FF}-x${EXPERTS}-k${USED}-l${LAYERS}"
if [ ! -f "$W/$geom.ok" ]; then
    rm -rf "$W/ckpt" "$W/model.gguf" "$W/pkg"
    python3 bench/make_bench_ckpt.py "$W/ckpt" --hidden "$HIDDEN" --ff "$FF" --experts "$EXPERTS" --used "$USED" \
        --layers "$LAYERS" >&2
    ./ds4-convert "$W/ckpt" "$W/model.gguf" --type bf16 2>/dev/null
    rm -rf "$W/ckpt"
    ./ds4-sidecar export "$W/model.gguf" "$W/pkg" 2>&1 | tail -n 1 >&2
    ./ds4-sidecar verify "$W/pkg" > /dev/null
    touch "$W/$geom.ok"
fi
python3 -c "import random; r=random.Random(7); print(','.join(str(r.randrange(4096)) for _ in range($PROMPT)))" > "$W/prompt.txt"

out="$W/results.md"
{
    echo "## ds4 sidecar benchmark"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)," \
         "$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)"
    echo "- disk: $(df -h "$W" | awk 'NR==2 {print $1 " (" $2 ")"}'), file system $(stat -f -c %T "$W")"
    echo "- model: $LAYERS layers, hidden $HIDDEN, $EXPERTS experts x 3 x $HIDDEN x $FF bf16 ($USED per token);" \
         "$(./ds4-sidecar info "$W/pkg" | sed -n 's/^experts *//p')"
    echo "- runs: prompt $PROMPT random tokens, $NPRED greedy tokens, threads ${THREADS} (0 = all), $REPS runs per config" \
         "(median, min-max); experts read with O_DIRECT"
    echo
    echo "### Disk: random whole-record reads (ds4-sidecar probe, O_DIRECT)"
    echo
    echo '```'
    ./ds4-sidecar probe "$W/pkg" --qd "1,$USED,16,64" --seconds 2
    echo '```'
    echo
    echo "### Decode"
    echo
    echo "| config | decode t/s | MB read / token | read MB/s (decode) | hit % | prefetched % | miss % | stall s |"
    echo "|---|---|---|---|---|---|---|---|"
} > "$out.head"

# one NAME ARGS...: a run; appends "t/s mb_tok mbs hit pre miss stall" to $W/NAME.runs
one() {
    name=$1; shift
    ./ds4 -t "$THREADS" --tokens @"$W/prompt.txt" -n "$NPRED" --temp 0 -v --moe-stats "$@" 2>"$W/last.log" >/dev/null
    awk -v name="$name" '
        /generated [0-9]+ tokens/ { for (i = 1; i <= NF; i++) if ($i == "t/s" && $(i-2) == "tokens") tps = $(i-1) }
        /Flash-MoE decode:/ {
            for (i = 1; i <= NF; i++) {
                if ($i == "hit") hit = $(i+1); if ($i == "prefetched") pre = $(i+1); if ($i == "miss") miss = $(i+1)
                if ($i == "MB/token,") mbt = substr($(i-1), 2); if ($i == "MB/s),") mbs = $(i-1); if ($i == "stall") st = $(i+1)
            }
        }
        function num(x) { gsub(/[^0-9.]/, "", x); return x == "" ? "-" : x }
        END { printf "%s %s %s %s %s %s %s\n", num(tps), num(mbt), num(mbs), num(hit), num(pre), num(miss), num(st) }' \
        "$W/last.log" >> "$W/$name.runs"
}
row() { # row NAME LABEL: median and range of t/s, medians of the rest
    sort -n "$W/$1.runs" | awk -v label="$2" '
        { t[NR] = $1; for (c = 2; c <= 7; c++) v[c, NR] = $c }
        END {
            m = int((NR + 1) / 2)
            printf "| %s | %.2f (%.2f-%.2f) |", label, t[m], t[1], t[NR]
            for (c = 2; c <= 7; c++) printf " %s |", v[c, m]
            printf "\n"
        }'
}
rm -f "$W"/*.runs
for r in $(seq "$REPS"); do
    echo "rep $r/$REPS" >&2
    one gguf -m "$W/model.gguf"
    one resident -m "$W/pkg" --resident
    for n in $SLOTS; do
        one "s${n}_on" -m "$W/pkg" --moe-slot-bank "$n" --ssd-io direct
        one "s${n}_off" -m "$W/pkg" --moe-slot-bank "$n" --ssd-io direct --no-moe-prefetch
    done
done
{
    cat "$out.head"
    row gguf "resident GGUF (mmap, warm page cache)"
    row resident "package --resident"
    for n in $SLOTS; do
        row "s${n}_on" "slot bank $n, prefetch on"
        row "s${n}_off" "slot bank $n, prefetch off"
    done
} > "$out"
rm -f "$out.head"
cat "$out"
