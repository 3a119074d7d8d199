#!/usr/bin/env bash
# A baseline objective (npo, gradient_ascent, ...) at the D2O probe's budget: the same 192 HH harmless-base
# prompts (their rejected answers as negatives), full fine-tuning, lr 2e-5, 96 steps of 4, the same evaluation.
# Outputs: runs/study/<name>/ (weights, local) and study/refusal-context-anchors/runs/<name>/ (logs, eval).
# Usage: bash study/refusal-context-anchors/baseline_probe.sh NAME OBJECTIVE [extra train overrides...]
set -euo pipefail
cd "$(dirname "$0")/../.."
R=study/refusal-context-anchors/runs  # the run records this question keeps (docs/results.md, "Size budget")
NAME=$1; OBJECTIVE=$2; shift 2
N=${N:-192}
HH=../shared/data/hh-rlhf-harmless-base-test/test.jsonl.gz
NL=.venv/bin/negalign
mkdir -p $R/$NAME
time $NL train model=smollm2-135m-instruct data=$HH on_bad_row=skip objective=$OBJECTIVE \
  beta=0.1 logp_reduction=sum max_length=384 max_prompt_length=256 learning_rate=2e-5 \
  per_device_train_batch_size=4 max_steps=96 max_prompts=$N output_dir=runs/study/$NAME "$@"
cp runs/study/$NAME/train_log.json runs/study/$NAME/README.md runs/study/$NAME/negalign_config.yaml $R/$NAME/
time $NL eval --model runs/study/$NAME --reference smollm2-135m-instruct --max-prompts 50 \
  --max-new-tokens 64 --batch-size 16 --output $R/$NAME/eval --no-progress
