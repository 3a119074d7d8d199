#!/usr/bin/env bash
# Harmful compliance, benign refusal and held-out NLL against training steps: evaluates each checkpoint-N a run
# kept (train it with save_steps=N save_total_limit=null) with the study's evaluation, into
# study/self-negatives/runs/<name>/curve/step-N/. The final model's own evaluation is the last point.
# Usage: bash study/self-negatives/checkpoint_curve.sh NAME
set -euo pipefail
cd "$(dirname "$0")/../.."
R=study/self-negatives/runs  # the run records this question keeps (docs/results.md, "Size budget")
NAME=${1:?run name}
for checkpoint in $(ls -d runs/study/$NAME/checkpoint-* | sort -t- -k2 -n); do
  step=${checkpoint##*-}
  last=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['max_steps'])" $checkpoint/trainer_state.json)
  [ "$step" = "$last" ] && continue  # the final model: its evaluation is $R/NAME/eval
  time .venv/bin/negalign eval --model $checkpoint --reference smollm2-135m-instruct --max-prompts 50 \
    --max-new-tokens 64 --output $R/$NAME/curve/step-$step --no-progress
done
