#!/usr/bin/env bash
# D2O on a demo run's prepared rows (its self-flagged negatives, refusal-context anchors, benign anchors and
# benign refusals: results/demo, or results/demo-benign-refusals-seedS for seed S), with the default recipe's
# settings (configs/d2o.yaml) and the given overrides; evaluated like the demo, on the seed's prompts.
# Usage: bash scripts/study/d2o_variant.sh NAME DEMO_FOLDER SEED [train overrides...]
#   e.g. bash scripts/study/d2o_variant.sh d2o-beta0.2 results/demo 0 beta=0.2
# Writes runs/study/NAME (the model) and results/study/NAME (config, training log, evaluation).
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=${1:?run name}; SRC=${2:?demo folder}; SEED=${3:?seed}; shift 3
NL=.venv/bin/negalign
$NL train model=smollm2-135m-instruct data=$SRC/d2o_negatives.jsonl samples=$SRC/d2o_anchors.jsonl \
  benign_samples=$SRC/benign_samples.jsonl objective=d2o k=2 alpha=0.1 beta=0.1 logp_reduction=sum \
  max_length=384 max_prompt_length=256 learning_rate=2e-5 per_device_train_batch_size=4 max_steps=144 \
  seed=$SEED sampling_context=refusal save_strategy=no output_dir=runs/study/$NAME "$@"
bash scripts/study/evaluate_run.sh $NAME $SEED
