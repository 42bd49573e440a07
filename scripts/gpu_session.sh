#!/usr/bin/env bash
# One short session on a GPU machine, in one command (training/README.md, "On a GPU"):
#   1. the GPU timing table (benchmarks/gpu.py: both presets, CPU vs CUDA fp32/TF32/bf16);
#   2. a masked-net and a first-net segment of each contrast in CONTRASTS, all at once on the
#      GPU, from the bundled models, for BUDGET seconds (steps sized from a short probe so that
#      the cosine schedule ends in time; SIGTERM at the limit saves the checkpoints);
#   3. checkpoints and logs copied to OUT, to be calibrated and evaluated on the CPU.
# Healthy training data is made on the machine (training.prepare; seconds on 16 cores).
# Variables: OUT (default gpu_out), BUDGET (180 s), CONTRASTS ("t1 t1ce"), SEED (21),
# LR (0.0003), DEV (cuda), LOCAL=1 (a dry run on a CPU: no install, no data step, no timings).
set -u
OUT=${OUT:-gpu_out}; BUDGET=${BUDGET:-180}; CONTRASTS=${CONTRASTS:-t1 t1ce}
SEED=${SEED:-21}; LR=${LR:-0.0003}; DEV=${DEV:-cuda}; LOCAL=${LOCAL:-0}
mkdir -p "$OUT"
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
if [ "$LOCAL" != 1 ] && [ -d .whl ]; then  # packages the machine lacks, carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src:. PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
el "prepare"
mkdir -p data runs
for m in $CONTRASTS; do
  [ "$LOCAL" = 1 ] && continue
  python3 -m training.prepare synth --modality "$m" --split train --n 60 \
    -o "data/${m}_train.npz" > "$OUT/prep_$m.log" 2>&1 &
  python3 -m training.prepare synth --modality "$m" --split val --n 8 \
    -o "data/${m}_val.npz" > "$OUT/prepv_$m.log" 2>&1 &
done
wait
el "benchmark"
[ "$LOCAL" = 1 ] || timeout 200 python3 benchmarks/gpu.py --repeats 2 --cpu-repeats 1 \
  --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.md"
first=${CONTRASTS%% *}
timeout 60 python3 -m training.train --train "data/${first}_train.npz" --net masked \
  --init-from "src/napari_itermask/models/bundled/$first" --steps "${PROBE:-60}" --lr "$LR" \
  --precision bf16 --threads 4 --seed 99 --out /tmp/gpu_probe --save-every 1000 \
  --device "$DEV" > "$OUT/probe.log" 2>&1
SPS=$(python3 -c "import csv; r=list(csv.reader(open('/tmp/gpu_probe/masked_log.csv')))[1:]; print(float(r[-1][4])/len(r))" 2>/dev/null || echo 0.05)
# several trainers share the GPU and the CPU's batch making: assume each runs 1.6x slower
N=$(python3 -c "print(max(${MINSTEPS:-200}, int($BUDGET / (1.6 * $SPS))))")
el "probe: $SPS s per step alone; $N steps per network"
run() {  # contrast net
  timeout -s TERM -k 40 $((BUDGET + 80)) python3 -m training.train \
    --train "data/$1_train.npz" --val "data/$1_val.npz" --net "$2" \
    --init-from "src/napari_itermask/models/bundled/$1" --steps "$N" --lr "$LR" \
    --precision bf16 --threads 4 --seed "$SEED" --out "runs/$1_gpu" --resume \
    --val-every 1000 --save-every 30 --device "$DEV" > "runs/$1_gpu_$2.log" 2>&1
}
for m in $CONTRASTS; do
  mkdir -p "runs/${m}_gpu"
  run "$m" first & run "$m" masked &
done
wait
el "trained"
for m in $CONTRASTS; do for n in first masked; do
  cp "runs/${m}_gpu/$n.ckpt" "$OUT/${m}_$n.ckpt"
done; done
tar czf "$OUT/train_logs.tar.gz" runs/*_gpu/*.csv runs/*_gpu_*.log "$OUT"/prep*.log \
  "$OUT/probe.log" 2>/dev/null
rm -f "$OUT"/prep*.log "$OUT/probe.log"
ls -la "$OUT"
el "end"
