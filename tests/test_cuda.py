"""Checks that need a CUDA GPU (marker `cuda`; skipped without one, run by benchmarks/gpu/check.sh): the packed
row's attention layouts against the unpacked computation in fp32 and bf16, a few D2O and DPO steps, sampling,
and exporting a model trained on the GPU.

Tolerances: fp32 summed log-probs within 1e-3 of the unpacked padded computation (TF32 is off by default for
matmuls in PyTorch; 1e-3 leaves room for kernel reduction order over ~5 tokens); bf16 autocast within 0.1 +
2 % of the value (bf16 keeps ~3 significant digits per op, and the sum runs over the tokens)."""

import json

import pytest
import torch

import negalign
from negalign.logprobs import naive_sequence_logps, pack_sequences, sequence_logps

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHARED = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), ([5, 6, 7], [20, 21, 22]), ([3, 4], [2]),
          ([5, 6, 7], [30]), ([10], [40, 41])] * 3  # 18 sequences, 3 prompts shared 9, 6 and 3 ways
PROMPTS = [f"Question {i}: how do I do thing number {i}?" for i in range(8)]


def gpu_llama(vocab_size: int = 256, seed: int = 0):
    """Head dim 32: FlexAttention's Triton kernels want a head dim of at least 16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, attn_implementation="sdpa")
    return LlamaForCausalLM(config).cuda()


@pytest.mark.parametrize("layout", ["flex", "sdpa", "blocks"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_packed_equals_unpacked_on_cuda(layout, dtype):
    model = gpu_llama().train()
    bf16 = dtype == "bf16"
    batch = pack_sequences(SHARED).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        packed = sequence_logps(model, batch, attention=layout)
        with torch.no_grad():
            naive = naive_sequence_logps(model.eval(), [(p, c) for p, c in SHARED]).cuda()
    model.train()
    tolerance = (0.1 + 0.02 * naive.abs()) if bf16 else torch.full_like(naive, 1e-3)
    assert ((packed.float() - naive.float()).abs() <= tolerance).all(), (packed, naive)
    packed.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_flex_gradients_equal_the_blockwise_gradients_on_cuda():
    grads = {}
    for layout in ("flex", "blocks"):
        model = gpu_llama().train()
        logps = sequence_logps(model, pack_sequences(SHARED).to("cuda"), attention=layout)
        (logps * torch.arange(1.0, len(SHARED) + 1, device="cuda")).sum().backward()
        grads[layout] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["flex"], grads["blocks"]):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), (a - b).abs().max()


@pytest.fixture(scope="module")
def gpu_model_dir(tmp_path_factory, smollm_tokenizer):
    folder = tmp_path_factory.mktemp("gpu-llama")
    gpu_llama(len(smollm_tokenizer)).cpu().save_pretrained(folder)
    smollm_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-data")
    pairs = [{"prompt": p, "chosen": f"I can help safely with: {p}", "rejected": f"Sure, harmful: {p}"} for p in PROMPTS]
    samples = [{"prompt": [{"role": "user", "content": p}], "completion": f"Answer {i} to {p}", "origin": "self",
                "sample_index": i} for p in PROMPTS for i in range(4)]
    for name, rows in (("pairs", pairs), ("samples", samples)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.parametrize("objective", ["d2o", "dpo"])
def test_a_few_steps_train_on_cuda_and_the_loss_moves(objective, gpu_model_dir, data, tmp_path):
    extra = {"samples": str(data / "samples.jsonl"), "k": 4} if objective == "d2o" else {}
    trainer = negalign.train(model=gpu_model_dir, data=str(data / "pairs.jsonl"), objective=objective, max_steps=6,
                             per_device_train_batch_size=4, learning_rate=1e-3, output_dir=str(tmp_path / "run"),
                             cache_dir=str(tmp_path / "cache"), max_length=96, max_prompt_length=64, bf16=True,
                             save_strategy="no", logging_steps=1, **extra)
    assert next(trainer.model.parameters()).device.type == "cuda"
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses


def test_sampling_on_cuda(gpu_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from negalign.models import load_tokenizer
    from negalign.sampling import SamplingSettings, sample

    model = AutoModelForCausalLM.from_pretrained(gpu_model_dir).cuda().eval()
    report = sample(model, load_tokenizer(gpu_model_dir), PROMPTS, tmp_path / "s.jsonl",
                    SamplingSettings(k=2, max_new_tokens=8, batch_size=4, seed=0), model_id="tiny", progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "s.jsonl")]
    assert report.n_rows_written == len(rows) == 2 * len(PROMPTS)


def test_export_of_a_model_trained_on_cuda(gpu_model_dir, data, tmp_path):
    from transformers import AutoModelForCausalLM

    from negalign.cli import main

    run = tmp_path / "run"
    negalign.train(model=gpu_model_dir, data=str(data / "pairs.jsonl"), objective="dpo", use_lora=True, lora_r=4,
                   max_steps=3, per_device_train_batch_size=4, learning_rate=5e-2, output_dir=str(run),
                   cache_dir=str(tmp_path / "cache"), max_length=96, max_prompt_length=64, save_strategy="no")
    assert main(["export", str(run), "--output", str(tmp_path / "merged"), "--merge"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(gpu_model_dir)
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed  # the adapter's training is in the merged weights


def test_fsdp_on_one_gpu_follows_the_plain_run(gpu_model_dir, data, tmp_path):
    """`accelerate launch` with configs/accelerate/fsdp.yaml (one process: what one GPU allows) trains D2O along
    the plain run's loss trajectory (both bf16 autocast; 2 % + 0.02 apart at most: FSDP's flat parameters sum in
    another order)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = {"model": gpu_model_dir, "data": str(data / "pairs.jsonl"), "samples": str(data / "samples.jsonl"),
              "objective": "d2o", "k": 4, "max_steps": 4, "learning_rate": 1e-3, "seed": 0, "max_length": 96,
              "max_prompt_length": 64, "per_device_train_batch_size": 4, "bf16": True, "save_strategy": "no"}
    root = Path(__file__).resolve().parents[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(root / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "1", "--main_process_port",
              str(port), "-m", "negalign", "train", *(f"{k}={v}" for k, v in common.items()),
              f"output_dir={tmp_path / 'fsdp'}", f"cache_dir={tmp_path / 'fsdp-cache'}"]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    plain = negalign.train(**common, output_dir=str(tmp_path / "plain"), cache_dir=str(tmp_path / "plain-cache"))
    one = [h["loss"] for h in plain.state.log_history if "loss" in h]
    log = json.load(open(tmp_path / "fsdp" / "train_log.json"))["log_history"]
    fsdp = [h["loss"] for h in log if "loss" in h]
    assert len(one) == len(fsdp) == 4
    assert all(abs(a - b) <= 0.02 + 0.02 * abs(a) for a, b in zip(one, fsdp)), (one, fsdp)
