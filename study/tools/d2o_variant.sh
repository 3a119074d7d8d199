#!/usr/bin/env bash
# D2O on a demo run's prepared rows (its self-flagged negatives, refusal-context anchors, benign anchors and
# benign refusals: results/demo, or a rerun of study/seeds/runs/demo-benign-refusals-seedS for seed S: the rows
# themselves are not committed), with the default recipe's
# settings (configs/d2o.yaml) and the given overrides; evaluated like the demo, on the seed's prompts.
# Usage: bash study/tools/d2o_variant.sh NAME DEMO_FOLDER SEED [train overrides...]
#   e.g. RECORDS=study/scale/runs bash study/tools/d2o_variant.sh d2o-beta0.2 results/demo 0 beta=0.2
# Writes runs/study/NAME (the model) and $RECORDS/NAME (the record: study/tools/evaluate_run.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=${1:?run name}; SRC=${2:?demo folder}; SEED=${3:?seed}; shift 3
: "${RECORDS:?set RECORDS to the question's record folder, e.g. study/scale/runs}"
NL=.venv/bin/negalign
$NL train model=smollm2-135m-instruct data=$SRC/d2o_negatives.jsonl samples=$SRC/d2o_anchors.jsonl \
  benign_samples=$SRC/benign_samples.jsonl objective=d2o k=2 alpha=0.1 beta=0.1 logp_reduction=sum \
  max_length=384 max_prompt_length=256 learning_rate=2e-5 per_device_train_batch_size=4 max_steps=144 \
  seed=$SEED sampling_context=refusal save_strategy=no output_dir=runs/study/$NAME "$@"
bash study/tools/evaluate_run.sh $NAME $SEED
