#!/usr/bin/env bash
# The starting model under the study's evaluation: 50 prompts of each built-in suite (150 harmful, 100 benign),
# greedy, 64 new tokens, 50 held-out HH pairs (the file's last pairs, never among the training prompts).
set -euo pipefail
cd "$(dirname "$0")/../.."
time .venv/bin/negalign eval --model smollm2-135m-instruct --max-prompts 50 --max-new-tokens 64 --batch-size 16 \
  --output study/starting-model/runs/base/eval --no-progress --no-kl
