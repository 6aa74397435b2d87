#!/bin/sh
# Runs every compiled test binary given as arguments, then every shell test
# under tests/ (tests/**/test_*.sh). Exit status 77 means "skipped".
# Environment for shell tests: DS4_BIN (binaries), DS4_TEST_DATA (data).
cd "$(dirname "$0")/.."
export DS4_TEST_DATA="${DS4_TEST_DATA:-$(pwd)/tests/data}"
export DS4_BIN="${DS4_BIN:-$(pwd)}"
pass=0; fail=0; skip=0; failed=""
run_one() {
    name=$1; shift
    start=$(date +%s)
    "$@" > "$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ]; then pass=$((pass+1)); echo "PASS  $name (${secs}s)"
    elif [ $rc -eq 77 ]; then skip=$((skip+1)); echo "SKIP  $name: $(tail -n 1 "$log")"
    else fail=$((fail+1)); failed="$failed $name"; echo "FAIL  $name (exit $rc)"; sed 's/^/      /' "$log" | tail -n 40
    fi
}
log=$(mktemp)
for t in "$@"; do run_one "$(echo "$t" | sed 's|.*/tests/|tests/|')" "$t"; done
for t in $(find tests -name 'test_*.sh' | sort); do run_one "$t" sh "$t"; done
rm -f "$log"
echo "passed $pass, failed $fail, skipped $skip"
[ $fail -eq 0 ] || { echo "failed:$failed"; exit 1; }
