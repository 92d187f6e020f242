#!/usr/bin/env bash
# The GPU checks of the training, tuning, batch and scale issues, as prepared device runs.
#
#   bash ../shared/tools/gpu-wheels.sh                  # here, once: Ray + Optuna wheels in .whl/
#   device run (carry .whl), from the repo root:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_check.sh train
#
# Parts (run one per call to stay inside the device budget): train | tune | batch | scale | all.
# QUICK=1 shrinks everything to a CPU smoke run of the same commands. Results: $OUT/*.txt
# (copied to $OUT so the device tool brings them back).
set -euo pipefail
part=${1:-all}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=${PYTHONPATH:-$PWD}
py=${PYTHON:-python3}
if [ "${QUICK:-0}" = 1 ]; then
  size=32; ngf=8; epochs=2; big=4; trials=2; prec=no; bs=8,16; steps=2; sk=2; gpu_share=0
else
  size=256; ngf=64; epochs=50; big=200; trials=16; prec=bf16; bs=8,16,64; steps=50; sk=120; gpu_share=0.25
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>/dev/null || echo "no GPU" > "$OUT/gpu.txt"

busy() {  # GPU busy share while "$@" runs: nvidia-smi samples every 0.5 s
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$OUT/util.txt" 2>/dev/null &
  local smi=$!
  "$@"
  kill $smi 2>/dev/null || true
  awk '{n++; if ($1 > 5) b++; s+=$1} END {if (n) printf "GPU busy (>5%% util) %.0f%% of %d samples, mean util %.0f%%\n", 100*b/n, n, s/n}' "$OUT/util.txt"
}

if [ "$part" = train ] || [ "$part" = all ]; then
  $py benchmarks/train_step.py --image-size $size --ngf $ngf --batch-sizes $bs --steps $steps | tee "$OUT/train_step.txt"
  $py -m colorjob.synth --out "$OUT/d10" --sketches 10 --size $size
  for cond in concat film; do  # the seed's conditioning, and the condition-aware generator
    /usr/bin/time -f "%e s wall" $py -m colorjob.train --config configs/train.yaml --data "$OUT/d10" --out "$OUT/a-$cond" \
      --image-size $size --epochs $epochs --mixed-precision $prec --set ngf=$ngf --set ndf=$ngf --set conditioning=$cond \
      --set split=pair --set checkpoint_every=$epochs --set sample_every=$epochs 2>&1 | tail -4 | tee "$OUT/train_a_$cond.txt"
    cp "$OUT/a-$cond/metrics.csv" "$OUT/train_a_${cond}_metrics.csv"
  done
  $py -m colorjob.synth --out "$OUT/d200" --sketches $big --size $size
  /usr/bin/time -f "%e s wall" $py -m colorjob.train --config configs/train.yaml --data "$OUT/d200" --out "$OUT/b" \
    --image-size $size --epochs $((epochs / 2)) --batch-size 16 --mixed-precision $prec --set ngf=$ngf \
    --set ndf=$ngf --set conditioning=film --set checkpoint_every=$epochs --set sample_every=$epochs 2>&1 | tail -4 | tee "$OUT/train_b.txt"
  cp "$OUT"/b/metrics.csv "$OUT/train_b_metrics.csv"
fi

if [ "$part" = tune ] || [ "$part" = all ]; then
  [ -d "$OUT/d10" ] || $py -m colorjob.synth --out "$OUT/d10" --sketches 10 --size $size
  busy /usr/bin/time -f "%e s wall" $py jobs/tune.py --config configs/tune.yaml --data "$OUT/d10" --storage-path "$OUT/tune" \
    --num-samples $trials --epochs $epochs --image-size $size --set train.ngf=$ngf --set train.ndf=$ngf \
    --set train.mixed_precision=$prec --set train.checkpoint_every=$epochs --set max_concurrent_trials=4 \
    --set resources.gpu=$gpu_share --set resources.cpu=2 2>&1 | tail -25 | tee "$OUT/tune.txt"
fi

if [ "$part" = batch ] || [ "$part" = all ]; then
  # colorjob batch (in process; and on Ray Data's split plan), the good plain loop, the naive
  # loop, the model alone and PNG encoding on every core, for the seed-size generator in bf16.
  busy $py benchmarks/batch_throughput.py --images $((sk * 25)) --models seed,default 2>&1 | tail -30 | tee "$OUT/batch.txt"
fi

if [ "$part" = scale ] || [ "$part" = all ]; then
  # Streamed vs in-memory training at 256 px in bf16 (goal: streaming keeps the GPU >= 90 % busy
  # at batch 16), with the GPU busy share of each.
  $py -m colorjob.synth --out "$OUT/d40" --sketches 40 --size $size
  for mode in memory stream; do
    busy $py -m colorjob.train --data "$OUT/d40" --out "$OUT/scale-$mode" --image-size $size --epochs 3 --batch-size 16 \
      --mixed-precision $prec --set ngf=$ngf --set ndf=$ngf --set data_mode=$mode --set loader_workers=8 --set checkpoint_every=3 \
      --set eval_every=3 --set sample_every=3 2>&1 | tail -3 | tee "$OUT/scale_$mode.txt"
  done
fi
ls -la "$OUT"
