#!/usr/bin/env bash
# D2O on the starting model's own flagged answers (scripts/study/self_negatives.py): known-harmful
# instructions, their complying greedy answers as the negatives, K = 2 anchors sampled under a context,
# benign Alpaca prompts with their own anchors, then the study's evaluation.
# Usage: bash scripts/study/self_negatives_probe.sh NAME [extra train overrides...]
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=${1:?run name}; shift || true
CONTEXT=${CONTEXT:-refusal}
K=${K:-2}
BENIGN=${BENIGN:-runs/study/samples/benign192-k2.jsonl}
DATA=runs/study/data/self-negatives
NL=.venv/bin/negalign
mkdir -p results/study/$NAME
time .venv/bin/python scripts/study/self_negatives.py $DATA
SAMPLES=runs/study/samples/self-negatives-k${K}-${CONTEXT}.jsonl
time $NL sample --data $DATA/negatives.jsonl --output $SAMPLES --k $K --max-new-tokens 64 --batch-size 32 \
  --max-prompt-length 256 --sampling-context $CONTEXT
cp $SAMPLES.anchors.json results/study/$NAME/anchors.json
cp $DATA/negatives.jsonl.flags.json results/study/$NAME/self_negatives.json
time $NL train model=smollm2-135m-instruct data=$DATA/negatives.jsonl samples=$SAMPLES \
  benign_samples=$BENIGN objective=d2o k=$K alpha=0.1 beta=0.1 logp_reduction=sum max_length=384 \
  max_prompt_length=256 learning_rate=2e-5 per_device_train_batch_size=4 max_steps=96 \
  sampling_context=$CONTEXT output_dir=runs/study/$NAME "$@"
cp runs/study/$NAME/train_log.json runs/study/$NAME/README.md runs/study/$NAME/negalign_config.yaml \
  runs/study/$NAME/sampling_context.json results/study/$NAME/
time $NL eval --model runs/study/$NAME --reference smollm2-135m-instruct --max-prompts 50 \
  --max-new-tokens 64 --output results/study/$NAME/eval --no-progress
