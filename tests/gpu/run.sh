#!/usr/bin/env bash
# One-shot check of the CUDA backend on a machine with an NVIDIA H100/H200, in
# under about 8 minutes, downloading nothing (tests/gpu/README.md):
#   build    gpu-bundle/ (when present) on the paths, meson -Dcuda=enabled
#   ops      every CUDA op against the CPU backend (test_cuda_ops), attention
#            with the default and the ESSENCE_ATTN=tc kernels
#   attn_tc  both attention kernels timed and compared (bench_attention_cuda)
#   model    qwen3 + gpt2 forward, loss and every gradient, CUDA vs CPU
#   curve    20 training steps on CUDA and on the CPU, loss curves compared
#   memcheck compute-sanitizer on the op test (skipped when absent)
#   fixtures transformers fixtures through the CUDA backend; torch bf16 forward
#   bench    essence bench vs tools/bench_hf.py, Qwen3-0.6B and 1.7B shapes
# then a summary table, printed last. A failed step is recorded and the next
# one runs. The whole output goes to perf/gpu/results/run-<date>-<card>.log,
# copied with the table to the output folder (--out DIR, or $OUT when set).
#
# Usage: tests/gpu/run.sh [--cpu-only] [--out DIR] [build-dir]
#   --cpu-only  everything that needs no GPU: the bundle check, the CPU build,
#               the CPU halves of model/curve/fixtures and a tiny bench_hf run
# Exit status: 0 when no step failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CPU_ONLY=0
OUTDIR=${OUT:-}
BUILD=
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-only) CPU_ONLY=1 ;;
        --out) OUTDIR=${2:?--out needs a folder}; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
        *) BUILD=$1 ;;
    esac
    shift
done
[ -n "$BUILD" ] || BUILD=$([ $CPU_ONLY = 1 ] && echo build-gpucheck-cpu || echo build-gpu)
BUDGET=${ESSENCE_GPU_BUDGET:-470}  # seconds for all steps; the device call allows 600
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

if [ $CPU_ONLY = 1 ]; then
    CARD=cpu
else
    CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    CARD=${CARD:-no-gpu}
fi
STAMP=$(date -u +%Y%m%d-%H%M%S)
CARD_TAG=$(echo "$CARD" | tr -c 'A-Za-z0-9._\n-' '_' | sed 's/_*$//')
mkdir -p perf/gpu/results
LOG=perf/gpu/results/run-$STAMP-$CARD_TAG.log
WORK=$(mktemp -d /tmp/essence-gpu.XXXXXX)
exec 3>&1 4>&2 > >(tee "$LOG") 2>&1
TEE_PID=$!

echo "== essence GPU check $(date -u '+%Y-%m-%d %H:%M:%S UTC'), card: $CARD, build: $BUILD, bundle: $BUNDLE"
[ $CPU_ONLY = 1 ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
command -v nvcc > /dev/null && nvcc --version | tail -n 1

# ---- step bookkeeping --------------------------------------------------------
NAMES=() STATUS=() NOTES=() SECS=()
NOTE=
# run_step NAME LIMIT FUNCTION: runs FUNCTION under `timeout` (its output
# shown and kept in $WORK/NAME.out); status ok, FAIL, skip (exit 77) or TIMEOUT.
run_step() {
    local name=$1 limit=$2 fn=$3 left start rc status
    left=$((BUDGET - ($(date +%s) - T0)))
    [ "$limit" -gt "$left" ] && limit=$left
    NOTE=
    echo
    echo "== $name (limit ${limit}s)"
    if [ "$limit" -lt 15 ]; then
        NAMES+=("$name") STATUS+=(skip) NOTES+=("no time left in the ${BUDGET}s budget") SECS+=(0)
        return
    fi
    start=$(date +%s)
    timeout -k 10 "$limit" bash -c "$fn" > "$WORK/$name.out" 2>&1
    rc=$?
    cat "$WORK/$name.out"
    case $rc in
        0) status=ok ;;
        77) status=skip ;;
        124|137) status=TIMEOUT ;;
        *) status=FAIL ;;
    esac
    [ -n "$NOTE" ] || NOTE=$(note_"$name" 2>/dev/null)
    [ $rc = 0 ] || [ -n "$NOTE" ] || NOTE="exit $rc: $(grep -v '^\s*$' "$WORK/$name.out" | tail -n 1 | cut -c1-60)"
    NAMES+=("$name") STATUS+=("$status") NOTES+=("$NOTE") SECS+=($(($(date +%s) - start)))
}
ok_of() { grep -Eo '[0-9]+ checks, [0-9]+ failed' "$WORK/$1.out" | awk '{c+=$1; f+=$3} END {if (NR) print c " checks, " f " failed"}'; }
export ROOT BUILD WORK CPU_ONLY

# ---- the steps ---------------------------------------------------------------
build() {
    local cuda=enabled
    [ "$CPU_ONLY" = 1 ] && cuda=auto
    for tool in meson ninja python3; do
        command -v $tool > /dev/null || { echo "build: $tool not found (make gpu-bundle/ with tests/gpu/make_bundle.sh)"; return 1; }
    done
    if [ -f "$BUILD/build.ninja" ]; then
        meson setup --reconfigure "$BUILD" -Dcuda=$cuda -Dbuildtype=release || return 1
    else
        meson setup "$BUILD" -Dcuda=$cuda -Dbuildtype=release || return 1
    fi
    ninja -C "$BUILD" -j "$(nproc)" | tail -n 3
    return "${PIPESTATUS[0]}"
}
note_build() {
    if grep -q 'ninja: build stopped' "$WORK/build.out"; then echo "compile error"
    elif [ -x "$BUILD/tests/test_cuda_ops" ]; then echo "CUDA backend built$(grep -q 'nccl' "$BUILD/build.ninja" && echo ', NCCL')"
    else echo "CPU only$(grep -Eo 'CUDA backend off: .*' "$WORK/build.out" | head -n 1 | sed 's/^/: /')"; fi
}

ops() { "$BUILD/tests/test_cuda_ops"; }
note_ops() { ok_of ops; }

attn_tc() { "$BUILD/perf/bench_attention_cuda"; }
note_attn_tc() { awk '($1 == "default" || $1 == "tc") && NF == 5 {printf "%s%s fwd %s bwd %s TF/s", s, $1, $3, $5; s = "; "}' "$WORK/attn_tc.out"; }

model() {
    local dev=cuda
    [ "$CPU_ONLY" = 1 ] && dev=cpu
    "$BUILD/tests/test_cuda_model" $dev
}
note_model() { echo "$(ok_of model); worst grad $(awk '/grads,/ {print $(NF-1)}' "$WORK/model.out" | sort -g | tail -n 1)"; }

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
    for d in $devs; do
        "$BUILD/essence" train --config tests/gpu/train-tiny.json --fresh --set run.device=$d \
            --set run.out=runs/gpu/curve-$d > "$WORK/train-$d.log" 2>&1 ||
            { tail -n 5 "$WORK/train-$d.log"; echo "essence train on $d failed"; return 1; }
    done
    # shellcheck disable=SC2046
    python3 tests/gpu/compare_curves.py $(for d in $devs; do echo runs/gpu/curve-$d; done)
}
note_curve() { grep -Eo 'loss [0-9.]+ -> [0-9.]+, max rel diff [0-9.e+-]+' "$WORK/curve.out"; }

memcheck() {
    [ "$CPU_ONLY" = 1 ] && { echo "memcheck: needs a GPU"; return 77; }
    local cs
    cs=$(command -v compute-sanitizer || ls "$(dirname "$(command -v nvcc)")/compute-sanitizer" 2>/dev/null)
    [ -x "$cs" ] || { echo "memcheck: compute-sanitizer not found, skipped"; return 77; }
    "$cs" --tool memcheck --error-exitcode 99 --leak-check no "$BUILD/tests/test_cuda_ops" | tail -n 25
    return "${PIPESTATUS[0]}"
}
note_memcheck() { grep -Eo 'ERROR SUMMARY: [0-9]+ errors?|compute-sanitizer not found|needs a GPU' "$WORK/memcheck.out" | tail -n 1; }

fixtures() {
    local dev=cuda
    [ "$CPU_ONLY" = 1 ] && dev=cpu
    "$BUILD/tests/test_cuda_fixtures" $dev "$WORK/logits"
}
note_fixtures() { ok_of fixtures; }

torch() {
    if [ "$CPU_ONLY" = 1 ]; then
        python3 tests/gpu/torch_parity.py --dump "$WORK/logits" --device cpu --dtype float32
    else
        python3 tests/gpu/torch_parity.py --dump "$WORK/logits" --device cuda --dtype bfloat16
    fi
}
note_torch() { grep -Eo '[0-9]+ of [0-9]+ cases ok|skipped.*' "$WORK/torch.out" | tail -n 1; }

# bench_one LABEL MODEL [essence --set ...]: both engines on one shape.
bench_one() {
    local label=$1 model=$2 hf_args=(--tokens 8192) es_args=()
    shift 2
    if [ "$CPU_ONLY" = 1 ]; then
        hf_args=(--tokens 1024 --tiny --device cpu --steps 2 --warmup 1)
        es_args=(--set student.preset=configs/models/qwen3-student-tiny.json --set run.device=cpu
                 --set batch.capacity=1024 --set batch.step_tokens=1024 --steps 2)
    fi
    "$BUILD/essence" bench --config "perf/gpu/$model.json" --json "${es_args[@]}" > "$WORK/es-$label.json" ||
        { echo "essence bench $label failed"; return 1; }
    python3 tools/bench_hf.py --config "configs/models/$model.json" --shard data/gpu/train.bin "${hf_args[@]}" \
        > "$WORK/hf-$label.json"
    local rc=$?
    [ $rc = 0 ] || { echo "bench_hf $label: exit $rc"; return $rc; }
    python3 tests/gpu/bench_summary.py "$label" "$WORK/es-$label.json" "$WORK/hf-$label.json"
}
bench() {
    corpus > "$WORK/corpus.log" 2>&1 || { tail -n 5 "$WORK/corpus.log"; return 1; }
    if [ "$CPU_ONLY" = 1 ]; then
        bench_one tiny qwen3-0.6b
    else
        bench_one 0.6B qwen3-0.6b && bench_one 1.7B qwen3-1.7b
    fi
}
note_bench() { grep -E '^ratio' "$WORK/bench.out" | sed 's/^ratio //' | paste -sd';' -; }

export -f build ops attn_tc model corpus curve memcheck fixtures torch bench_one bench

# ---- run ---------------------------------------------------------------------
if [ $CPU_ONLY = 1 ]; then
    note_bundle() { grep -Eo 'check_bundle: .*|no gpu-bundle.*' "$WORK/bundle.out" | tail -n 1; }
    run_step bundle 120 'if [ -f gpu-bundle/env.sh ]; then bash tests/gpu/check_bundle.sh; else echo "no gpu-bundle/ (tests/gpu/make_bundle.sh makes it)"; exit 77; fi'
fi
run_step build 330 build
BUILT=1
[ -x "$BUILD/essence" ] || BUILT=0
have() { [ $BUILT = 1 ] && [ -x "$BUILD/tests/$1" ]; }
if [ $CPU_ONLY = 1 ]; then
    NAMES+=(ops) STATUS+=(skip) NOTES+=("needs a GPU") SECS+=(0)
elif have test_cuda_ops; then
    run_step ops 90 ops
else
    NAMES+=(ops) STATUS+=(FAIL) NOTES+=("not built (no CUDA build)") SECS+=(0)
fi
if [ $CPU_ONLY = 1 ]; then
    NAMES+=(attn_tc) STATUS+=(skip) NOTES+=("needs a GPU") SECS+=(0)
elif [ $BUILT = 1 ] && [ -x "$BUILD/perf/bench_attention_cuda" ]; then
    run_step attn_tc 60 attn_tc
else
    NAMES+=(attn_tc) STATUS+=(FAIL) NOTES+=("not built (no CUDA build)") SECS+=(0)
fi
if have test_cuda_model; then run_step model 90 model
else NAMES+=(model) STATUS+=(FAIL) NOTES+=("not built (no CUDA build)") SECS+=(0); fi
if [ $BUILT = 1 ]; then run_step curve 120 curve
else NAMES+=(curve) STATUS+=(FAIL) NOTES+=("no essence binary") SECS+=(0); fi
if have test_cuda_fixtures; then
    run_step fixtures 60 fixtures
    run_step torch 90 torch
else
    NAMES+=(fixtures) STATUS+=(FAIL) NOTES+=("not built (no CUDA build)") SECS+=(0)
fi
if [ $BUILT = 1 ]; then run_step bench 240 bench
else NAMES+=(bench) STATUS+=(FAIL) NOTES+=("no essence binary") SECS+=(0); fi
# Last: the slowest and least important, on what time is left.
if have test_cuda_ops; then run_step memcheck 120 memcheck
else NAMES+=(memcheck) STATUS+=(skip) NOTES+=("no CUDA op test") SECS+=(0); fi

# ---- summary -----------------------------------------------------------------
FAILED=0
{
    echo
    echo "== summary: $CARD, $(date -u '+%Y-%m-%d %H:%M UTC'), $(($(date +%s) - T0)) s, $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes')"
    printf '%-9s %-7s %5s  %s\n' step status s "key numbers"
    for i in "${!NAMES[@]}"; do
        printf '%-9s %-7s %5s  %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
        case ${STATUS[$i]} in FAIL|TIMEOUT) FAILED=$((FAILED + 1)) ;; esac
    done
    echo "$FAILED step(s) failed; log: $LOG"
} | tee "$WORK/summary.txt"
# The log is whole once tee has seen the end of its input.
exec 1>&3 2>&4 3>&- 4>&-
wait "$TEE_PID" 2>/dev/null
if [ -n "$OUTDIR" ]; then
    mkdir -p "$OUTDIR" && cp "$WORK/summary.txt" "$OUTDIR/summary-$STAMP-$CARD_TAG.txt" && cp "$LOG" "$OUTDIR/" &&
        cp "$WORK"/*.json "$OUTDIR/" 2>/dev/null
fi
rm -rf "$WORK"
[ $FAILED = 0 ]
