#!/usr/bin/env bash
# The FINDINGS probe with negalign's own commands (no patching): D2O, K = 2 anchors sampled under the
# `refusal` context, 192 HH harmless-base prompts, full fine-tuning, lr 2e-5, 96 steps of 4.
# Outputs: runs/study/<name>/ (weights, local) and study/refusal-context-anchors/runs/<name>/ (logs, eval, anchor report).
# Usage: bash study/refusal-context-anchors/refusal_context_probe.sh NAME [extra train overrides...]
set -euo pipefail
cd "$(dirname "$0")/../.."
R=study/refusal-context-anchors/runs  # the run records this question keeps (docs/results.md, "Size budget")
NAME=${1:-d2o-refusal-k2}; shift || true
CONTEXT=${CONTEXT:-refusal}
K=${K:-2}
N=${N:-192}
HH=../shared/data/hh-rlhf-harmless-base-test/test.jsonl.gz
SAMPLES=runs/study/samples/hh${N}-k${K}-${CONTEXT}.jsonl
NL=.venv/bin/negalign
mkdir -p $R/$NAME
time $NL sample --data $HH --on-bad-row skip --output $SAMPLES --k $K --max-new-tokens 64 \
  --max-prompts $N --max-prompt-length 256 --sampling-context $CONTEXT
cp $SAMPLES.anchors.json $R/$NAME/anchors.json
time $NL train model=smollm2-135m-instruct data=$HH on_bad_row=skip samples=$SAMPLES objective=d2o k=$K \
  alpha=0.1 beta=0.1 logp_reduction=sum max_length=384 max_prompt_length=256 learning_rate=2e-5 \
  per_device_train_batch_size=4 max_steps=96 max_prompts=$N sampling_context=$CONTEXT \
  output_dir=runs/study/$NAME "$@"
cp runs/study/$NAME/train_log.json runs/study/$NAME/README.md runs/study/$NAME/negalign_config.yaml \
  runs/study/$NAME/sampling_context.json $R/$NAME/
time $NL eval --model runs/study/$NAME --reference smollm2-135m-instruct --max-prompts 50 \
  --max-new-tokens 64 --batch-size 16 --output $R/$NAME/eval --no-progress
