#!/usr/bin/env bash
# The second scale set (does more data help once the prompts are filtered for harm?): the HH prompts a prompt-harm head scores harmful (study/scale/prompt_harm.py),
# answered greedily and flagged by the compliance judge, beside the default's harmful-train/val negatives and
# benign refusals; D2O and context distillation (SFT on the same anchors) at the default recipe's budget
# (144 steps of 4, lr 2e-5, K 2, seed 0), evaluated like the demo. The first scale set (scale_data.sh) flagged
# every HH answer that complied, harmless questions' helpful answers included, and lost on both axes.
# Every data stage is skipped when its output exists (and `negalign sample` resumes an interrupted file).
# Usage: [SEED=S] bash study/scale/scale_harmful.sh [data] [d2o] [distill] [human] [kto] [default-k4] [default-k2]
#          [harmful-only] [benign-only] [alpha0] [ulma] [dpo] [npo]
set -euo pipefail
cd "$(dirname "$0")/../.."
S=runs/scale-harmful
R=study/scale/scale-harmful
# each run's record goes with its question: the rows' arms (which negatives matter) and the rest (scale)
export RECORDS=study/scale/runs
NEGATIVES=study/which-negatives/runs
NL=.venv/bin/negalign
greedy="--k 1 --temperature 0 --max-new-tokens 64 --batch-size 64 --no-anchor-report --no-progress"
mkdir -p $S $R
SEED=${SEED:-0}  # the training and evaluation seed of the default-k2 / default-k4 rows (the data stays seed 0's)
TAG=$([ "$SEED" = 0 ] || echo "-seed$SEED")

data() {
  [ -s $S/hh-harmful-prompts.jsonl ] ||
    .venv/bin/python study/scale/prompt_harm.py hh-harmless-base $S/hh-harmful-prompts.jsonl $R/prompt_harm.json
  [ -s $S/hh-flagged.jsonl ] || {
    $NL sample --data $S/hh-harmful-prompts.jsonl $greedy --output $S/hh-answers.jsonl
    $NL flag --answers $S/hh-answers.jsonl --output $S/hh-flagged.jsonl --no-progress; }
  [ -s $S/harmful-flagged.jsonl ] || {
    $NL sample --data harmful-train harmful-val $greedy --output $S/harmful-answers.jsonl
    $NL flag --answers $S/harmful-answers.jsonl --output $S/harmful-flagged.jsonl --no-progress; }
  [ -s $S/benign-refusals.jsonl ] || {
    $NL sample --data benign-instructions --max-prompts 192 $greedy --sampling-context refusal \
      --output $S/benign-under-refusal.jsonl
    $NL flag --answers $S/benign-under-refusal.jsonl --output $S/benign-refusals.jsonl --keep refusing --no-progress; }
  $NL sample --data benign-instructions --max-prompts 192 --k 2 --max-new-tokens 64 --batch-size 16 --no-progress \
    --output $S/benign192-k2.jsonl
  cat $S/hh-flagged.jsonl $S/harmful-flagged.jsonl > $S/flagged.jsonl
  $NL sample --data $S/flagged.jsonl --k 2 --sampling-context refusal --max-new-tokens 64 --batch-size 16 \
    --no-progress --output $S/anchors-k2-refusal.jsonl
  cat $S/flagged.jsonl $S/benign-refusals.jsonl > $S/d2o_negatives.jsonl
  cat $S/anchors-k2-refusal.jsonl $S/benign192-k2.jsonl > $S/d2o_anchors.jsonl
  .venv/bin/python study/scale/human_negatives.py $S/hh-flagged.jsonl $S/human_negatives.jsonl $R/data.json \
    $S/harmful-flagged.jsonl $S/benign-refusals.jsonl
  cp $S/*.flags.json $R/
}

evaluate() { bash study/tools/evaluate_run.sh "$@"; }  # NAME SEED

for step in "$@"; do
  case $step in
    data) data ;;
    d2o) bash study/tools/d2o_variant.sh scale-harmful-d2o-k2 $S 0 benign_samples=$S/benign192-k2.jsonl ;;
    default-k4)  # the default recipe's own rows (146 flagged harmful + 115 benign refusals) with K 4 anchors
      $NL sample --data $S/harmful-flagged.jsonl --k 4 --sampling-context refusal --max-new-tokens 64 --batch-size 16 \
        --no-progress --output $S/harmful-anchors-k4-refusal.jsonl
      $NL sample --data benign-instructions --max-prompts 192 --k 4 --max-new-tokens 64 --batch-size 16 --no-progress \
        --output $S/benign192-k4.jsonl
      cat $S/harmful-flagged.jsonl $S/benign-refusals.jsonl > $S/default_negatives.jsonl
      cat $S/harmful-anchors-k4-refusal.jsonl $S/benign192-k4.jsonl > $S/default_anchors_k4.jsonl
      bash study/tools/d2o_variant.sh default-rows-d2o-k4$TAG $S $SEED data=$S/default_negatives.jsonl k=4 \
        samples=$S/default_anchors_k4.jsonl benign_samples=$S/benign192-k4.jsonl ;;
    default-k2)  # the same rows and anchors file with k 2: the first two of each prompt's four, so only K differs
      RECORDS=$NEGATIVES bash study/tools/d2o_variant.sh default-rows-d2o-k2$TAG $S $SEED data=$S/default_negatives.jsonl k=2 \
        samples=$S/default_anchors_k4.jsonl benign_samples=$S/benign192-k4.jsonl ;;
    harmful-only)  # the default rows, K 2, the 115 benign refusals taken out of the negatives: their prompts
      # stay as anchor-only rows (benign_samples), so the rows and steps are the same as default-k2's
      RECORDS=$NEGATIVES bash study/tools/d2o_variant.sh default-rows-d2o-k2-harmful-only$TAG $S $SEED data=$S/harmful-flagged.jsonl \
        k=2 samples=$S/default_anchors_k4.jsonl benign_samples=$S/benign192-k4.jsonl ;;
    benign-only)  # the same, with only the benign refusals as negatives: the 146 harmful prompts become
      # anchor-only rows (their refusal-context anchors, from the same anchors file)
      RECORDS=$NEGATIVES bash study/tools/d2o_variant.sh default-rows-d2o-k2-benign-only$TAG $S $SEED data=$S/benign-refusals.jsonl \
        k=2 samples=$S/default_anchors_k4.jsonl benign_samples=$S/default_anchors_k4.jsonl ;;
    alpha0)  # default-k2 with the negatives' weight near zero: the anchors alone (1e-6, as the earlier alpha -> 0 rows)
      RECORDS=$NEGATIVES bash study/tools/d2o_variant.sh default-rows-d2o-k2-alpha0$TAG $S $SEED data=$S/default_negatives.jsonl \
        k=2 samples=$S/default_anchors_k4.jsonl benign_samples=$S/benign192-k4.jsonl alpha=1e-6 ;;
    kto|ulma|dpo|npo)  # baselines on the filtered rows: each negative with its prompt's first anchor as the
      # chosen / desirable answer (the demo's baseline_rows), each method with the demo's logp_reduction for it
      [ -s $S/train_pairs.jsonl ] || .venv/bin/python -c "import json, sys; from negalign.demo.data import baseline_rows
read = lambda p: [json.loads(l) for l in open(p) if l.strip()]
sys.stdout.writelines(json.dumps(r) + '\n' for r in baseline_rows(read('$S/d2o_negatives.jsonl'), read('$S/d2o_anchors.jsonl')))" \
        > $S/train_pairs.jsonl
      reduction=$(.venv/bin/python -c "from negalign.methods import METHODS; print(METHODS['$step'].demo.get('logp_reduction', 'sum'))")
      $NL train model=smollm2-135m-instruct data=$S/train_pairs.jsonl objective=$step beta=0.1 \
        logp_reduction=$reduction max_length=384 max_prompt_length=256 learning_rate=2e-5 \
        per_device_train_batch_size=4 max_steps=144 seed=0 save_strategy=no output_dir=runs/study/scale-harmful-$step
      evaluate scale-harmful-$step 0 ;;
    human)  # the same rows and anchors, the HH side's negatives written by people (HH's `rejected`)
      bash study/tools/d2o_variant.sh scale-harmful-human-d2o-k2 $S 0 benign_samples=$S/benign192-k2.jsonl \
        data=$S/human_negatives.jsonl ;;
    distill)
      $NL train model=smollm2-135m-instruct data=$S/d2o_anchors.jsonl objective=context_distillation k=2 \
        sampling_context=refusal logp_reduction=sum max_length=384 max_prompt_length=256 learning_rate=2e-5 \
        per_device_train_batch_size=4 max_steps=144 seed=0 save_strategy=no output_dir=runs/study/scale-harmful-distill-k2
      evaluate scale-harmful-distill-k2 0 ;;
  esac
done
