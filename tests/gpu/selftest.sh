#!/usr/bin/env bash
# Runs every GPU branch of tests/gpu/run.sh on a machine without a GPU, so that
# a shell mistake shows up here and not on a GPU machine's short lease. Stubs
# stand in for what needs a GPU; they live only here, in a temp folder:
#   bin/nvidia-smi         reports an H100
#   bin/compute-sanitizer  runs its program and reports no error
#   standin/               a build folder whose test programs and essence run
#                          the real CUDA build's binaries on the CPU backend
# Four runs, each checked (exit status, the table printed last with the
# expected status per step, logs in the results folder and in --out, nothing
# left in the temp folder):
#   nogpu    a real -Dcuda=enabled build; every GPU step fails ("no usable
#            GPU") as a FAIL row and the next step still runs; the same test
#            programs run outside run.sh exit 77 (skipped, as meson counts it)
#   standin  --no-build on the stand-ins: every step's success path
#   budget   a hanging step in a 45 s budget: TIMEOUT, then "no time left"
#   signal   SIGTERM during a hanging step: the table still comes, exit 1
# Usage: tests/gpu/selftest.sh [cuda-build-dir]   (default build-gpuselftest;
# its first build takes minutes on 2 cores, so the nogpu run gets a budget of
# $SELFTEST_BUDGET, default 1200 s). Exit status 0 when every check holds.
# The outputs are kept (and named) when a check fails or SELFTEST_KEEP=1.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
BUILD=${1:-build-gpuselftest}
T=$(mktemp -d /tmp/essence-gpu-selftest.XXXXXX) || exit 2
FAILS=0
check() {  # check DESCRIPTION COMMAND...: one line, ok or FAIL
    local what=$1
    shift
    if "$@"; then echo "selftest: ok    $what"; else echo "selftest: FAIL  $what"; FAILS=$((FAILS + 1)); fi
}

# ---- stubs -------------------------------------------------------------------
mkdir -p "$T/bin" "$T/tmp"
cat > "$T/bin/nvidia-smi" << 'EOF'
#!/bin/sh
case "$*" in
    *memory.total*) echo "NVIDIA H100 80GB HBM3, 81559 MiB, 570.86.15" ;;
    *) echo "NVIDIA H100 80GB HBM3" ;;
esac
EOF
cat > "$T/bin/compute-sanitizer" << 'EOF'
#!/bin/sh
while [ $# -gt 0 ]; do
    case $1 in --tool|--error-exitcode|--leak-check) shift 2 ;; -*) shift ;; *) break ;; esac
done
"$@"
rc=$?
echo "========= ERROR SUMMARY: 0 errors"
exit $rc
EOF
REAL=$ROOT/$BUILD
S=$T/standin
mkdir -p "$S/tests" "$S/perf"
cat > "$S/essence" << EOF
#!/usr/bin/env bash
# The CUDA build's essence on the CPU; bench on the tiny student.
args=()
for a in "\$@"; do [ "\$a" = run.device=cuda ] && a=run.device=cpu; args+=("\$a"); done
[ "\$1" = bench ] && args+=(--set student.preset=configs/models/qwen3-student-tiny.json --set run.device=cpu
                           --set batch.capacity=1024 --set batch.step_tokens=1024 --steps 2)
exec "$REAL/essence" "\${args[@]}"
EOF
cat > "$S/tests/test_cuda_ops" << EOF
#!/bin/sh
[ -z "\${SELFTEST_HANG:-}" ] || sleep 600
exec "$REAL/tests/test_cuda_ops" cpu
EOF
printf '#!/bin/sh\nexec "%s/tests/test_cuda_model" cpu\n' "$REAL" > "$S/tests/test_cuda_model"
# shellcheck disable=SC2016 # "$2" belongs to the stand-in
printf '#!/bin/sh\nexec "%s/tests/test_cuda_fixtures" cpu "$2"\n' "$REAL" > "$S/tests/test_cuda_fixtures"
cat > "$S/perf/bench_attention_cuda" << 'EOF'
#!/bin/sh
echo "attention N=8192 (4 docs x 2048), H=16, KVH=8, D=128, median of 5"
printf '%-8s %10s %10s %10s %10s\n' kernel "fwd ms" "fwd TF/s" "bwd ms" "bwd TF/s"
printf '%-8s %10.2f %10.1f %10.2f %10.1f\n' simple 1.00 100.0 3.00 66.7 tc 0.50 200.0 1.50 133.3
echo "tc vs simple, max rel diff: out 1.00e-03 lse 1.00e-05 dq 2.00e-03 dk 2.00e-03 dv 2.00e-03"
EOF
chmod +x "$T/bin"/* "$S/essence" "$S/tests"/* "$S/perf"/*
RESULTS_BEFORE=$(ls perf/gpu/results 2> /dev/null)

# run NAME [env...] -- [run.sh args...]: run.sh with the stubs first on PATH,
# its results and temp files in this test's folder; output in $T/NAME.txt.
run() {
    local name=$1
    shift
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    mkdir -p "$T/out-$name"
    env PATH="$T/bin:$PATH" TMPDIR="$T/tmp" ESSENCE_GPU_RESULTS="$T/results-$name" "${envs[@]}" \
        tests/gpu/run.sh --out "$T/out-$name" "$@" > "$T/$name.txt" 2>&1
}
# The status of STEP in the table of run NAME.
status_of() { awk -v s="$2" 'f && $1 == s {print $2} /^== summary/ {f = 1}' "$T/$1.txt"; }
note_of() { awk -v s="$2" 'f && $1 == s {$1 = $2 = $3 = ""; print} /^== summary/ {f = 1}' "$T/$1.txt"; }
steps_are() {  # steps_are NAME STEP=STATUS...
    local name=$1 kv got ok=0
    shift
    for kv in "$@"; do
        got=$(status_of "$name" "${kv%%=*}")
        [ "$got" = "${kv#*=}" ] || { echo "  $name: step ${kv%%=*} is '$got', expected ${kv#*=}"; ok=1; }
    done
    return $ok
}
table_last() { tail -n 1 "$T/$1.txt" | grep -Eq '^[0-9]+ step\(s\) failed.*; log: '; }
# The log exists in the results folder and, whole, in --out, with the table.
logs_kept() {
    local log copy
    log=$(find "$T/results-$1" -name 'run-*.log' 2> /dev/null | head -n 1)
    copy=$T/out-$1/${log##*/}
    [ -n "$log" ] && [ -f "$copy" ] && cmp -s "$log" "$copy" && grep -q '^== summary' "$log" &&
        ls "$T/out-$1"/summary-*.txt > /dev/null 2>&1
}
note_has() { note_of "$1" "$2" | grep -q -- "$3"; }
tmp_clean() { [ -z "$(ls -A "$T/tmp")" ]; }

# ---- nogpu: the real CUDA build, no GPU ----------------------------------------
echo "selftest: nogpu run (builds $BUILD with -Dcuda=enabled)"
run nogpu ESSENCE_GPU_BUDGET="${SELFTEST_BUDGET:-1200}" -- "$BUILD"
rc=$?
check "nogpu: exit status non-zero ($rc)" [ "$rc" != 0 ]
check "nogpu: table printed last" table_last nogpu
check "nogpu: build ok, every GPU step FAIL, torch skipped" steps_are nogpu build=ok ops=FAIL attn_tc=FAIL \
    model=FAIL curve=FAIL hfgen=skip fixtures=FAIL torch=skip bench=FAIL memcheck=FAIL
for s in ops model fixtures; do
    check "nogpu: $s says why" note_has nogpu "$s" "no usable GPU"
done
check "nogpu: curve names the device" note_has nogpu curve "essence train on cuda failed"
check "nogpu: bench runs both shapes" grep -q 'essence bench 1.7B failed' "$T/nogpu.txt"
check "nogpu: logs in the results folder and in --out" logs_kept nogpu
check "nogpu: temp folder removed" tmp_clean
[ -x "$REAL/tests/test_cuda_ops" ] || { echo "selftest: no CUDA build in $BUILD; the other runs need it"; exit 1; }
# Outside run.sh (a plain `meson test`) the same programs report skipped.
skip_without_gpu() {
    local t rc ok=0
    for t in ops model fixtures; do
        env -u ESSENCE_REQUIRE_GPU "$REAL/tests/test_cuda_$t" > /dev/null 2>&1
        rc=$?
        [ $rc = 77 ] || { echo "  test_cuda_$t exited $rc, expected 77"; ok=1; }
    done
    return $ok
}
check "nogpu: the GPU test programs exit 77 (skipped) outside run.sh" skip_without_gpu

# ---- standin: every success path -----------------------------------------------
echo "selftest: standin run"
run standin -- --no-build "$S"
rc=$?
check "standin: exit status 0 ($rc)" [ "$rc" = 0 ]
check "standin: table printed last" table_last standin
check "standin: every step ok (torch skipped: no CUDA for torch)" steps_are standin build=skip ops=ok \
    attn_tc=ok model=ok curve=ok hfgen=skip fixtures=ok torch=skip bench=ok memcheck=ok
check "standin: ops counts its checks" note_has standin ops ' checks, 0 failed'
check "standin: attn_tc times both kernels" note_has standin attn_tc 'simple fwd 100.0 bwd 66.7 TF/s; tc fwd 200.0'
check "standin: model reports the worst gradient" note_has standin model 'worst grad'
check "standin: curve compares the two runs" note_has standin curve 'max rel diff'
check "standin: bench has both shapes and both attention paths" note_has standin bench '0.6B essence only.*0.6B-simple essence only.*1.7B essence only.*1.7B-simple essence only'
check "standin: memcheck reads the sanitizer" note_has standin memcheck 'ERROR SUMMARY: 0 errors'
check "standin: bench JSON in --out" grep -q '^== es-simple-1.7B.json' "$T"/out-standin/bench-*.jsonl.txt
check "standin: logs in the results folder and in --out" logs_kept standin
check "standin: temp folder removed" tmp_clean

# ---- budget: a hanging step ----------------------------------------------------
echo "selftest: budget run (about 45 s)"
start=$(date +%s)
run budget SELFTEST_HANG=1 ESSENCE_GPU_BUDGET=45 -- --no-build "$S"
rc=$? took=$(($(date +%s) - start))
check "budget: exit status non-zero ($rc)" [ "$rc" != 0 ]
check "budget: within the budget ($took s)" [ "$took" -le 50 ]
check "budget: ops TIMEOUT, the rest out of time" steps_are budget ops=TIMEOUT attn_tc=skip model=skip \
    curve=skip hfgen=skip bench=skip memcheck=skip
check "budget: the timeout is named" note_has budget ops 'timed out after'
check "budget: table printed last" table_last budget
check "budget: logs in the results folder and in --out" logs_kept budget
check "budget: temp folder removed" tmp_clean

# ---- signal: SIGTERM during a step ---------------------------------------------
echo "selftest: signal run"
mkdir -p "$T/out-signal"
env PATH="$T/bin:$PATH" TMPDIR="$T/tmp" ESSENCE_GPU_RESULTS="$T/results-signal" SELFTEST_HANG=1 \
    tests/gpu/run.sh --out "$T/out-signal" --no-build "$S" > "$T/signal.txt" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q '^== ops' "$T/signal.txt" && break; sleep 0.2; done
sleep 1
start=$(date +%s)
kill -TERM "$pid"
wait "$pid"
rc=$? took=$(($(date +%s) - start))
check "signal: exit status non-zero ($rc)" [ "$rc" != 0 ]
check "signal: stops at once ($took s)" [ "$took" -le 5 ]
check "signal: ops FAIL, the rest skipped" steps_are signal ops=FAIL attn_tc=skip model=skip curve=skip hfgen=skip \
    bench=skip memcheck=skip
check "signal: the interruption is named" note_has signal model 'interrupted'
check "signal: table printed last" table_last signal
check "signal: logs in the results folder and in --out" logs_kept signal
check "signal: temp folder removed" tmp_clean

check "nothing written to perf/gpu/results" [ "$(ls perf/gpu/results 2> /dev/null)" = "$RESULTS_BEFORE" ]
if [ $FAILS = 0 ]; then
    echo "selftest: all checks hold"
else
    echo "selftest: $FAILS check(s) failed"
fi
if [ $FAILS = 0 ] && [ -z "${SELFTEST_KEEP:-}" ]; then rm -rf "$T"; else echo "selftest: outputs in $T"; fi
[ $FAILS = 0 ]
