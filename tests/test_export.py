"""`negalign export`: a LoRA run merged into a standalone model that plain transformers loads and that generates
what the adapter model generates; a full run exported as is; the model card and run files carried."""

from __future__ import annotations

import json

import pytest
import torch

import negalign
from negalign.cli import main

PROMPTS = [f"Question {i}: how do I do thing number {i}?" for i in range(6)]


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    data = folder / "negatives.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "rejected": f"Sure: {p}"}) + "\n" for p in PROMPTS))
    run = folder / "run"
    negalign.train(model=tiny_model_dir, data=str(data), objective="npo", use_lora=True, lora_r=4, max_steps=3,
                   per_device_train_batch_size=2, learning_rate=5e-2, output_dir=str(run), cache_dir=str(folder / "c"),
                   max_length=96, max_prompt_length=64, use_cpu=True, save_strategy="no")
    return run


def test_a_merged_lora_run_loads_with_plain_transformers_and_generates_the_same(lora_run, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert main(["export", str(lora_run), "--output", str(out), "--merge"]) == 0
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no peft
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(lora_run)).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = {name: m(ids).logits for name, m in (("merged", merged), ("adapter", adapter), ("base", base))}
        greedy = {name: m.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
                  for name, m in (("merged", merged), ("adapter", adapter))}
    assert torch.allclose(logits["merged"], logits["adapter"], atol=1e-4)
    assert (logits["merged"] - logits["base"]).abs().max() > 1e-3  # the adapter's training is in the weights
    assert torch.equal(greedy["merged"], greedy["adapter"])
    card = (out / "README.md").read_text()
    assert "objective `npo`" in card and "LoRA adapter merged into the base weights" in card
    assert {"negalign_config.yaml", "train_log.json", "versions.json"} <= {p.name for p in out.iterdir()}


def test_exporting_a_lora_run_needs_merge_and_a_full_run_exports_as_is(lora_run, tiny_model_dir, tmp_path, capsys):
    assert main(["export", str(lora_run), "--output", str(tmp_path / "x")]) == 2
    assert "holds a LoRA adapter, not a whole model: pass --merge" in capsys.readouterr().err
    data = lora_run.parent / "negatives.jsonl"
    full = tmp_path / "full"
    negalign.train(model=tiny_model_dir, data=str(data), objective="npo", max_steps=1, per_device_train_batch_size=2,
                   output_dir=str(full), cache_dir=str(tmp_path / "c"), max_length=96, max_prompt_length=64,
                   use_cpu=True)
    (full / "eval").mkdir()
    (full / "eval" / "eval.json").write_text(json.dumps({
        "suites": {"advbench": {"kind": "harmful", "harmful_compliance": {"rate": 0.5, "low": 0.2, "high": 0.8, "n": 4},
                                "harmful_compliance_keyword": {"rate": 0.25}, "answer_tokens": 30.0,
                                "repeated_3gram_fraction": 0.1}}, "seconds": 3.0}))
    assert main(["export", str(full), "--output", str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Evaluation" in card and "0.500 [0.200, 0.800] (n=4)" in card
    assert main(["export", str(full), "--output", str(tmp_path / "out")]) == 2  # not over a non-empty folder
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
