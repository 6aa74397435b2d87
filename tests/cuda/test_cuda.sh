#!/bin/sh
# The CUDA backend end to end on the transformers fixtures: logits of every
# position against the reference (--numerics hf, relative L2 <= 1e-3) and
# against the CPU backend, 48 greedy tokens identical to the reference,
# chunked prefill and token-by-token decode identical to one prefill (both
# numerics), official numerics close to the CPU's, bf16/f16 weights, and the
# expert slot bank (experts fed from host memory into 3 slots, or from a
# sidecar package's expert source) giving the same bits as resident experts,
# perplexity against the one the reference logits give,
# and on a small q2 model the tensor-core prefill products giving the bits
# of the single-token kernels.
# Skipped (exit 77) when the binaries have no CUDA or there is no GPU,
# unless DS4_REQUIRE_GPU=1 (make cuda-test).
set -eu
BIN=${DS4_BIN:?}
DATA=${DS4_TEST_DATA:?}/fixtures
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cmp="python3 $(dirname "$0")/../e2e/compare_logits.py"
ids() { python3 -c "import json,sys; t=json.load(open(sys.argv[1]))[sys.argv[2]]; n=int(sys.argv[3]) if len(sys.argv)>3 else len(t); print(','.join(map(str,t[:n])))" "$@"; }

fx=tiny-a-nosel
"$BIN/ds4-convert" "$DATA/$fx" "$TMP/$fx.f32.gguf" --type f32 2>/dev/null
if ! "$BIN/ds4" -m "$TMP/$fx.f32.gguf" --cuda --tokens 1 -n 1 --temp 0 >/dev/null 2>"$TMP/err"; then
    why=$(tail -n 1 "$TMP/err")
    if [ "${DS4_REQUIRE_GPU:-0}" = 1 ]; then echo "DS4_REQUIRE_GPU=1 but: $why"; exit 1; fi
    echo "skipped: $why"
    exit 77
fi

for fx in tiny-a-nosel tiny-a; do
    echo "== $fx"
    ref=$DATA/$fx/reference.json
    V=$(python3 -c "import json; print(json.load(open('$DATA/$fx/config.json'))['vocab_size'])")
    m=$TMP/$fx.f32.gguf
    [ -f "$m" ] || "$BIN/ds4-convert" "$DATA/$fx" "$m" --type f32 2>/dev/null
    ids "$ref" tokens > "$TMP/tokens.txt"
    "$BIN/ds4" -m "$m" --cuda --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/gpu.f32"
    "$BIN/ds4" -m "$m" --cpu --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/cpu.f32"
    echo -n "cuda vs reference: "; $cmp "$TMP/gpu.f32" "$DATA/$fx/logits.f32" "$V" 1e-3
    echo -n "cuda vs cpu:       "; $cmp "$TMP/gpu.f32" "$TMP/cpu.f32" "$V" 1e-4

    gen=$("$BIN/ds4" -m "$m" --cuda --tokens "$(ids "$ref" tokens 160)" --numerics hf -n 48 --temp 0)
    want=$(ids "$ref" generated)
    [ "$gen" = "$want" ] || { echo "generation differs:"; echo " got  $gen"; echo " want $want"; exit 1; }
    echo "generation: 48 tokens exact"

    for num in hf official; do
        "$BIN/ds4" -m "$m" --cuda --tokens @"$TMP/tokens.txt" --numerics $num --dump-logits "$TMP/c0.f32"
        for c in 1 7 64; do
            "$BIN/ds4" -m "$m" --cuda --tokens @"$TMP/tokens.txt" --numerics $num --prefill-chunk $c --dump-logits "$TMP/c$c.f32"
            echo -n "$num chunk $c vs full (bit for bit): "; $cmp "$TMP/c$c.f32" "$TMP/c0.f32" "$V" 0
        done
    done
    # Official numerics: FP8/FP4 roundings of slightly different inputs can
    # flip, so only closeness to the CPU is asked for.
    "$BIN/ds4" -m "$m" --cpu --tokens @"$TMP/tokens.txt" --numerics official --dump-logits "$TMP/cpu_off.f32"
    echo -n "official cuda vs cpu: "; $cmp "$TMP/c0.f32" "$TMP/cpu_off.f32" "$V" 5e-2 --finite
done

# Perplexity on the GPU (logits of whole prefill chunks) against the one
# the reference logits give (fp32 path: 1e-4 relative)
ppl="python3 $(dirname "$0")/../e2e/ppl_reference.py"
line=$("$BIN/ds4" -m "$TMP/tiny-a.f32.gguf" --cuda --numerics hf --tokens "$(ids "$DATA/tiny-a/reference.json" tokens)" \
    --perplexity --prefill-chunk 64)
$ppl --check "$line" "$($ppl "$DATA/tiny-a")" 1e-4

# Slot bank: 3 slots of ~100 KB for 5 layers x 8 experts, so every prefill
# group evicts; the same kernels read the same values, so the same bits.
fx=tiny-a
m=$TMP/$fx.f32.gguf
ids "$DATA/$fx/reference.json" tokens > "$TMP/tokens.txt"
"$BIN/ds4" -m "$m" --cuda --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/res.f32"
"$BIN/ds4" -m "$m" --cuda --gpu-expert-cache 300K -v --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/bank.f32" 2>"$TMP/bank.err"
grep "expert" "$TMP/bank.err" || true
echo -n "slot bank vs resident (bit for bit): "; $cmp "$TMP/bank.f32" "$TMP/res.f32" 1024 0
"$BIN/ds4" -m "$m" --cuda --gpu-expert-cache 300K --tokens @"$TMP/tokens.txt" --numerics hf --prefill-chunk 7 --dump-logits "$TMP/bank7.f32"
echo -n "slot bank, chunks of 7: "; $cmp "$TMP/bank7.f32" "$TMP/res.f32" 1024 0
gen=$("$BIN/ds4" -m "$m" --cuda --gpu-expert-cache 300K --tokens "$(ids "$DATA/$fx/reference.json" tokens 160)" --numerics hf -n 48 --temp 0)
[ "$gen" = "$(ids "$DATA/$fx/reference.json" generated)" ] || { echo "slot bank generation differs: $gen"; exit 1; }
echo "slot bank generation: 48 tokens exact"
# The bank kept on the device (the default for experts in host memory)
# makes the host-driven bank's decisions: the same hits, misses and bytes
# over chunks of 7 and 48 decode steps (no step run ahead, which the host
# bank has no counterpart of), and the same tokens.
for fxc in 3 7 64; do
    for where in dev host; do
        hb=0; [ $where = host ] && hb=1
        g=$(DS4_CUDA_BANK_HOST=$hb DS4_CUDA_SPECULATE=0 "$BIN/ds4" -m "$m" --cuda --gpu-expert-cache ${fxc}00K -v \
            --tokens "$(ids "$DATA/$fx/reference.json" tokens 160)" --numerics hf --prefill-chunk 7 -n 48 --temp 0 2>"$TMP/$where.err")
        echo "$g" > "$TMP/$where.gen"
        grep -o "expert cache: .*" "$TMP/$where.err" > "$TMP/$where.st" || true
    done
    [ -s "$TMP/dev.st" ] && cmp -s "$TMP/dev.st" "$TMP/host.st" && cmp -s "$TMP/dev.gen" "$TMP/host.gen" ||
        { echo "device bank vs host bank (${fxc}00K): $(cat "$TMP/dev.st") / $(cat "$TMP/host.st")"; exit 1; }
    echo "device bank = host bank at ${fxc}00K: $(cat "$TMP/dev.st")"
done

# A sidecar package on the GPU: the bank is fed from the package's expert
# source (records read into RAM, or its SSD slot bank's io_uring reads);
# the same bytes reach the same kernels, so the same bits.
"$BIN/ds4-sidecar" export "$m" "$TMP/pkg" 2>/dev/null
# The source's host buffers are pinned for DMA (the copies run from them
# directly): -v names how much, or why not.
for mode in "" "--resident" "--moe-slot-bank 2"; do
    "$BIN/ds4" -m "$TMP/pkg" --cuda $mode --gpu-expert-cache 300K -v --tokens @"$TMP/tokens.txt" --numerics hf \
        --dump-logits "$TMP/pkg.f32" 2>"$TMP/pkg.err"
    echo -n "package ${mode:-streamed} through the GPU bank vs resident (bit for bit): "
    $cmp "$TMP/pkg.f32" "$TMP/res.f32" 1024 0
    pin=$(grep -o "its host buffers: .*" "$TMP/pkg.err" || true)
    case "$pin" in
        "" | *": 0 of "* | *"not pinned"* | *"no host regions"*)
            echo "package ${mode:-streamed}: the source's buffers were not pinned: ${pin:-no -v line}"; exit 1 ;;
    esac
    echo "package ${mode:-streamed}: $pin"
done
"$BIN/ds4" -m "$TMP/pkg" --cuda --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/pkg.f32"
echo -n "package, automatic bank: "; $cmp "$TMP/pkg.f32" "$TMP/res.f32" 1024 0
# The GGUF's own experts streamed out of the file (no package): asked for,
# and chosen by itself when the experts fit neither the GPU (a bank was
# asked for) nor the host memory (DS4_MEM_AVAILABLE pretends 4 GB).
for mode in "--ssd-streaming" "--moe-slot-bank 2" "auto"; do
    if [ "$mode" = auto ]; then
        DS4_MEM_AVAILABLE=4G "$BIN/ds4" -m "$m" --cuda --gpu-expert-cache 300K -v --tokens @"$TMP/tokens.txt" \
            --numerics hf --dump-logits "$TMP/gs.f32" 2>"$TMP/gs.err"
        grep -q "fit neither the GPU nor host memory" "$TMP/gs.err" || { echo "GGUF, no automatic streaming:"; cat "$TMP/gs.err"; exit 1; }
        # the host bank's budget is MemAvailable less 8 GB (the GPU holds
        # the dense weights): nothing here, so the fewest slots, 2
        grep -q "the GPU holds the dense weights and context.* -> slots=2$" "$TMP/gs.err" ||
            { echo "GGUF, automatic host bank for the GPU:"; grep "ssd-cache auto" "$TMP/gs.err"; exit 1; }
    else
        "$BIN/ds4" -m "$m" --cuda $mode --gpu-expert-cache 300K -v --tokens @"$TMP/tokens.txt" --numerics hf \
            --dump-logits "$TMP/gs.f32" 2>"$TMP/gs.err"
    fi
    grep -q "routed experts streamed from the GGUF" "$TMP/gs.err" || { echo "GGUF $mode: not streamed"; cat "$TMP/gs.err"; exit 1; }
    echo -n "GGUF streamed ($mode) through the GPU bank vs resident (bit for bit): "
    $cmp "$TMP/gs.f32" "$TMP/res.f32" 1024 0
done
# The next layer's likely experts (its router on this layer's MoE input)
# go to the package's slot bank as prefetch hints (DS4_CUDA_GUESS=1): hints
# are used, and the tokens stay those of resident experts.
gen=$(DS4_CUDA_GUESS=1 "$BIN/ds4" -m "$TMP/pkg" --cuda --moe-slot-bank 6 --gpu-expert-cache 300K --moe-stats \
    --tokens "$(ids "$DATA/$fx/reference.json" tokens 160)" --numerics hf -n 48 --temp 0 2>"$TMP/guess.err")
[ "$gen" = "$(ids "$DATA/$fx/reference.json" generated)" ] || { echo "package with hints: generation differs: $gen"; exit 1; }
used=$(grep -o "prefetched=[0-9]*" "$TMP/guess.err" | head -n 1 | cut -d= -f2)
[ "${used:-0}" -gt 0 ] || { echo "package with hints: no hint was used: $(grep Flash-MoE "$TMP/guess.err")"; exit 1; }
echo "package, next-layer hints: $(grep -o "prefetched=.*" "$TMP/guess.err" | head -n 1), 48 tokens exact"
# Experts the GPU bank evicts go back to the host bank (which let its copy
# go while the GPU held them): some are handed back, the tokens stay those
# of resident experts.
gen=$("$BIN/ds4" -m "$TMP/pkg" --cuda --moe-slot-bank 4 --gpu-expert-cache 300K --moe-stats \
    --tokens "$(ids "$DATA/$fx/reference.json" tokens 160)" --numerics hf -n 48 --temp 0 2>"$TMP/back.err")
[ "$gen" = "$(ids "$DATA/$fx/reference.json" generated)" ] || { echo "package, experts handed back: generation differs: $gen"; exit 1; }
back=$(grep -o "returned by the GPU=[0-9]*" "$TMP/back.err" | cut -d= -f2)
[ "${back:-0}" -gt 0 ] || { echo "package: no expert was handed back: $(grep Flash-MoE "$TMP/back.err")"; exit 1; }
echo "package, experts handed back by the GPU bank: $back, 48 tokens exact"
# The automatic backend when the GPU cannot take the model after all (an
# expert cache larger than the card): the run goes on on the CPU, its host
# bank sized again as for the CPU (dense weights and context in RAM), not
# as beside a GPU; the tokens are the reference's.
gen=$(DS4_MEM_AVAILABLE=4G "$BIN/ds4" -m "$TMP/pkg" --gpu-expert-cache 100000G \
    --tokens "$(ids "$DATA/$fx/reference.json" tokens 160)" --numerics hf -n 48 --temp 0 2>"$TMP/fb.err")
[ "$gen" = "$(ids "$DATA/$fx/reference.json" generated)" ] || { echo "CPU fallback: generation differs: $gen"; cat "$TMP/fb.err"; exit 1; }
grep -q "using the CPU" "$TMP/fb.err" && grep -q "sizing the routed experts' host cache again, for the CPU" "$TMP/fb.err" &&
    sed -n '/sizing the routed/,$p' "$TMP/fb.err" | grep -q "ssd-cache auto: available=.* dense=.* context=" ||
    { echo "CPU fallback: the host bank was not sized again for the CPU:"; cat "$TMP/fb.err"; exit 1; }
echo "CPU fallback after the GPU refused the model: host bank sized for the CPU, 48 tokens exact"
# A read that keeps failing while the GPU bank fetches: an error exit with
# the reader's message, and only correct tokens before it.
ref=$("$BIN/ds4" -m "$m" --cuda --tokens 5,17,300,42 -n 24 --temp 0)
set +e
got=$(DS4_FAULT_READ_FAIL=60 "$BIN/ds4" -m "$TMP/pkg" --cuda --moe-slot-bank 2 --gpu-expert-cache 300K \
    --tokens 5,17,300,42 -n 24 --temp 0 2>"$TMP/err")
rc=$?
set -e
if [ $rc -eq 0 ] || [ $rc -ge 128 ] || ! grep -q "failed after" "$TMP/err"; then
    echo "read failure through the GPU bank: exit $rc: $(cat "$TMP/err")"
    exit 1
fi
case "$ref" in "$got"*) ;; *) echo "tokens before the read failure differ: got $got, want a prefix of $ref"; exit 1 ;; esac
echo "read failure through the GPU bank: exit $rc after $(echo "$got" | tr ',' '\n' | grep -c .) correct tokens"

fx=tiny-a-nosel
for ty in bf16 f16; do
    "$BIN/ds4-convert" "$DATA/$fx" "$TMP/$fx.$ty.gguf" --type $ty 2>/dev/null
    ids "$DATA/$fx/reference.json" tokens > "$TMP/tokens.txt"
    "$BIN/ds4" -m "$TMP/$fx.$ty.gguf" --cuda --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/$ty.f32"
    echo -n "$ty cuda vs reference: "; $cmp "$TMP/$ty.f32" "$DATA/$fx/logits.f32" 1024 1e-2
    # Every product of these models takes the tensor-core kernels of
    # k_linear.cu (split fp32 activations): close to the CPU and to the
    # plain fp32 kernels, and the same bits in chunks and single tokens.
    "$BIN/ds4" -m "$TMP/$fx.$ty.gguf" --cpu --tokens @"$TMP/tokens.txt" --numerics hf --dump-logits "$TMP/$ty.cpu.f32"
    echo -n "$ty cuda vs cpu: "; $cmp "$TMP/$ty.f32" "$TMP/$ty.cpu.f32" 1024 1e-4
    DS4_CUDA_NO_FLMMA=1 "$BIN/ds4" -m "$TMP/$fx.$ty.gguf" --cuda --tokens @"$TMP/tokens.txt" --numerics hf \
        --dump-logits "$TMP/$ty.plain.f32"
    echo -n "$ty tensor cores vs plain fp32 kernels: "; $cmp "$TMP/$ty.f32" "$TMP/$ty.plain.f32" 1024 1e-4
    for c in 1 7 64; do
        "$BIN/ds4" -m "$TMP/$fx.$ty.gguf" --cuda --tokens @"$TMP/tokens.txt" --numerics hf --prefill-chunk $c \
            --dump-logits "$TMP/$ty.c$c.f32"
        echo -n "$ty chunk $c vs full (bit for bit): "; $cmp "$TMP/$ty.c$c.f32" "$TMP/$ty.f32" 1024 0
    done
done

# Tensor-core prefill products (k_mmq.cu): a small random model with the q2
# types at widths they take (IQ2_XXS rows of 2048 values, Q2_K rows of
# 1024, Q8_0 rows of multiples of 256; the fixtures are narrower). Its
# prefill logits must be the same bits with and without the tensor cores,
# in chunks of 37, in single tokens, and from one run to the next.
q2=$TMP/q2small.gguf
"$BIN/ds4-mkmodel" "$q2" --layers 3 --embd 2048 --vocab 2048 --experts 16 --experts-used 4 --ff 1024 --heads 4 \
    --head-dim 256 --q-lora 256 --o-lora 256 --o-groups 2 --idx-heads 4 --idx-topk 16 --hash-layers 1 --hca-ratio 8 \
    --window 16 >/dev/null 2>&1
python3 -c "print(','.join(str((i * 7919) % 2000 + 5) for i in range(300)))" > "$TMP/q2tok.txt"
"$BIN/ds4" -m "$q2" --cuda --tokens @"$TMP/q2tok.txt" --dump-logits "$TMP/mma.f32"
DS4_CUDA_NO_MMA=1 "$BIN/ds4" -m "$q2" --cuda --tokens @"$TMP/q2tok.txt" --dump-logits "$TMP/nomma.f32"
echo -n "q2 tensor cores vs dp4a kernels (bit for bit): "; $cmp "$TMP/mma.f32" "$TMP/nomma.f32" 2048 0
for c in 37 1; do
    "$BIN/ds4" -m "$q2" --cuda --tokens @"$TMP/q2tok.txt" --prefill-chunk $c --dump-logits "$TMP/mma$c.f32"
    echo -n "q2 chunks of $c vs one prefill (bit for bit): "; $cmp "$TMP/mma$c.f32" "$TMP/mma.f32" 2048 0
done
# One stream (no side lanes), no programmatic launches, the profiler's
# path: the same bits token by token (single tokens take the decode
# kernels and the rows made ahead by the mHC finish step).
for env in DS4_CUDA_LANES=0 DS4_CUDA_NO_PDL=1 DS4_CUDA_PROFILE=1; do
    env $env "$BIN/ds4" -m "$q2" --cuda --tokens @"$TMP/q2tok.txt" --prefill-chunk 1 --dump-logits "$TMP/env.f32" \
        >/dev/null 2>&1
    echo -n "q2 token by token with $env (bit for bit): "; $cmp "$TMP/env.f32" "$TMP/mma.f32" 2048 0
done
"$BIN/ds4" -m "$q2" --cuda --tokens @"$TMP/q2tok.txt" --dump-logits "$TMP/mma2.f32"
echo -n "q2 second run (bit for bit): "; $cmp "$TMP/mma2.f32" "$TMP/mma.f32" 2048 0
# DS4_CUDA_MEM pretends a smaller card: the rest of the GPU is held back
# (-v says so), and the numbers stay the same.
DS4_CUDA_MEM=6G "$BIN/ds4" -m "$q2" --cuda -v --tokens @"$TMP/q2tok.txt" --dump-logits "$TMP/small.f32" 2>"$TMP/small.err"
grep -q "DS4_CUDA_MEM=6G: .* held back, as on a smaller card" "$TMP/small.err" ||
    { echo "DS4_CUDA_MEM=6G: no memory held back:"; cat "$TMP/small.err"; exit 1; }
echo -n "q2 with DS4_CUDA_MEM=6G (bit for bit): "; $cmp "$TMP/small.f32" "$TMP/mma.f32" 2048 0
