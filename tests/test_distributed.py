"""Multi-process training: `accelerate launch` with configs/accelerate/ddp_cpu.yaml (2 processes, CPU DDP over
gloo) trains D2O on the tiny Llama with per-device batch b and must follow the same loss trajectory as one
process with batch 2b.

Why the trajectories can match exactly even with shuffling on: accelerate replaces the Trainer's
RandomSampler with a SeedableRandomSampler seeded the same way in every process, so both runs draw the
same permutation of the examples each epoch; one process takes it in batches of 2b, two processes take
consecutive batches of b each (rank 0 the first, rank 1 the second), so each optimizer step sees the same
2b examples. Each process's loss is a mean over its b examples and DDP averages the gradients, which is
the gradient of the mean over 2b. What differs is float summation order (packing b vs 2b sequences).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import negalign

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [f"Prompt {i}: {'really ' * (i % 3)}how do I do thing {i}?" for i in range(8)]


def _write(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _free_port() -> int:
    with socket.socket() as probe:  # not 29500: other test runs on the machine may be using it
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_ddp_matches_one_process_at_twice_the_batch(tiny_model_dir, tmp_path):
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": f"Safely: {p}", "rejected": f"Harmful: {p}"}
                                              for p in PROMPTS])
    samples = _write(tmp_path / "samples.jsonl", [
        {"prompt": p, "completion": f"Sample {i} for {p}", "origin": "self", "sample_index": i}
        for p in PROMPTS for i in range(2)])
    common = {"model": tiny_model_dir, "data": pairs, "samples": samples, "objective": "d2o", "k": 2,
              "max_steps": 4, "learning_rate": 1e-2, "seed": 0, "max_length": 96, "max_prompt_length": 64,
              "use_cpu": True}  # 8 examples, global batch 4: two epochs, reshuffled
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"), "--main_process_port", str(_free_port()),
              "-m", "negalign", "train", *(f"{k}={v}" for k, v in common.items()), "per_device_train_batch_size=2",
              f"output_dir={tmp_path / 'ddp'}", f"cache_dir={tmp_path / 'ddp-cache'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    # the reference log-probs were computed by one process and read from the cache by the other
    assert output.count("'computed and cached'") == 1 and output.count("'cache hit'") == 1, output[-5000:]

    single = negalign.train(**common, per_device_train_batch_size=4, output_dir=str(tmp_path / "one"),
                            cache_dir=str(tmp_path / "one-cache"))
    one = [h["loss"] for h in single.state.log_history if "loss" in h]
    two = [h["loss"] for h in json.load(open(tmp_path / "ddp" / "train_log.json"))["log_history"] if "loss" in h]
    assert len(one) == len(two) == 4
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4, (one, two)
    assert one[-1] < one[0] - 0.1  # it trained (the trajectories are not both flat)
    # the objective's metrics are means over both processes' shards, not rank 0's half of the batch
    z_one = [h["d2o/z"] for h in single.state.log_history if "loss" in h]
    z_two = [h["d2o/z"] for h in json.load(open(tmp_path / "ddp" / "train_log.json"))["log_history"] if "loss" in h]
    assert max(abs(a - b) for a, b in zip(z_one, z_two)) < 1e-4, (z_one, z_two)
    ddp, ref = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    worst = max(float((ddp[name] - ref[name]).abs().max()) for name in ref)
    assert worst < 1e-4, worst
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(start[name], ddp[name]) for name in start)
