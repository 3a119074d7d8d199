#!/usr/bin/env bash
# D2O told both sides: the self-flagged harmful negatives with their refusal anchors (the recipe of
# configs/d2o.yaml), plus benign prompts whose *refusals* are negatives. The benign prompts are answered greedily
# under the same `refusal` sampling context the harmful anchors were drawn with; `negalign flag --keep refusing`
# keeps the refusals (the answers a model trained on refusal anchors would learn to give to harmless requests);
# those prompts' anchors are the starting model's plain answers (benign192-k2). Benign prompts the context did
# not make refuse stay anchor-only rows, as in the recipe. Same budget: 48 steps of 4.
# Usage: bash study/benign-refusal-negatives/overrefusal_probe.sh NAME [extra train overrides...]
set -euo pipefail
cd "$(dirname "$0")/../.."
R=study/benign-refusal-negatives/runs  # the run records this question keeps (docs/results.md, "Size budget")
NAME=${1:?run name}; shift || true
NL=.venv/bin/negalign
SELF=runs/study/data/self-negatives
BENIGN=runs/study/samples/benign192-k2.jsonl
DATA=runs/study/data/overrefusal
mkdir -p $DATA $R/$NAME
# the same 192 benign prompts as the anchors (same set, same decontamination, same order), greedy, under the context
time $NL sample --data benign-instructions --max-prompts 192 --k 1 --temperature 0 --max-new-tokens 64 \
  --batch-size 64 --max-prompt-length 256 --sampling-context refusal --no-anchor-report \
  --output $DATA/benign192-refusal-answers.jsonl
$NL flag --answers $DATA/benign192-refusal-answers.jsonl --output $DATA/benign-refusals.jsonl --keep refusing
cat $SELF/negatives.jsonl $DATA/benign-refusals.jsonl > $DATA/negatives.jsonl
cat runs/study/samples/self-negatives-k2-refusal.jsonl $BENIGN > $DATA/anchors.jsonl
cp $DATA/benign-refusals.jsonl.flags.json $R/$NAME/benign_refusals.json
time $NL train model=smollm2-135m-instruct data=$DATA/negatives.jsonl samples=$DATA/anchors.jsonl \
  benign_samples=$BENIGN objective=d2o k=2 alpha=0.1 beta=0.1 logp_reduction=sum max_length=384 \
  max_prompt_length=256 learning_rate=2e-5 per_device_train_batch_size=4 max_steps=48 \
  sampling_context=refusal output_dir=runs/study/$NAME "$@"
cp runs/study/$NAME/train_log.json runs/study/$NAME/README.md runs/study/$NAME/negalign_config.yaml \
  runs/study/$NAME/decontamination.json $R/$NAME/
time $NL eval --model runs/study/$NAME --reference smollm2-135m-instruct --max-prompts 50 \
  --max-new-tokens 64 --output $R/$NAME/eval --no-progress
