#!/usr/bin/env bash
# A baseline on the self-flagged negatives of self_negatives_probe.sh at the same budget (lr 2e-5, batch 4,
# the same steps): NPO, gradient ascent, ... see only the negatives (no anchors, no benign prompts).
# Usage: bash study/self-negatives/self_negatives_baseline.sh NAME OBJECTIVE [extra train overrides...]
set -euo pipefail
cd "$(dirname "$0")/../.."
R=study/self-negatives/runs  # the run records this question keeps (docs/results.md, "Size budget")
NAME=${1:?run name}; OBJECTIVE=${2:?objective}; shift 2
DATA=runs/study/data/self-negatives
NL=.venv/bin/negalign
mkdir -p $R/$NAME
time .venv/bin/python study/self-negatives/self_negatives.py $DATA
cp $DATA/negatives.jsonl.flags.json $R/$NAME/self_negatives.json
time $NL train model=smollm2-135m-instruct data=$DATA/negatives.jsonl objective=$OBJECTIVE beta=0.1 \
  logp_reduction=sum max_length=384 max_prompt_length=256 learning_rate=2e-5 per_device_train_batch_size=4 \
  max_steps=96 output_dir=runs/study/$NAME "$@"
cp runs/study/$NAME/train_log.json runs/study/$NAME/README.md runs/study/$NAME/negalign_config.yaml \
  $R/$NAME/
time $NL eval --model runs/study/$NAME --reference smollm2-135m-instruct --max-prompts 50 \
  --max-new-tokens 64 --output $R/$NAME/eval --no-progress
