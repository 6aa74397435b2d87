#!/bin/sh
# compute-sanitizer over the CUDA backend (make cuda-sanitize; a GPU and
# compute-sanitizer needed, not part of the suite: minutes, not seconds).
# memcheck (out-of-bounds and misaligned accesses, errors of CUDA calls) and
# initcheck (reads of device memory nothing wrote) over a 4-layer model at
# the Flash geometry: prefill and greedy decode through captured graphs,
# chunks of 7 with a VRAM slot bank, experts streamed from the GGUF (with a
# host bank of all of them, and with one that evicts too),
# sampled decode; memcheck over the kernel tests; racecheck (shared-memory
# hazards, the slowest tool) over a fixture model. Every run must report
# 0 errors, and the tokens must be those of a run without the sanitizer.
set -eu
BIN=${DS4_BIN:?}
DATA=${DS4_TEST_DATA:?}/fixtures
CS=${COMPUTE_SANITIZER:-compute-sanitizer}
command -v "$CS" >/dev/null || { echo "compute-sanitizer not found (COMPUTE_SANITIZER=path)"; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
m=$TMP/m4.gguf
"$BIN/ds4-mkmodel" "$m" --layers 4 >/dev/null 2>&1
P=$(python3 -c "print(','.join(str((i*7919)%120000+5) for i in range(40)))")
fail=0
check() { # check NAME TOOL WANT|- CMD...: 0 errors, and stdout WANT unless -
    name=$1 tool=$2 want=$3; shift 3
    "$CS" --tool "$tool" --error-exitcode 9 --print-limit 20 "$@" >"$TMP/out" 2>"$TMP/err" || true
    summary=$(grep -h -E "(ERROR|RACECHECK) SUMMARY" "$TMP/out" "$TMP/err" | head -n 1)
    got=$(grep -v '^=========' "$TMP/out" || true)
    clean=0
    case "$summary" in
        "========= ERROR SUMMARY: 0 errors" | "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)") clean=1 ;;
    esac
    if [ $clean = 0 ]; then
        echo "FAIL $name ($tool): ${summary:-no summary}"; grep -h -m 20 -E '^=========' "$TMP/out" "$TMP/err"; fail=1
    elif [ "$want" != - ] && [ "$got" != "$want" ]; then
        echo "FAIL $name ($tool): tokens $got, without the sanitizer $want"; fail=1
    else
        echo "ok   $name ($tool): 0 errors"
    fi
}
greedy=$("$BIN/ds4" -m "$m" --cuda --tokens "$P" -n 6 --temp 0 2>/dev/null)
check decode memcheck "$greedy" "$BIN/ds4" -m "$m" --cuda --tokens "$P" -n 6 --temp 0
check decode initcheck "$greedy" "$BIN/ds4" -m "$m" --cuda --tokens "$P" -n 6 --temp 0
check chunks-bank memcheck "$greedy" "$BIN/ds4" -m "$m" --cuda --tokens "$P" -n 6 --temp 0 --prefill-chunk 7 --gpu-expert-cache 2G
check streamed memcheck "$greedy" "$BIN/ds4" -m "$m" --cuda --tokens "$P" -n 6 --temp 0 --ssd-streaming --gpu-expert-cache 2G
# a host bank smaller than the experts: both banks evict, and the GPU hands
# evicted experts back (copies out of its slots into the host bank's)
check streamed-both memcheck "$greedy" "$BIN/ds4" -m "$m" --cuda --tokens "$P" -n 6 --temp 0 --moe-slot-bank 48 --gpu-expert-cache 1G
check sampled memcheck - "$BIN/ds4" -m "$m" --cuda --tokens "$P" -n 6 --temp 1 --seed 3
check kernels memcheck - "${DS4_KERNEL_TESTS:-$BIN/test_cuda_kernels}"
"$BIN/ds4-convert" "$DATA/tiny-a" "$TMP/tiny.gguf" --type f32 2>/dev/null
tiny=$(python3 -c "import json; print(','.join(map(str, json.load(open('$DATA/tiny-a/reference.json'))['tokens'][:24])))")
want=$("$BIN/ds4" -m "$TMP/tiny.gguf" --cuda --tokens "$tiny" -n 4 --temp 0 2>/dev/null)
check tiny racecheck "$want" "$BIN/ds4" -m "$TMP/tiny.gguf" --cuda --tokens "$tiny" -n 4 --temp 0
exit $fail
