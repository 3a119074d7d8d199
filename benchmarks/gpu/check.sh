#!/usr/bin/env bash
# The prepared device check (issue 30): on a lent GPU machine with only its image's packages and what
# benchmarks/gpu/prepare.sh put in benchmarks/gpu/carry/, run the CUDA tests and the GPU comparisons in one go,
# each stage under its own time limit, every result written as JSON to $OUT as soon as it exists.
#
#   bash benchmarks/gpu/prepare.sh                     # here, once
#   bash benchmarks/gpu/check.sh --dry-run             # here: the same stages on the CPU with the tiny shape
#   device run: command "bash benchmarks/gpu/check.sh", carry ["benchmarks/gpu/carry"], timeout_s 560
#
# Stages (budget, GPU): CUDA tests 120 s; DPO vs DPOTrainer 150 s; D2O K 4 vs KTOTrainer 170 s; generation 90 s.
# The comparisons run SmolLM2-1.7B's shape (random weights), LoRA r16 all-linear, bf16 autocast, batch 8,
# max length 512, against TRL's faster setting only (precompute_ref_log_probs; use_liger_kernel where it imports).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CARRY=$ROOT/benchmarks/gpu/carry
OUT=${OUT:-/tmp/negalign-gpu-check}
mkdir -p "$OUT"
if [ "${1:-}" = "--dry-run" ]; then
  PY=$ROOT/.venv/bin/python DEVICE=cpu SHAPE=tiny STEPS=4 ROWS=8 BATCH=2 MAXLEN=128 PROMPTS=8 DTYPE=fp32 GEN_DTYPE=float32
else
  PY=python3 DEVICE=cuda SHAPE=smollm2-1.7b STEPS=16 ROWS=32 BATCH=8 MAXLEN=512 PROMPTS=32 DTYPE=bf16 GEN_DTYPE=bfloat16
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$CARRY"/wheels/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
[ -d "$CARRY/shapes/$SHAPE" ] || { echo "$CARRY/shapes/$SHAPE missing: run benchmarks/gpu/prepare.sh first"; exit 1; }
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} NEGALIGN_DATA=$CARRY/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
  TOKENIZERS_PARALLELISM=false NEGALIGN_TEST_TOKENIZER=$CARRY/shapes/tiny
LOG=$OUT/check.log
stage() {  # stage NAME SECONDS COMMAND...: run under a time limit, log it, never stop the check
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
}
$PY - > "$OUT/environment.json" <<'PYEOF'
import json, platform, torch, transformers
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                  "cuda": torch.cuda.is_available(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "cpu_capability": torch.backends.cpu.get_cpu_capability()}, indent=2))
PYEOF
cat "$OUT/environment.json"
$PY benchmarks/shapes.py --materialise "$SHAPE" --from "$CARRY/shapes" --device "$DEVICE" >> "$LOG" 2>&1
stage cuda-tests 120 $PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml"
common=(--device "$DEVICE" --shape "$SHAPE" --steps "$STEPS" --warmup 3 --rows "$ROWS" --batch "$BATCH"
        --max-length "$MAXLEN" --dtype "$DTYPE" --trl-settings fast --tmp /tmp/negalign-gpu-bench)
stage dpo 150 $PY benchmarks/train_vs_trl.py --comparison dpo "${common[@]}" --name "dpo-$DEVICE-$SHAPE"
stage d2o 170 $PY benchmarks/train_vs_trl.py --comparison d2o "${common[@]}" --name "d2o-$DEVICE-$SHAPE"
stage generation 90 $PY benchmarks/generation.py --workload sample --device "$DEVICE" --dtype "$GEN_DTYPE" --shape "$SHAPE" \
  --prompts "$PROMPTS" --k 4 --max-new-tokens 64 --batch-sizes 32 --no-plain-loop --name "generation-sample-$DEVICE-$SHAPE"
for name in "dpo-$DEVICE-$SHAPE" "d2o-$DEVICE-$SHAPE" "generation-sample-$DEVICE-$SHAPE"; do
  [ -f "benchmarks/results/$name.json" ] && cp "benchmarks/results/$name.json" "$OUT/"
done
ls "$OUT"
