#!/usr/bin/env bash
# D2O on the starting model's own flagged answers (study/self-negatives/self_negatives.py): known-harmful
# instructions, their complying greedy answers as the negatives, K = 2 anchors sampled under a context,
# benign Alpaca prompts with their own anchors, then the study's evaluation.
# Usage: bash study/self-negatives/self_negatives_probe.sh NAME [extra train overrides...]
set -euo pipefail
cd "$(dirname "$0")/../.."
R=study/self-negatives/runs  # the run records this question keeps (docs/results.md, "Size budget")
NAME=${1:?run name}; shift || true
CONTEXT=${CONTEXT:-refusal}
K=${K:-2}
BENIGN=${BENIGN:-runs/study/samples/benign192-k2.jsonl}
DATA=runs/study/data/self-negatives
NL=.venv/bin/negalign
mkdir -p $R/$NAME
time .venv/bin/python study/self-negatives/self_negatives.py $DATA
SAMPLES=runs/study/samples/self-negatives-k${K}-${CONTEXT}.jsonl
time $NL sample --data $DATA/negatives.jsonl --output $SAMPLES --k $K --max-new-tokens 64 --batch-size 32 \
  --max-prompt-length 256 --sampling-context $CONTEXT
cp $SAMPLES.anchors.json $R/$NAME/anchors.json
cp $DATA/negatives.jsonl.flags.json $R/$NAME/self_negatives.json
time $NL train model=smollm2-135m-instruct data=$DATA/negatives.jsonl samples=$SAMPLES \
  benign_samples=$BENIGN objective=d2o k=$K alpha=0.1 beta=0.1 logp_reduction=sum max_length=384 \
  max_prompt_length=256 learning_rate=2e-5 per_device_train_batch_size=4 max_steps=96 \
  sampling_context=$CONTEXT output_dir=runs/study/$NAME "$@"
cp runs/study/$NAME/train_log.json runs/study/$NAME/README.md runs/study/$NAME/negalign_config.yaml \
  runs/study/$NAME/sampling_context.json $R/$NAME/
time $NL eval --model runs/study/$NAME --reference smollm2-135m-instruct --max-prompts 50 \
  --max-new-tokens 64 --output $R/$NAME/eval --no-progress
