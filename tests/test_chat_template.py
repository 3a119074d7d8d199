"""A chat template given by the user (issue 34): a Jinja file or the template itself replaces the tokenizer's
for every command, and a name that is neither is refused before any model loads."""

import json

import pytest

from negalign.cli import main
from negalign.data import encode_prompt_with_context
from negalign.models import ModelOptions, load_tokenizer, resolve_chat_template

# a template no tokenizer ships: every message between brackets with its role, then the answer marker
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}: {{ m['content'] }}]{% endfor %}"
            "{% if add_generation_prompt %}ANSWER:{% endif %}")


def test_a_file_or_a_template_is_taken_and_anything_else_refused(tmp_path):
    path = tmp_path / "template.jinja"
    path.write_text(TEMPLATE)
    assert resolve_chat_template(str(path)) == TEMPLATE == resolve_chat_template(TEMPLATE)
    with pytest.raises(ValueError, match="chat_template: 'tempalte.jinja' is neither a file nor a Jinja template"):
        resolve_chat_template("tempalte.jinja")
    with pytest.raises(ValueError, match="neither a file nor a Jinja template"):
        ModelOptions(chat_template="missing.jinja")  # checked when the options are made


def test_the_tokenizer_encodes_prompts_with_the_given_template(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir, chat_template=TEMPLATE)
    ids = encode_prompt_with_context([{"role": "user", "content": "Hi there"}], None, tokenizer, 256)
    assert tokenizer.decode(ids) == "[user: Hi there]ANSWER:"
    plain = load_tokenizer(tiny_model_dir)
    assert "ANSWER:" not in plain.decode(encode_prompt_with_context([{"role": "user", "content": "Hi"}], None,
                                                                    plain, 256))


def test_sample_uses_the_template_from_the_command_line(tiny_model_dir, tmp_path, monkeypatch):
    import negalign.sampling as sampling

    seen, real = [], sampling.sample

    def spy(model, tokenizer, *args, **kwargs):
        seen.append(tokenizer.chat_template)
        return real(model, tokenizer, *args, **kwargs)

    monkeypatch.setattr(sampling, "sample", spy)
    data = tmp_path / "negatives.jsonl"
    data.write_text(json.dumps({"prompt": "Write a poem about the sea.", "rejected": "No."}) + "\n")
    template = tmp_path / "t.jinja"
    template.write_text(TEMPLATE)
    assert main(["sample", "--model", tiny_model_dir, "--data", str(data), "--output", str(tmp_path / "s.jsonl"),
                 "--k", "1", "--max-new-tokens", "2", "--chat-template", str(template), "--no-anchor-report"]) == 0
    assert seen == [TEMPLATE]
    assert main(["sample", "--model", tiny_model_dir, "--data", str(data), "--output", str(tmp_path / "t.jsonl"),
                 "--chat-template", "no-such.jinja"]) == 2  # refused in one line before the model loads


def test_training_uses_the_template_saves_it_and_says_so_in_the_card(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from negalign import train

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Write a line about the number {i}.", "chosen": "Fine.",
                                        "rejected": "No."}) + "\n" for i in range(4)))
    template = tmp_path / "brackets.jinja"
    template.write_text(TEMPLATE)
    out = tmp_path / "run"
    trainer = train({"model": tiny_model_dir, "data": str(data), "objective": "dpo", "max_steps": 1,
                     "per_device_train_batch_size": 2, "output_dir": str(out), "use_cpu": True,
                     "save_strategy": "no", "chat_template": str(template), "cache_dir": str(tmp_path / "cache")})
    assert trainer.processing_class.chat_template == TEMPLATE
    assert AutoTokenizer.from_pretrained(out).chat_template == TEMPLATE  # the trained model keeps it
    card = (out / "README.md").read_text()
    assert "Chat template: not the starting model's but the file `brackets.jinja`" in card
    with pytest.raises(ValueError, match="neither a file nor a Jinja template"):
        train({"model": tiny_model_dir, "data": str(data), "objective": "dpo", "output_dir": str(tmp_path / "r2"),
               "chat_template": "brackets.jnja"})
