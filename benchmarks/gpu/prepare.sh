#!/usr/bin/env bash
# Prepare what the lent GPU machine needs and cannot fetch (it reaches no network): wheels of the packages its
# image lacks, the shapes' config and tokenizer files (benchmarks/shapes.py), and the offline data the
# benchmarks read, all under benchmarks/gpu/carry/ (git-ignored; well under the 64 MiB a run carries).
#
#   bash benchmarks/gpu/prepare.sh        # here, once (needs .venv from scripts/setup.sh and PyPI)
#   then run benchmarks/gpu/check.sh there with carry=["benchmarks/gpu/carry"] (docs/benchmarks.md, "On a GPU")
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=benchmarks/gpu/carry
rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/data"
# the image (Python 3.12; torch 2.11, transformers 5.17, peft, accelerate, pyarrow, rich, pytest, xxhash,
# matplotlib: .library/device/KINDS.md) lacks what the TRL comparison and negalign's data path import
.venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$CARRY/wheels" datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 trl==1.16.0 liger-kernel==0.8.5
.venv/bin/python benchmarks/shapes.py --write "$CARRY/shapes" > /dev/null
rm -rf "$CARRY/shapes/smollm2-360m" "$CARRY/shapes/smollm2-135m"  # the check uses 1.7b (and tiny for its dry run)
# the data the comparisons read (HH harmless-base pairs, the evaluation suites): copied for the run, never committed
DATA=$(.venv/bin/python -c "from negalign.data.paths import data_dir; print(data_dir(required=True))")
for name in hh-rlhf-harmless-base-test advbench xstest refusal-direction-splits; do
  cp -r "$DATA/$name" "$CARRY/data/"
done
du -sh "$CARRY"
