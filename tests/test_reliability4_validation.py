"""Reliability round 4, validation (docs/reliability.md promise 3): a bad number, count, size, chat template or
recipe stops in one line naming the option, exit status 2, before any model loads and before any file is
written (D18-D22, D24, D30, D32)."""

import time

import pytest

from negalign.cli import main


@pytest.fixture()
def neg(tmp_path):
    data = tmp_path / "neg.jsonl"
    data.write_text("".join(f'{{"prompt": "Question {i}?", "rejected": "No {i}."}}\n' for i in range(12)))
    return data


def refused(argv, capsys, *expected, alone=True):
    """main(argv) exits 2 with one error line holding every expected text (with `alone`, the only line on
    stderr; else the last, after progress messages); returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and (len(err.splitlines()) == 1 or not alone), err
    line = err.splitlines()[-1]
    for text in expected:
        assert text in line, err
    return line


def train_argv(tmp_path, neg, *settings):
    return ["train", "objective=npo", f"model={tmp_path / 'no-model'}", f"data={neg}",
            f"output_dir={tmp_path / 'run'}", *settings]


@pytest.mark.parametrize("settings, message", [
    (["beta=nan"], "beta: must be a finite number, got nan"),
    (["beta=inf"], "beta: must be a finite number, got inf"),
    (["objective=d2o", "alpha=nan", "k=0"], "alpha: must be a finite number, got nan"),
    (["learning_rate=.nan"], "learning_rate: must be a finite number, got nan"),
    (["sample_temperature=inf"], "sample_temperature: must be a finite number, got inf"),
])
def test_d19_nan_beta_is_refused_before_the_model_loads(settings, message, tmp_path, neg, capsys):
    refused(train_argv(tmp_path, neg, *settings), capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neg.jsonl"]  # no run folder, no lock


@pytest.mark.parametrize("setting, message", [
    ("max_prompts=-1", "max_prompts: must be >= 1, got -1"), ("max_prompts=0", "max_prompts: must be >= 1, got 0"),
    ("max_examples=-1", "max_examples: must be >= 1, got -1"),
    ("retain_max_prompts=0", "retain_max_prompts: must be >= 1, got 0"),
])
def test_d18_train_counts_below_one_are_refused(setting, message, tmp_path, neg, capsys):
    refused(train_argv(tmp_path, neg, setting), capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neg.jsonl"]


@pytest.mark.parametrize("value", ["-1", "0"])
def test_d18_sample_max_prompts_below_one_is_refused(value, tmp_path, neg, capsys):
    refused(["sample", "--data", str(neg), "--output", str(tmp_path / "s.jsonl"), "--model", str(tmp_path / "none"),
             "--max-prompts", value], capsys, f"max_prompts: must be >= 1, got {value}")
    assert list(tmp_path.iterdir()) == [neg]


@pytest.mark.parametrize("flag, value, message", [
    ("--max-prompts", "-1", "max_prompts: must be >= 1, got -1"),
    ("--max-prompts", "0", "max_prompts: must be >= 1, got 0"),
    ("--batch-size", "0", "batch_size: must be >= 1, got 0"),  # D32: refused after the load, answers/ left
    ("--max-new-tokens", "0", "max_new_tokens: must be >= 1, got 0"),
    ("--max-pairs", "-2", "max_pairs: must be >= 0, got -2"),
])
def test_d18_d32_eval_bad_counts_are_refused_before_anything_is_created(flag, value, message, tmp_path, capsys):
    model = tmp_path / "model"  # eval's default output is MODEL/eval: nothing may appear inside the model folder
    model.mkdir()
    refused(["eval", "--model", str(model), flag, value], capsys, message)
    assert list(tmp_path.iterdir()) == [model] and list(model.iterdir()) == []


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "nan", "temperature: must be a finite number, got nan"),
    ("--temperature", "inf", "temperature: must be a finite number, got inf"),
    ("--top-p", "nan", "top_p: must be a finite number, got nan"),
])
def test_d20_sample_nan_or_inf_temperature_is_refused_before_anything_is_written(flag, value, message, tmp_path,
                                                                                  neg, capsys):
    refused(["sample", "--data", str(neg), "--output", str(tmp_path / "s.jsonl"), "--model", str(tmp_path / "none"),
             flag, value], capsys, message)
    assert list(tmp_path.iterdir()) == [neg]


@pytest.mark.parametrize("flags, message", [
    (["--k", "1000000"], "k: must be <= 1024, got 1000000"),
    (["--batch-size", "100000"], "batch_size: must be <= 4096, got 100000"),
    (["--max-new-tokens", "10000000"], "max_new_tokens: must be <= 32768"),
    (["--k", "1000", "--batch-size", "64"], "64 x 1000 = 64000 rows decoded together, at most 8192"),
])
def test_d24_huge_k_is_refused_before_any_allocation_or_file(flags, message, tmp_path, neg, capsys):
    refused(["sample", "--data", str(neg), "--output", str(tmp_path / "s.jsonl"), "--model", str(tmp_path / "none"),
             *flags], capsys, message)
    assert list(tmp_path.iterdir()) == [neg]


def test_d24_train_k_is_bounded_too(tmp_path, neg, capsys):
    refused(train_argv(tmp_path, neg, "objective=d2o", "k=1000000"), capsys, "k: must be <= 1024, got 1000000")


def test_d30_a_recipe_of_many_unknown_keys_is_refused_fast_and_briefly(tmp_path, neg, capsys):
    recipe = tmp_path / "big.yaml"
    recipe.write_text("bta: 0.1\n" + "".join(f"key_{i}: {i}\n" for i in range(60_000)))  # under 1 MiB
    started = time.monotonic()
    err = refused(["train", "--config", str(recipe), f"output_dir={tmp_path / 'run'}"], capsys,
                  "unknown option(s): bta (did you mean beta?)", "and 59996 more")
    assert time.monotonic() - started < 20 and len(err) < 600, (time.monotonic() - started, len(err))


def test_d30_a_recipe_over_one_mib_is_refused_before_it_is_parsed(tmp_path, neg, capsys):
    recipe = tmp_path / "huge.yaml"
    recipe.write_text("".join(f"key_{i}: {i}\n" for i in range(150_000)))
    refused(["train", "--config", str(recipe)], capsys, f"{recipe}: ", "MiB is too big for a recipe")
    refused(["sample", "--config", str(recipe)], capsys, "MiB is too big for a recipe")  # every --config reader


BAD_TEMPLATES = [("{{ raise_exception('no chat here') }}", "no chat here"),
                 ("{% for m in messages %}{{ m.content }}", "TemplateSyntaxError")]


@pytest.mark.parametrize("template, message", BAD_TEMPLATES)
def test_d21_a_failing_chat_template_stops_sample_before_any_file(template, message, tmp_path, neg, capsys):
    refused(["sample", "--data", str(neg), "--output", str(tmp_path / "s.jsonl"), "--model", str(tmp_path / "none"),
             "--chat-template", template], capsys, "chat_template:", message)
    assert list(tmp_path.iterdir()) == [neg]


@pytest.mark.parametrize("template, message", BAD_TEMPLATES)
def test_d21_train_chat_template_on_the_command_line_is_text_not_yaml(template, message, tmp_path, neg, capsys):
    refused(train_argv(tmp_path, neg, f"chat_template={template}"), capsys, "chat_template:", message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neg.jsonl"]
    # a good template given the same way is taken as written (it was parsed as a YAML flow mapping)
    from negalign.config import parse_overrides

    good = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert parse_overrides([f"chat_template={good}", "--chat_template", good]) == {"chat_template": good}
    assert parse_overrides(["beta=0.2", "use_lora=true", "report_to=[]"]) == {"beta": 0.2, "use_lora": True,
                                                                             "report_to": []}


def test_d21_a_value_that_is_not_yaml_is_one_line(tmp_path, neg, capsys):
    refused(train_argv(tmp_path, neg, "report_to=[none"), capsys, "command line: report_to: cannot read '[none'")


@pytest.fixture(scope="module")
def gpt2tiny(tmp_path_factory, smollm_tokenizer):
    """A GPT-2 of 64 positions (absolute position embeddings: a longer sequence is an IndexError)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2tiny")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(smollm_tokenizer), n_positions=64, n_embd=32, n_layer=2,
                               n_head=2)).save_pretrained(folder)
    smollm_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def long_prompt(tmp_path):
    data = tmp_path / "long.jsonl"
    text = " ".join(f"word{i}" for i in range(400))  # several hundred tokens
    data.write_text(f'{{"prompt": "Short?", "rejected": "No."}}\n{{"prompt": "{text}", "rejected": "No."}}\n')
    return data


def test_d22_sample_refuses_a_prompt_longer_than_the_models_positions(gpt2tiny, long_prompt, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    argv = ["sample", "--data", str(long_prompt), "--output", str(out), "--model", gpt2tiny, "--no-decontaminate",
            "--k", "1", "--max-new-tokens", "8", "--no-anchor-report"]
    refused(argv, capsys, "prompt 2 ('word0 word1", "+ max_new_tokens 8", "64 positions", "max_prompt_length",
            alone=False)
    assert not out.exists() and not (tmp_path / "s.jsonl.meta.json").exists()
    # within the model's positions (prompts keep their last 40 tokens) it samples
    assert main([*argv, "--max-prompt-length", "40"]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_d22_train_refuses_a_max_length_beyond_the_models_positions(gpt2tiny, long_prompt, tmp_path, capsys):
    argv = ["train", "objective=npo", f"model={gpt2tiny}", f"data={long_prompt}", f"output_dir={tmp_path / 'run'}",
            "max_steps=1", "per_device_train_batch_size=2", "save_strategy=no", "use_cpu=true",
            f"cache_dir={tmp_path / 'cache'}", "decontaminate=false"]
    refused(argv, capsys, "max_length: 512 tokens, more than the 64 positions", "at most 64", alone=False)
    assert not (tmp_path / "cache").exists()  # stopped before the reference pass
    assert main([*argv, "max_length=64", "max_prompt_length=40", "overwrite=true"]) == 0
