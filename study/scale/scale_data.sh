#!/usr/bin/env bash
# Ten times the flagged data (does more data help at equal compute?): the larger set, built from the offline data with negalign's own commands (every stage resumes
# or is skipped when its output exists, so a rerun continues where an interrupted one stopped):
#   1. the model's greedy answers to every HH harmless-base test prompt (2,312 pairs; prompts that duplicate an
#      evaluation prompt left out), and to harmful-train + harmful-val (the default's 299), flagged by the judge;
#   2. the benign side of the default recipe: 192 benign instructions' plain anchors, and their answers under the
#      `refusal` context, the refusals among them kept as negatives;
#   3. K = 8 anchors per flagged prompt under the `refusal` context (training with k 2 / 4 takes the first 2 / 4);
#   4. the same flagged HH prompts with their human `rejected` answers as negatives (study/scale/human_negatives.py).
# Outputs in runs/scale/ (local); the counts go to study/scale/scale/data.json.
# Usage: bash study/scale/scale_data.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/scale
NL=".venv/bin/negalign"
mkdir -p $OUT study/scale/scale
greedy="--k 1 --temperature 0 --max-new-tokens 64 --batch-size 64 --no-anchor-report --no-progress"

[ -s $OUT/hh-flagged.jsonl ] || {
  $NL sample --data hh-harmless-base $greedy --output $OUT/hh-answers.jsonl
  $NL flag --answers $OUT/hh-answers.jsonl --output $OUT/hh-flagged.jsonl --no-progress; }
[ -s $OUT/harmful-flagged.jsonl ] || {
  $NL sample --data harmful-train harmful-val $greedy --output $OUT/harmful-answers.jsonl
  $NL flag --answers $OUT/harmful-answers.jsonl --output $OUT/harmful-flagged.jsonl --no-progress; }
$NL sample --data benign-instructions --max-prompts 192 --k 8 --max-new-tokens 64 --batch-size 16 --no-progress \
  --output $OUT/benign192-k8.jsonl
[ -s $OUT/benign-refusals.jsonl ] || {
  $NL sample --data benign-instructions --max-prompts 192 $greedy --sampling-context refusal \
    --output $OUT/benign-under-refusal.jsonl
  $NL flag --answers $OUT/benign-under-refusal.jsonl --output $OUT/benign-refusals.jsonl --keep refusing --no-progress; }
cat $OUT/hh-flagged.jsonl $OUT/harmful-flagged.jsonl > $OUT/flagged.jsonl
$NL sample --data $OUT/flagged.jsonl --k 8 --sampling-context refusal --max-new-tokens 64 --batch-size 16 \
  --no-progress --output $OUT/anchors-k8-refusal.jsonl
# the benign refusals' prompts are the 192 benign prompts: their anchors are the plain ones (as in the default)
cat $OUT/flagged.jsonl $OUT/benign-refusals.jsonl > $OUT/d2o_negatives.jsonl
cat $OUT/anchors-k8-refusal.jsonl $OUT/benign192-k8.jsonl > $OUT/d2o_anchors.jsonl
.venv/bin/python study/scale/human_negatives.py $OUT/hh-flagged.jsonl $OUT/human_negatives.jsonl \
  study/scale/scale/data.json $OUT/benign-refusals.jsonl
