#!/usr/bin/env bash
# The study's evaluation of one trained run, like the demo's (50 prompts per suite, 64 new tokens, KL against the
# starting model), on the seed's prompts; keeps its record (config, training log, evaluation) in results/study/NAME.
# Usage: bash scripts/study/evaluate_run.sh NAME SEED   (the model is runs/study/NAME)
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=${1:?run name}; SEED=${2:?seed}
.venv/bin/negalign eval --model runs/study/$NAME --reference smollm2-135m-instruct --max-prompts 50 \
  --max-new-tokens 64 --seed $SEED --output runs/study/$NAME/eval --no-progress
mkdir -p results/study/$NAME/eval
for file in train_log.json README.md negalign_config.yaml decontamination.json; do
  cp runs/study/$NAME/$file results/study/$NAME/
done
cp runs/study/$NAME/eval/eval.json results/study/$NAME/eval/
