#!/usr/bin/env bash
# Builds essence and runs every test: the C tests in a release build, again
# under AddressSanitizer + UndefinedBehaviorSanitizer, and again in a build
# without the optional libraries; then the Python tools' and integration
# tests. Ends with one summary line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || { echo "setup failed"; exit 1; }

passed=0
failed=0
# Logs of this run only: several checkouts may run the suite at once.
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/essence-test.XXXXXX") || exit 1
trap 'rm -rf "$LOGS"' EXIT
count_meson() {  # adds a meson test run's Ok/Fail counts to the totals
    local log="$1"
    local ok fail
    ok=$(grep -E '^Ok: +[0-9]+' "$log" | tail -1 | awk '{print $2}')
    fail=$(grep -E '^(Fail|Unexpected Pass|Timeout): +[0-9]+' "$log" | awk '{s+=$2} END {print s+0}')
    passed=$((passed + ${ok:-0}))
    failed=$((failed + ${fail:-0}))
}

echo "== release build"
if [ ! -d build ]; then meson setup build >/dev/null || exit 1; fi
ninja -C build >/dev/null || { ninja -C build; exit 1; }
meson test -C build --no-suite gpu --print-errorlogs 2>&1 | tee "$LOGS/release.log"
count_meson "$LOGS/release.log"

echo "== sanitizer build (ASan + UBSan)"
if [ ! -d build-asan ]; then
    meson setup build-asan -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false \
        -Dcuda=disabled -Dc_args=-fno-sanitize-recover=all >/dev/null || exit 1
fi
ninja -C build-asan >/dev/null || { ninja -C build-asan; exit 1; }
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export OMP_NUM_THREADS=2
meson test -C build-asan --no-suite gpu --print-errorlogs --timeout-multiplier 4 2>&1 | tee "$LOGS/asan.log"
count_meson "$LOGS/asan.log"
unset ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS

echo "== minimal build (no BLAS, MPI or CUDA: what a bare machine builds)"
if [ ! -d build-min ]; then
    meson setup build-min -Dblas=disabled -Dmpi=disabled -Dcuda=disabled -Dnccl=disabled >/dev/null || exit 1
fi
ninja -C build-min >/dev/null || { ninja -C build-min; exit 1; }
meson test -C build-min --no-suite gpu --print-errorlogs 2>&1 | tee "$LOGS/min.log"
count_meson "$LOGS/min.log"

echo "== python tools and integration tests"
ESSENCE_BIN=$PWD/build/essence python3 -m pytest -q tests/tools tests/integration 2>&1 | tee "$LOGS/py.log"
py_rc=${PIPESTATUS[0]}
py_pass=$(grep -aEo '[0-9]+ passed' "$LOGS/py.log" | tail -1 | awk '{print $1}')
py_fail=$(grep -aEo '[0-9]+ (failed|error)' "$LOGS/py.log" | awk '{s+=$1} END {print s+0}')
passed=$((passed + ${py_pass:-0}))
failed=$((failed + ${py_fail:-0}))
# pytest failing without a count (a crash, an interrupted session) still fails the run
[ "$py_rc" -eq 0 ] || [ "${py_fail:-0}" -gt 0 ] || failed=$((failed + 1))

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
