"""Objects in, objects out (issue 34): negalign.train takes a loaded model, a tokenizer and a datasets.Dataset,
returns the trained model, touches no file it was not asked for, and gives the weights the CLI gives."""

import json
import os

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

import negalign
from negalign.cli import main
from negalign.models import load_tokenizer

PROMPTS = ["Write a short poem about rivers.", "Explain how a bicycle gear works.", "Name three kinds of cloud.",
           "Describe a quiet morning in a village."]
NEGATIVES = [{"prompt": p, "rejected": f"Sure, here is something harmful about {p.lower()}"} for p in PROMPTS]
ANCHORS = [{"prompt": p, "completion": f"A calm answer {i} to: {p}", "origin": "self", "sample_index": i}
           for p in PROMPTS for i in range(2)]
SETTINGS = {"objective": "d2o", "k": 2, "max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
            "use_cpu": True, "save_strategy": "no", "seed": 3, "max_length": 64, "max_prompt_length": 32}


def files_under(folder) -> set[str]:
    return {os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder) for name in names}


@pytest.fixture
def samples(tmp_path):
    path = tmp_path / "inputs" / "samples.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(row) + "\n" for row in ANCHORS))
    return path


def test_d2o_from_python_objects_returns_the_model_and_matches_the_cli(tiny_model_dir, samples, tmp_path,
                                                                      monkeypatch):
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # anything written to the working directory would show here
    monkeypatch.setenv("NEGALIGN_CACHE", str(tmp_path / "home-cache"))  # and anything in the cache folder here
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    tokenizer = load_tokenizer(tiny_model_dir)
    out = tmp_path / "python-run"
    trainer = negalign.train({**SETTINGS, "samples": str(samples), "output_dir": str(out),
                              "cache_dir": str(tmp_path / "ref-cache")},
                             model=model, tokenizer=tokenizer, train_dataset=datasets.Dataset.from_list(NEGATIVES))
    trained = trainer.model
    assert trained is model  # the object handed in is the one trained and handed back
    moved = max((trained.state_dict()[n] - start[n]).abs().max().item() for n in start)
    assert moved > 0 and trainer.state.global_step == 2
    # nothing outside what was asked for: the output folder (and its lock), the reference cache, the samples
    # file read, and negalign's own cache of the evaluation prompts' embeddings (decontamination)
    assert files_under(workdir) == set() and files_under(tmp_path / "inputs") == {"samples.jsonl"}
    assert {p.name for p in tmp_path.iterdir()} <= {"inputs", "work", "python-run", "ref-cache", "python-run.lock",
                                                    "home-cache"}
    assert all(name.startswith("decontamination/") for name in files_under(tmp_path / "home-cache"))
    card = (out / "README.md").read_text()
    assert "train_dataset" in card  # the card says the rows came from Python, not from a file

    # the same run through the command line, from files holding the same rows and model
    data = tmp_path / "inputs" / "negatives.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in NEGATIVES))
    cli_out = tmp_path / "cli-run"
    args = [f"--{key}={value}" for key, value in SETTINGS.items()]
    assert main(["train", *args, f"--model={tiny_model_dir}", f"--data={data}", f"--samples={samples}",
                 f"--output_dir={cli_out}", f"--cache_dir={tmp_path / 'ref-cache-cli'}"]) == 0
    from_cli = AutoModelForCausalLM.from_pretrained(cli_out).state_dict()
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(tensor, from_cli[name], rtol=0, atol=1e-6, msg=name)


def test_a_list_of_rows_and_a_peft_model_train_the_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    base = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    rows = [{"prompt": p, "chosen": "A kind answer.", "rejected": "A rude answer."} for p in PROMPTS]
    trainer = negalign.train({"objective": "dpo", "max_steps": 2, "per_device_train_batch_size": 2,
                              "learning_rate": 1e-2, "use_cpu": True, "save_strategy": "no",
                              "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")},
                             model=model, train_dataset=rows)  # tokenizer from the base model's name_or_path
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().max() > 0 for p in lora_b)  # the adapter moved (it starts at 0)
    assert all(torch.equal(p, base[n]) for n, p in trainer.model.named_parameters() if n in base)
    assert (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_objects_in_are_checked(tiny_model_dir, tmp_path):
    rows = [{"prompt": "hello", "rejected": "bad"}]
    with pytest.raises(ValueError, match="give the training rows once"):
        negalign.train({"objective": "npo", "data": "x.jsonl", "output_dir": str(tmp_path / "a")}, train_dataset=rows)
    with pytest.raises(ValueError, match=r"train_dataset row 1: "):
        negalign.train({"objective": "npo", "output_dir": str(tmp_path / "b"), "model": tiny_model_dir,
                        "use_cpu": True}, train_dataset=[{"prompt": "hi", "rejected": "no"}, "not a row"])


def test_evaluate_takes_model_objects_and_scores_as_from_paths(tiny_model_dir, tmp_path):
    from negalign.evaluation.evaluate import EvalSettings, evaluate

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,harmful\n" + "".join(f'"{p}",{str(i % 2 == 0).lower()}\n'
                                                    for i, p in enumerate(PROMPTS)))
    common = dict(prompt_files=[str(prompts)], data_dir=str(tmp_path / "none"), max_new_tokens=3, kl=False,
                  progress=False)
    from_paths = evaluate(EvalSettings(model=tiny_model_dir, reference=tiny_model_dir,
                                       output=str(tmp_path / "paths"), **common))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    from_objects = evaluate(EvalSettings(model="my-policy", output=str(tmp_path / "objects"), **common),
                            model=model, reference_model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            tokenizer=load_tokenizer(tiny_model_dir))
    assert from_objects["model"] == "my-policy" and from_objects["reference"] == "(model object)"
    for name, suite in from_paths["suites"].items():
        assert from_objects["suites"][name]["n"] == suite["n"]
        for key in ("harmful_compliance", "benign_refusal"):
            if key in suite:
                assert from_objects["suites"][name][key]["rate"] == suite[key]["rate"]


def _assembly_calls(monkeypatch) -> list[str]:
    """The negalign.assemble functions called, by name, wherever they are imported."""
    import negalign.assemble as assemble
    import negalign.pipeline as pipeline
    import negalign.trainer as trainer_module

    calls = []

    def recorded(name):
        real = getattr(assemble, name)
        return lambda *args, **kwargs: calls.append(name) or real(*args, **kwargs)

    for name, modules in (("training_set", (assemble, pipeline)), ("reference_pass", (assemble, pipeline)),
                          ("trainer_inputs", (trainer_module,))):
        spy = recorded(name)
        for module in modules:
            monkeypatch.setattr(module, name, spy)
    return calls


def test_negalign_trainer_built_the_way_trl_trainers_are(tiny_model_dir, tmp_path, monkeypatch):
    """NegalignTrainer(model=, args=, train_dataset=, processing_class=) as in a TRL script: the same weights as
    negalign.train with the same settings and rows, assembled by the same functions (negalign.assemble)."""
    from negalign.config import NegalignConfig
    from negalign.trainer import NegalignTrainer

    calls = _assembly_calls(monkeypatch)

    rows = [{"prompt": p, "chosen": "A kind answer.", "rejected": "A rude answer."} for p in PROMPTS]
    settings = {"objective": "dpo", "beta": 0.1, "max_steps": 2, "per_device_train_batch_size": 2,
                "learning_rate": 1e-3, "use_cpu": True, "save_strategy": "no", "seed": 5, "report_to": "none"}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = NegalignTrainer(model=model, args=NegalignConfig(output_dir=str(tmp_path / "trl-style"),
                                                              cache_dir=str(tmp_path / "c1"), **settings),
                              train_dataset=datasets.Dataset.from_list(rows),
                              processing_class=load_tokenizer(tiny_model_dir))
    assert sorted(calls) == ["reference_pass", "trainer_inputs", "training_set"]
    trainer.train()
    assert trainer.state.global_step == 2
    calls.clear()
    reference = negalign.train({**settings, "output_dir": str(tmp_path / "train"), "cache_dir": str(tmp_path / "c2")},
                               model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               tokenizer=load_tokenizer(tiny_model_dir), train_dataset=rows)
    assert calls == ["training_set", "reference_pass", "trainer_inputs"]
    theirs = reference.model.state_dict()
    moved = 0.0
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=1e-6, msg=name)
        moved = max(moved, (tensor - start[name]).abs().max().item())
    assert moved > 0
    with pytest.raises(ValueError, match="use_lora: not set up by NegalignTrainer"):
        NegalignTrainer(model=model, args=NegalignConfig(output_dir=str(tmp_path / "x"), use_lora=True, **settings),
                        train_dataset=rows, processing_class=load_tokenizer(tiny_model_dir))
