#!/usr/bin/env bash
# The study's evaluation of one trained run, like the demo's (50 prompts per suite, 64 new tokens, KL against the
# starting model), on the seed's prompts; keeps its record in $RECORDS/NAME: the recipe
# (negalign_config.yaml) and eval/eval.json are what the study commits; the training log, model card and
# decontamination list are copied beside them for reading and stay untracked (.gitignore: the study's size budget).
# Usage: RECORDS=study/QUESTION/runs bash study/tools/evaluate_run.sh NAME SEED   (the model is runs/study/NAME)
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=${1:?run name}; SEED=${2:?seed}
R=${RECORDS:?set RECORDS to the question's record folder, e.g. study/scale/runs}
.venv/bin/negalign eval --model runs/study/$NAME --reference smollm2-135m-instruct --max-prompts 50 \
  --max-new-tokens 64 --seed $SEED --output runs/study/$NAME/eval --no-progress
mkdir -p $R/$NAME/eval
for file in train_log.json README.md negalign_config.yaml decontamination.json; do
  cp runs/study/$NAME/$file $R/$NAME/
done
cp runs/study/$NAME/eval/eval.json $R/$NAME/eval/
