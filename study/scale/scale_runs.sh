#!/usr/bin/env bash
# Ten times the flagged data at equal compute (does more data move the front?): the default recipe's budget (144 steps of 4, lr 2e-5, K 2, seed 0)
# on the scale set of study/scale/scale_data.sh (1,471 flagged prompts + 115 benign refusals instead of 146 +
# 115), D2O and context distillation (SFT on the same anchors), evaluated like the demo.
# Usage: bash study/scale/scale_runs.sh [d2o|distill]...
set -euo pipefail
cd "$(dirname "$0")/../.."
S=runs/scale
export RECORDS=study/scale/runs  # where study/tools/evaluate_run.sh keeps each run's record
for run in "$@"; do
  case $run in
    d2o) bash study/tools/d2o_variant.sh scale-d2o-k2 $S 0 benign_samples=$S/benign192-k8.jsonl ;;
    distill)
      .venv/bin/negalign train model=smollm2-135m-instruct data=$S/d2o_anchors.jsonl objective=context_distillation \
        k=2 sampling_context=refusal logp_reduction=sum max_length=384 max_prompt_length=256 learning_rate=2e-5 \
        per_device_train_batch_size=4 max_steps=144 seed=0 save_strategy=no output_dir=runs/study/scale-distill-k2
      bash study/tools/evaluate_run.sh scale-distill-k2 0 ;;
  esac
done
