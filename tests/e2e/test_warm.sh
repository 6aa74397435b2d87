#!/bin/sh
# --warm-weights: after the file's pages are dropped from the page cache
# (posix_fadvise DONTNEED), a load without it caches part of the weights
# file and a load with it all of it (fincore, util-linux), and says how
# long the read took; the tokens are those of a load without it. ds4-bench
# takes the flag too.
set -eu
BIN=${DS4_BIN:?}
command -v fincore >/dev/null || { echo "fincore (util-linux-extra) not installed"; exit 77; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# large enough that read-ahead around the metadata caches little of it
M=$TMP/m.gguf
"$BIN/ds4-mkmodel" "$M" --layers 1 --embd 1024 --ff 1024 --experts 16 --vocab 16384 --heads 8 --head-dim 128 \
    --q-lora 256 --o-lora 256 --o-groups 2 --idx-heads 8 --idx-head-dim 64 --idx-topk 64 --hash-layers 1 --type q8_0 \
    >/dev/null 2>&1
# (written back first: dirty pages cannot be dropped)
drop() { python3 -c "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)" "$M"; }
cached() { fincore --bytes --noheadings --output RES "$M" | tr -d ' '; }
size=$(stat -c %s "$M")

# a load alone (--inspect) reads the metadata and what read-ahead brings
drop
"$BIN/ds4" -m "$M" --cpu --inspect >/dev/null
base=$(cached)
[ "$base" -lt "$size" ] || { echo "a plain load cached the whole file already: nothing to measure"; exit 77; }
drop
"$BIN/ds4" -m "$M" --cpu --inspect --warm-weights -v >/dev/null 2>"$TMP/err"
grep -q "read $M into the page cache" "$TMP/err" || { echo "no report of the read"; cat "$TMP/err"; exit 1; }
got=$(cached)
[ "$got" -ge "$size" ] || { echo "after --warm-weights $got of $size bytes are cached"; exit 1; }
echo "ok: a load caches $base of $size bytes, with --warm-weights all of them"
# a GGUF whose experts stream from it: everything but the experts
drop
"$BIN/ds4" -m "$M" --cpu --inspect --warm-weights --ssd-streaming -v >/dev/null 2>"$TMP/err"
experts=$(sed -n 's/.*streamed from the GGUF: .* \([0-9.]*\) MiB of experts).*/\1/p' "$TMP/err")
[ -n "$experts" ] || { echo "no streaming line"; cat "$TMP/err"; exit 1; }
got=$(cached)
python3 -c "
import sys
got, size, ex = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) * 2**20
# all but the experts (less a page at each edge); of the experts at most
# what a plain load's read-ahead brings in (the first check's base)
ok = size - ex - (1 << 20) <= got <= size - ex + int(sys.argv[4])
print('ok: streaming, --warm-weights cached %d of %d bytes (experts %d)' % (got, size, ex))
sys.exit(0 if ok else 1)" "$got" "$size" "$experts" "$base" || { echo "FAIL: wrong part of the file warmed"; exit 1; }
a=$("$BIN/ds4" -m "$M" --cpu --tokens 1,2,3 -n 8 --temp 0 --warm-weights)
b=$("$BIN/ds4" -m "$M" --cpu --tokens 1,2,3 -n 8 --temp 0)
[ "$a" = "$b" ] || { echo "tokens differ with --warm-weights: $a / $b"; exit 1; }
"$BIN/ds4-bench" -m "$M" --cpu --warm-weights --ctx-start 8 --ctx-max 8 --gen-tokens 2 >/dev/null 2>&1 ||
    { echo "ds4-bench --warm-weights failed"; exit 1; }
echo "ok: same tokens; ds4-bench takes the flag"
