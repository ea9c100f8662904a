#!/usr/bin/env bash
# One-shot check of the CUDA backend on a machine with an NVIDIA H100/H200, in
# under about 8 minutes, downloading nothing (tests/gpu/README.md):
#   build    gpu-bundle/ (when present) on the paths, meson -Dcuda=enabled
#   ops      every CUDA op against the CPU backend (test_cuda_ops), attention
#            on every path of the build (simple, tc, cudnn where built)
#   memcheck compute-sanitizer on the op test (skipped when absent), early so
#            that it has its time whatever the later steps take
#   attn_tc  every attention path timed and compared (bench_attention_cuda)
#   model    qwen3 + gpt2 forward, loss and every gradient, CUDA vs CPU
#   curve    20 training steps on CUDA and on the CPU, loss curves compared
#   fixtures transformers fixtures through the CUDA backend; torch bf16 forward
#   bench    essence bench vs tools/bench_hf.py, Qwen3-0.6B and 1.7B shapes,
#            every attention path of `essence version`, each per-op table read
#            against perf/cost_model.py
# The correctness steps (ops, model, fixtures) run with CUDA_LAUNCH_BLOCKING=1,
# so that a failing kernel is reported at its own launch.
# then a summary table, printed last. A failed step is recorded and the next
# one runs; SIGTERM/SIGINT stop the running step and skip to the table. The
# whole output goes to perf/gpu/results/run-<date>-<card>.log (the folder is
# $ESSENCE_GPU_RESULTS when set), written as it runs into the output folder
# too (--out DIR, or $OUT when set), with the table and the bench JSON lines.
#
# Usage: tests/gpu/run.sh [--cpu-only] [--no-build] [--out DIR] [build-dir]
#   --cpu-only  everything that needs no GPU: the bundle check, the CPU build,
#               the CPU halves of ops/model/curve/fixtures, a tiny bench_hf run
#   --no-build  use build-dir as it is (a second run on the same machine)
# Exit status: 0 when no step failed.
set -uo pipefail
CALLER=$PWD
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
CPU_ONLY=0
NO_BUILD=0
OUTDIR=${OUT:-}
RESULTS=${ESSENCE_GPU_RESULTS:-perf/gpu/results}
BUILD=
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-only) CPU_ONLY=1 ;;
        --no-build) NO_BUILD=1 ;;
        --out) OUTDIR=${2:?--out needs a folder}; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
        *) BUILD=$1 ;;
    esac
    shift
done
case $OUTDIR in ''|/*) ;; *) OUTDIR=$CALLER/$OUTDIR ;; esac  # --out is relative to where run.sh was called
[ -n "$BUILD" ] || BUILD=$([ $CPU_ONLY = 1 ] && echo build-gpucheck-cpu || echo build-gpu)
BUDGET=${ESSENCE_GPU_BUDGET:-470}  # seconds for all steps; the device call allows 600
KILL_GRACE=10  # a step that ignores SIGTERM is killed this much after its limit
case $BUDGET in ''|*[!0-9]*) echo "run.sh: ESSENCE_GPU_BUDGET is '$BUDGET', expected seconds" >&2; exit 2 ;; esac
T0=$(date +%s)

# The toolkit is often installed without being put on PATH.
for d in /usr/local/cuda/bin /opt/cuda/bin; do
    [ -x "$d/nvcc" ] && PATH="$PATH:$d"
done
BUNDLE=none
if [ -f gpu-bundle/env.sh ]; then
    # shellcheck source=/dev/null
    . gpu-bundle/env.sh
    BUNDLE=gpu-bundle
fi
export PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1
export TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
# Here a missing GPU is a failure; the test programs skip (exit 77) without
# one only under a plain `meson test`.
export ESSENCE_REQUIRE_GPU=1

if [ $CPU_ONLY = 1 ]; then
    CARD=cpu
else
    # A wedged driver can hang nvidia-smi; nothing outside a step may block.
    CARD=$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    CARD=${CARD:-no-gpu}
fi
STAMP=$(date -u +%Y%m%d-%H%M%S)
CARD_TAG=$(echo "$CARD" | tr -c 'A-Za-z0-9._\n-' '_' | sed 's/_*$//')
mkdir -p "$RESULTS" || { echo "run.sh: cannot make $RESULTS" >&2; exit 2; }
LOG=$RESULTS/run-$STAMP-$CARD_TAG.log
LOGS=("$LOG")
if [ -n "$OUTDIR" ]; then
    mkdir -p "$OUTDIR" || { echo "run.sh: cannot make the output folder $OUTDIR" >&2; exit 2; }
    LOGS+=("$OUTDIR/${LOG##*/}")  # as it runs, so a run cut short still leaves its log there
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/essence-gpu.XXXXXX") || { echo "run.sh: mktemp failed" >&2; exit 2; }
# tee ignores SIGTERM/SIGINT so that the table still reaches the log when the
# whole process group is signalled.
exec 3>&1 4>&2 > >(trap '' TERM INT; exec tee "${LOGS[@]}") 2>&1
TEE_PID=$!

echo "== essence GPU check $(date -u '+%Y-%m-%d %H:%M:%S UTC'), card: $CARD, build: $BUILD, bundle: $BUNDLE"
[ $CPU_ONLY = 1 ] || timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ||
    echo "nvidia-smi: not found or failed"
command -v nvcc > /dev/null && timeout 20 nvcc --version | tail -n 1

# ---- step bookkeeping --------------------------------------------------------
NAMES=() STATUS=() NOTES=() SECS=()
# record NAME STATUS NOTE [SECONDS]: one row of the summary table.
record() { NAMES+=("$1") STATUS+=("$2") NOTES+=("$3") SECS+=("${4:-0}"); }
# A signal stops the running step (its timeout passes SIGTERM on) and skips the rest.
INTERRUPTED=0 STEP_PID=
on_signal() {
    INTERRUPTED=1
    [ -z "$STEP_PID" ] || kill -TERM "$STEP_PID" 2> /dev/null
}
trap on_signal TERM INT
# run_step NAME LIMIT FUNCTION: runs FUNCTION under `timeout` (its output
# shown and kept in $WORK/NAME.out); status ok, FAIL, skip (exit 77) or TIMEOUT.
# The limit is cut to what is left of the budget, less the kill grace.
run_step() {
    local name=$1 limit=$2 fn=$3 left start rc status note last
    left=$((BUDGET - ($(date +%s) - T0) - KILL_GRACE))
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    if [ $INTERRUPTED = 1 ]; then
        echo "== $name: skipped, interrupted"
        record "$name" skip "interrupted"
        return
    fi
    echo "== $name (limit ${limit}s)"
    if [ "$limit" -lt 15 ]; then
        record "$name" skip "no time left in the ${BUDGET}s budget"
        return
    fi
    start=$(date +%s)
    # In the background so that `wait` returns at once on a signal.
    timeout -k "$KILL_GRACE" "$limit" bash -c "$fn" > "$WORK/$name.out" 2>&1 &
    STEP_PID=$!
    wait "$STEP_PID"
    rc=$?
    while kill -0 "$STEP_PID" 2> /dev/null; do  # wait was cut short by a signal
        wait "$STEP_PID"
        rc=$?
    done
    STEP_PID=
    cat "$WORK/$name.out"
    case $rc in
        0) status=ok ;;
        77) status=skip ;;
        124|137) status=TIMEOUT ;;
        *) status=FAIL ;;
    esac
    [ $INTERRUPTED = 0 ] || [ $rc = 0 ] || status=FAIL
    note=$(note_"$name" 2> /dev/null)
    if [ "$status" = FAIL ] || [ "$status" = TIMEOUT ]; then
        # The step's own last words say why (not compute-sanitizer's banner
        # lines); keep them next to any numbers.
        last=$(grep -Ev '^[[:space:]]*$|^=========' "$WORK/$name.out" | tail -n 1 | cut -c1-70)
        case $note in *"$last"*) last= ;; esac
        [ $INTERRUPTED = 0 ] || last="interrupted${last:+; $last}"
        [ "$status" != TIMEOUT ] || last="timed out after ${limit}s${last:+; $last}"
        note="${note:+$note; }exit $rc${last:+: $last}"
    fi
    record "$name" "$status" "$note" $(($(date +%s) - start))
}
ok_of() { grep -Eo '[0-9]+ checks, [0-9]+ failed' "$WORK/$1.out" | awk '{c+=$1; f+=$3} END {if (NR) print c " checks, " f " failed"}'; }
export ROOT BUILD WORK CPU_ONLY
# The device the CUDA halves of the tests run on: a second CPU backend in --cpu-only.
DEV=cuda
[ $CPU_ONLY = 1 ] && DEV=cpu
export DEV

# ---- the steps ---------------------------------------------------------------
build() {
    local cuda=enabled
    [ "$CPU_ONLY" = 1 ] && cuda=auto
    for tool in meson ninja python3; do
        command -v $tool > /dev/null || { echo "build: $tool not found (make gpu-bundle/ with tests/gpu/make_bundle.sh)"; return 1; }
    done
    local reconf=()
    [ -f "$BUILD/build.ninja" ] && reconf=(--reconfigure)
    meson setup "${reconf[@]}" "$BUILD" -Dcuda=$cuda -Dbuildtype=release || { echo "build: meson setup failed"; return 1; }
    # The whole compiler output only on failure, where it says why.
    if ninja -C "$BUILD" -j "$(nproc)" > "$WORK/ninja.log" 2>&1; then
        tail -n 3 "$WORK/ninja.log"
    else
        grep -E -A 12 'error|FAILED' "$WORK/ninja.log" | head -n 80
        tail -n 3 "$WORK/ninja.log"
        return 1
    fi
}
note_build() {
    if grep -q 'build: meson setup failed' "$WORK/build.out"; then echo "meson setup failed"
    elif grep -q 'ninja: build stopped' "$WORK/build.out"; then echo "compile error"
    elif [ -x "$BUILD/tests/test_cuda_ops" ]; then echo "CUDA backend built$(grep -q 'nccl' "$BUILD/build.ninja" && echo ', NCCL')$(grep -q 'cuda_attention_cudnn' "$BUILD/build.ninja" && echo ', cuDNN attention')"
    elif [ -x "$BUILD/essence" ]; then echo "CPU only$(grep -Eo 'CUDA backend off: .*' "$WORK/build.out" | head -n 1 | sed 's/^/: /')"; fi
}

ops() { CUDA_LAUNCH_BLOCKING=1 "$BUILD/tests/test_cuda_ops" "$DEV"; }
note_ops() { ok_of ops; }

attn_tc() { "$BUILD/perf/bench_attention_cuda"; }
note_attn_tc() { awk '($1 == "simple" || $1 == "tc" || $1 == "cudnn") && NF == 5 {printf "%s%s fwd %s bwd %s TF/s", s, $1, $3, $5; s = "; "}' "$WORK/attn_tc.out"; }

model() { CUDA_LAUNCH_BLOCKING=1 "$BUILD/tests/test_cuda_model" "$DEV"; }
note_model() {
    local checks worst
    checks=$(ok_of model)
    worst=$(awk '/grads,/ {print $(NF-1)}' "$WORK/model.out" | sort -g | tail -n 1)
    [ -z "$checks" ] || echo "$checks${worst:+; worst grad $worst}"
}

# The synthetic corpus for the curve and bench steps (data/gpu, made once).
corpus() {
    [ -f data/gpu/train.bin ] && [ -f data/gpu/val.bin ] && return 0
    python3 tools/synth_corpus.py --out data/gpu --seed 5 --train 200 --val 16 --test 8 &&
        python3 tools/train_tokenizer.py --out data/gpu/model data/gpu/train.jsonl &&
        python3 tools/prep_data.py --model data/gpu/model --max-len 1024 --out data/gpu/train.bin data/gpu/train.jsonl &&
        python3 tools/prep_data.py --model data/gpu/model --max-len 1024 --out data/gpu/val.bin data/gpu/val.jsonl
}
curve() {
    corpus > "$WORK/corpus.log" 2>&1 || { tail -n 5 "$WORK/corpus.log"; return 1; }
    local devs=cpu d
    [ "$CPU_ONLY" = 1 ] || devs="cpu cuda"
    local runs=()
    for d in $devs; do
        "$BUILD/essence" train --config tests/gpu/train-tiny.json --fresh --set "run.device=$d" \
            --set "run.out=runs/gpu/curve-$d" > "$WORK/train-$d.log" 2>&1 ||
            { tail -n 5 "$WORK/train-$d.log"; echo "essence train on $d failed"; return 1; }
        runs+=("runs/gpu/curve-$d")
    done
    python3 tests/gpu/compare_curves.py "${runs[@]}"
}
note_curve() { grep -Eo 'loss [0-9.]+ -> [0-9.]+, max rel diff [0-9.e+-]+' "$WORK/curve.out"; }

# The student the curve step trained on $DEV, loaded in transformers: same greedy tokens.
hfgen() {
    python3 tests/gpu/hf_generate.py --essence "$BUILD/essence" --model "runs/gpu/curve-$DEV/final" \
        --shard data/gpu/val.bin --device "$DEV"
}
note_hfgen() { grep -Eo '^[0-9]+ of [0-9]+ continuations identical|largest gap [0-9.]+|skipped.*' "$WORK/hfgen.out" | paste -sd';' -; }

memcheck() {
    [ "$CPU_ONLY" = 1 ] && { echo "memcheck: needs a GPU"; return 77; }
    local cs nvcc
    cs=$(command -v compute-sanitizer)
    nvcc=$(command -v nvcc)
    [ -n "$cs" ] || [ -z "$nvcc" ] || cs=$(dirname "$nvcc")/compute-sanitizer
    if [ -z "$cs" ] || [ ! -x "$cs" ]; then echo "memcheck: compute-sanitizer not found, skipped"; return 77; fi
    "$cs" --tool memcheck --error-exitcode 99 --leak-check no "$BUILD/tests/test_cuda_ops" | tail -n 25
    return "${PIPESTATUS[0]}"
}
note_memcheck() { grep -Eo 'ERROR SUMMARY: [0-9]+ errors?|compute-sanitizer not found|needs a GPU' "$WORK/memcheck.out" | tail -n 1; }

fixtures() { CUDA_LAUNCH_BLOCKING=1 "$BUILD/tests/test_cuda_fixtures" "$DEV" "$WORK/logits"; }
note_fixtures() { ok_of fixtures; }

torch() {
    if [ "$CPU_ONLY" = 1 ]; then
        python3 tests/gpu/torch_parity.py --dump "$WORK/logits" --device cpu --dtype float32
    else
        python3 tests/gpu/torch_parity.py --dump "$WORK/logits" --device cuda --dtype bfloat16
    fi
}
note_torch() { grep -Eo '[0-9]+ of [0-9]+ cases ok|skipped.*' "$WORK/torch.out" | tail -n 1; }

# bench_one LABEL MODEL: both engines on one shape; essence's numbers alone
# when transformers cannot run here.
bench_one() {
    local label=$1 model=$2 hf_args=(--tokens 8192) es_args=() hf_files=() packing rc t hf_failed=0
    if [ "$CPU_ONLY" = 1 ]; then
        hf_args=(--tokens 1024 --tiny --device cpu --steps 2 --warmup 1)
        es_args=(--set student.preset=configs/models/qwen3-student-tiny.json --set run.device=cpu
                 --set batch.capacity=1024 --set batch.step_tokens=1024 --steps 2)
    fi
    t=$SECONDS
    "$BUILD/essence" bench --config "perf/gpu/$model.json" --json "${es_args[@]}" > "$WORK/es-$label.json" ||
        { echo "essence bench $label failed"; return 1; }
    echo "bench $label: essence $((SECONDS - t)) s"
    # transformers two ways: its own packing (varlen with flash-attn, else one
    # document at a time), and one sequence under a block-diagonal mask.
    for packing in auto mask; do
        t=$SECONDS
        python3 tools/bench_hf.py --config "configs/models/$model.json" --shard data/gpu/train.bin \
            "${hf_args[@]}" --packing $packing > "$WORK/hf-$packing-$label.json"
        rc=$?
        echo "bench $label: transformers --packing $packing $((SECONDS - t)) s, exit $rc"
        case $rc in
            0) hf_files+=("$WORK/hf-$packing-$label.json") ;;
            77) rm -f "$WORK/hf-$packing-$label.json" ;;
            *) echo "bench_hf $label --packing $packing: exit $rc"; hf_failed=1 ;;
        esac
    done
    python3 tests/gpu/bench_summary.py "$label" "$WORK/es-$label.json" "${hf_files[@]}" || return 1
    python3 perf/cost_model.py --compare "$WORK/es-$label.json"
    # Every other attention path the build has (essence version names them,
    # the default first).
    local path paths
    paths=$("$BUILD/essence" version | sed -n 's/^cuda attention paths: \([a-z ]*\) (.*/\1/p')
    [ "$CPU_ONLY" = 1 ] && paths=
    for path in $paths; do
        [ "$path" = "${paths%% *}" ] && continue  # the default, run above
        t=$SECONDS
        ESSENCE_ATTN=$path "$BUILD/essence" bench --config "perf/gpu/$model.json" --json "${es_args[@]}" \
            > "$WORK/es-$path-$label.json" || { echo "essence bench $label (ESSENCE_ATTN=$path) failed"; return 1; }
        echo "bench $label: essence $path attention $((SECONDS - t)) s"
        python3 tests/gpu/bench_summary.py "$label-$path" "$WORK/es-$path-$label.json"
        python3 perf/cost_model.py --compare "$WORK/es-$path-$label.json"
    done
    return $hf_failed
}
bench() {
    corpus > "$WORK/corpus.log" 2>&1 || { tail -n 5 "$WORK/corpus.log"; return 1; }
    if [ "$CPU_ONLY" = 1 ]; then
        bench_one tiny qwen3-0.6b
    else
        # The second shape runs even when the first fails.
        local rc=0
        bench_one 0.6B qwen3-0.6b || rc=1
        bench_one 1.7B qwen3-1.7b || rc=1
        return $rc
    fi
}
note_bench() { grep -E '^ratio|^essence bench .* failed|^bench_hf .*: exit' "$WORK/bench.out" | sed -e 's/^ratio //' -e 's/ (no transformers run)//' | paste -sd';' -; }

export -f build ops attn_tc model corpus curve hfgen memcheck fixtures torch bench_one bench

# ---- run ---------------------------------------------------------------------
if [ $CPU_ONLY = 1 ]; then
    note_bundle() { grep -Eo 'check_bundle: .*|no gpu-bundle.*' "$WORK/bundle.out" | tail -n 1; }
    run_step bundle 120 'if [ -f gpu-bundle/env.sh ]; then bash tests/gpu/check_bundle.sh; else echo "no gpu-bundle/ (tests/gpu/make_bundle.sh makes it)"; exit 77; fi'
fi
if [ $NO_BUILD = 1 ]; then
    echo
    echo "== build: skipped (--no-build), using $BUILD as it is"
    record build skip "--no-build: $BUILD as it is"
else
    run_step build 330 build
fi
BUILT=1
[ -x "$BUILD/essence" ] || BUILT=0
have() { [ $BUILT = 1 ] && [ -x "$BUILD/$1" ]; }
NOT_BUILT="not built (no CUDA build)"
[ $BUILT = 1 ] || NOT_BUILT="no essence build"
if have tests/test_cuda_ops; then
    run_step ops 90 ops
    run_step memcheck 90 memcheck
else
    record ops FAIL "$NOT_BUILT"
    record memcheck skip "no CUDA op test"
fi
if [ $CPU_ONLY = 1 ]; then record attn_tc skip "needs a GPU"
elif have perf/bench_attention_cuda; then run_step attn_tc 60 attn_tc
else record attn_tc FAIL "$NOT_BUILT"; fi
if have tests/test_cuda_model; then run_step model 90 model
else record model FAIL "$NOT_BUILT"; fi
if [ $BUILT = 1 ]; then run_step curve 120 curve
else record curve FAIL "no essence build"; fi
if [ $BUILT = 1 ]; then run_step hfgen 60 hfgen
else record hfgen FAIL "no essence build"; fi
if have tests/test_cuda_fixtures; then
    run_step fixtures 60 fixtures
    run_step torch 90 torch
else
    record fixtures FAIL "$NOT_BUILT"
    record torch skip "needs the fixtures step's logits"
fi
if [ $BUILT = 1 ]; then run_step bench 330 bench
else record bench FAIL "no essence build"; fi

# ---- summary -----------------------------------------------------------------
FAILED=0
for st in "${STATUS[@]}"; do
    case $st in FAIL|TIMEOUT) FAILED=$((FAILED + 1)) ;; esac
done
COMMIT='?'
if git rev-parse --git-dir > /dev/null 2>&1; then
    COMMIT=$(git rev-parse --short HEAD 2> /dev/null || echo '?')
    git diff --quiet HEAD 2> /dev/null || COMMIT="$COMMIT+changes"
fi
{
    echo
    echo "== summary: $CARD, $(date -u '+%Y-%m-%d %H:%M UTC'), $(($(date +%s) - T0)) s, $COMMIT"
    printf '%-9s %-7s %5s  %s\n' step status s "key numbers"
    for i in "${!NAMES[@]}"; do
        printf '%-9s %-7s %5s  %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
    done
    echo "$FAILED step(s) failed$([ $INTERRUPTED = 0 ] || echo ', interrupted'); log: $LOG"
} > "$WORK/summary.txt"
cat "$WORK/summary.txt"
# The log is whole once tee has seen the end of its input.
exec 1>&3 2>&4 3>&- 4>&-
wait "$TEE_PID" 2> /dev/null
if [ -n "$OUTDIR" ]; then
    cp "$WORK/summary.txt" "$OUTDIR/summary-$STAMP-$CARD_TAG.txt" ||
        echo "run.sh: could not copy the summary to $OUTDIR" >&2
    # One file for all bench JSON lines: few files come back from a device call.
    for f in "$WORK"/*.json; do
        [ -e "$f" ] && { echo "== ${f##*/}"; cat "$f"; }
    done > "$OUTDIR/bench-$STAMP-$CARD_TAG.jsonl.txt"
fi
rm -rf "$WORK"
[ $FAILED = 0 ] && [ $INTERRUPTED = 0 ]
