#!/usr/bin/env bash
# The main job, small enough for a 2-core CPU: sample K=4 answers for the first 16 HH harmless-base
# prompts with SmolLM2-135M-Instruct, then train D2O on those prompts' human negatives for 20 steps.
# Both stages resume from their caches when rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/negalign sample --data ../shared/data/hh-rlhf-harmless-base-test/test.jsonl.gz --on-bad-row skip \
  --output runs/samples/hh-smollm2-k4.jsonl --k 4 --max-prompts 16 --batch-size 8 --max-new-tokens 96
# configs/d2o.yaml's training settings on these files: the HH rows' human negatives, the K = 4 plain samples as
# anchors (no sampling context, no benign rows), 20 steps
.venv/bin/negalign train --config configs/d2o.yaml data=../shared/data/hh-rlhf-harmless-base-test/test.jsonl.gz \
  on_bad_row=skip samples=runs/samples/hh-smollm2-k4.jsonl k=4 sampling_context=null benign_samples=null \
  max_prompts=16 max_steps=20 output_dir=runs/quickstart "$@"
