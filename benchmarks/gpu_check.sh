#!/usr/bin/env bash
# The pending GPU checks of the training, tuning and batch issues, as one prepared device run.
#
#   bash ../shared/tools/gpu-wheels.sh                  # here, once: Ray + Optuna wheels in .whl/
#   device run (carry .whl), from the repo root:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_check.sh train
#
# Parts (run one per call to stay inside the device budget): train | tune | batch | all.
# QUICK=1 shrinks everything to a CPU smoke run of the same commands. Results: $OUT/*.txt
# (copied to $OUT so the device tool brings them back).
set -euo pipefail
part=${1:-all}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=${PYTHONPATH:-$PWD}
py=${PYTHON:-python3}
if [ "${QUICK:-0}" = 1 ]; then
  size=32; ngf=8; epochs=2; big=4; trials=2; prec=no; bs=8,16; steps=2; sk=12
else
  size=256; ngf=64; epochs=50; big=200; trials=16; prec=bf16; bs=8,16,64; steps=50; sk=200
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>/dev/null || echo "no GPU" > "$OUT/gpu.txt"

if [ "$part" = train ] || [ "$part" = all ]; then
  $py benchmarks/train_step.py --image-size $size --ngf $ngf --batch-sizes $bs --steps $steps | tee "$OUT/train_step.txt"
  $py -m colorjob.synth --out "$OUT/d10" --sketches 10 --size $size
  /usr/bin/time -f "%e s wall" $py -m colorjob.train --config configs/train.yaml --data "$OUT/d10" --out "$OUT/a" \
    --image-size $size --epochs $epochs --mixed-precision $prec --set ngf=$ngf --set ndf=$ngf \
    --set split=pair --set checkpoint_every=$epochs 2>&1 | tail -4 | tee "$OUT/train_a.txt"
  $py -m colorjob.synth --out "$OUT/d200" --sketches $big --size $size
  /usr/bin/time -f "%e s wall" $py -m colorjob.train --config configs/train.yaml --data "$OUT/d200" --out "$OUT/b" \
    --image-size $size --epochs $((epochs / 2)) --batch-size 16 --mixed-precision $prec --set ngf=$ngf \
    --set ndf=$ngf --set checkpoint_every=$epochs 2>&1 | tail -4 | tee "$OUT/train_b.txt"
  cp "$OUT"/a/metrics.csv "$OUT/train_a_metrics.csv"; cp "$OUT"/b/metrics.csv "$OUT/train_b_metrics.csv"
fi

if [ "$part" = tune ] || [ "$part" = all ]; then
  [ -d "$OUT/d10" ] || $py -m colorjob.synth --out "$OUT/d10" --sketches 10 --size $size
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$OUT/gpu_util.txt" 2>/dev/null &
  smi=$!
  /usr/bin/time -f "%e s wall" $py jobs/tune.py --config configs/tune.yaml --data "$OUT/d10" --storage-path "$OUT/tune" \
    --num-samples $trials --epochs $epochs --image-size $size --set train.ngf=$ngf --set train.ndf=$ngf \
    --set train.mixed_precision=$prec --set train.checkpoint_every=$epochs --set max_concurrent_trials=4 \
    --set resources.gpu=$([ "${QUICK:-0}" = 1 ] && echo 0 || echo 0.25) --set resources.cpu=2 2>&1 | tail -25 | tee "$OUT/tune.txt"
  kill $smi 2>/dev/null || true
  awk '{n++; if ($1 > 5) busy++} END {if (n) printf "GPU busy (>5%% util) %.0f%% of %d samples\n", 100*busy/n, n}' \
    "$OUT/gpu_util.txt" | tee -a "$OUT/tune.txt"
fi

if [ "$part" = batch ] || [ "$part" = all ]; then
  $py benchmarks/batch_throughput.py --sketches $sk --image-size $size --ngf $ngf --batch-size 256 | tail -6 | tee "$OUT/batch.txt"
fi
ls -la "$OUT"
