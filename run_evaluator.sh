#!/usr/bin/env bash
# The published evaluation: 50,000 samples of Checkerboard-L-2x (cfg 1.5 from step 5, 4 steps per scale) scored by
# evaluator.py (IS, FID, sFID, precision, recall) against ADM's ImageNet 256x256 reference batch.
# Every setting below can be overridden from the environment, e.g.
#   NUM_SAMPLES=10000 BACKEND=torch bash run_evaluator.sh
# Sampling uses all visible GPUs through torchrun (one process on a CPU-only machine). An existing sample file
# is reused, so a failed evaluation can be rerun without sampling again.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python}
CHECKPOINT=${CHECKPOINT:-pretrained_models/checkerboard-L-2x/checkpoint-last.pth}
CFG=${CFG:-1.5}
CFG_START_STEP=${CFG_START_STEP:-5}
STEPS_PER_SCALE=${STEPS_PER_SCALE:-4}
NUM_SAMPLES=${NUM_SAMPLES:-50000}
BATCH_SIZE=${BATCH_SIZE:-64}  # per process
SEED=${SEED:-0}
REF_BATCH=${REF_BATCH:-VIRTUAL_imagenet256_labeled.npz}
BACKEND=${BACKEND:-auto}  # tf (as published, needs requirements-eval.txt), torch, or auto
INCEPTION_GRAPH=${INCEPTION_GRAPH:-}  # classify_image_graph_def.pb for offline machines (tf backend)
INCEPTION_WEIGHTS=${INCEPTION_WEIGHTS:-}  # torch-fidelity Inception weights for offline machines (torch backend)
OUT_DIR=${OUT_DIR:-eval}
MODEL=$(basename "$(dirname "$CHECKPOINT")")
TAG=${TAG:-${MODEL}_cfg${CFG}_start${CFG_START_STEP}_steps${STEPS_PER_SCALE}_n${NUM_SAMPLES}_seed${SEED}}
SAMPLES=${SAMPLES:-$OUT_DIR/${TAG}_samples.npz}
RESULTS=${RESULTS:-$OUT_DIR/${TAG}_eval.json}
NPROC=${NPROC:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')}  # GPUs; 0 = CPU

REF_URL=https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz

if [[ ! -f $CHECKPOINT ]]; then
  echo "error: checkpoint not found: $CHECKPOINT; download the published models with:" \
       "bash pretrained_models/download.sh autoenc checkerboard-L-2x" >&2
  exit 2
fi
if [[ ! -f $REF_BATCH ]]; then
  echo "error: reference batch not found: $REF_BATCH; download it with: wget $REF_URL -O $REF_BATCH" >&2
  exit 2
fi

eval_flags=(--backend "$BACKEND")
[[ -z $INCEPTION_GRAPH ]] || eval_flags+=(--inception_graph "$INCEPTION_GRAPH")
[[ -z $INCEPTION_WEIGHTS ]] || eval_flags+=(--inception_weights "$INCEPTION_WEIGHTS")

# Before hours of sampling: fetch (or fail on) the Inception network and cache the reference statistics.
"$PYTHON" evaluator.py "$REF_BATCH" "${eval_flags[@]}"

mkdir -p "$(dirname "$SAMPLES")" "$(dirname "$RESULTS")"
if [[ -f $SAMPLES ]]; then
  echo "reusing samples in $SAMPLES (delete it to sample again)"
else
  if [[ $NPROC -gt 0 ]]; then
    launcher=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC")
  else
    launcher=("$PYTHON")
  fi
  "${launcher[@]}" main_sample.py --checkpoint "$CHECKPOINT" --num_samples "$NUM_SAMPLES" --output_npz "$SAMPLES" \
    --batch_size "$BATCH_SIZE" --cfg "$CFG" --cfg_start_step "$CFG_START_STEP" --steps_per_scale "$STEPS_PER_SCALE" \
    --seed "$SEED"
fi

"$PYTHON" evaluator.py "$REF_BATCH" "$SAMPLES" --output_file "$RESULTS" "${eval_flags[@]}"
