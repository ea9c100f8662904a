#!/usr/bin/env bash
# The main job, end to end on a fresh machine (about 10 minutes on 2 cores):
#   1. install and build;
#   2. make the synthetic reasoning corpus, its tokenizer and shards;
#   3. train a small teacher on the full traces;
#   4. distil a smaller student from it at r = 0.5 and at r = 1;
#   5. print what truncation saved and both students' validation loss.
# Everything lands in data/demo and runs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== 1/5 install and build"
bash tools/setup.sh
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null
ESSENCE=build/essence

echo "== 2/5 synthetic corpus, tokenizer, shards"
D=data/demo
python3 tools/synth_corpus.py --out "$D" --seed 0 --train "${DEMO_TRAIN:-800}" --val 64 --test 64
python3 tools/train_tokenizer.py --out "$D/model" "$D/train.jsonl"
python3 tools/prep_data.py --model "$D/model" --max-len 2048 --out "$D/train.bin" "$D/train.jsonl" | tail -n 1
python3 tools/prep_data.py --model "$D/model" --max-len 2048 --out "$D/val.bin" "$D/val.jsonl" | tail -n 1
$ESSENCE data stats --config configs/runs/demo-student.json

echo "== 3/5 teacher on full traces"
$ESSENCE train --config configs/runs/demo-teacher.json --fresh

for r in 0.5 1.0; do
    echo "== 4/5 student distilled at r = $r"
    $ESSENCE train --config configs/runs/demo-student.json --fresh \
        --set trunc.lsp=$r --set run.out=runs/demo/student-r$r
done

echo "== 5/5 what truncation saved"
python3 tools/compare_runs.py runs/demo/student-r1.0 runs/demo/student-r0.5
python3 tools/plot_metrics.py --out runs/demo/curves.png runs/demo/teacher runs/demo/student-r1.0 runs/demo/student-r0.5
