"""A secret given to a run never reaches its folder (issue 33, finding 4): `hub_token` was written in plain
text into training_args.bin of the run and of every checkpoint."""

import json

import negalign

SECRET = "hf_negalignTestSecret0123456789"


def test_hub_token_is_in_no_file_of_the_run(tiny_model_dir, tmp_path):
    data = tmp_path / "negatives.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "rejected": f"Bad answer {i}"}) + "\n"
                            for i in range(4)))
    out = tmp_path / "run"
    trainer = negalign.train(model=tiny_model_dir, data=str(data), objective="npo", max_steps=2,
                             per_device_train_batch_size=2, output_dir=str(out), cache_dir=str(tmp_path / "cache"),
                             max_length=64, max_prompt_length=32, use_cpu=True, save_steps=1, hub_token=SECRET)
    assert trainer.args.hub_token == SECRET  # kept in memory, for a push
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" and "checkpoint-" in str(p) for p in files)  # checkpoints were written
    leaking = [str(p.relative_to(out)) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaking == []


def test_secret_fields_are_strings_under_token_or_key_names():
    from negalign.config import secret_fields

    settings = {"hub_token": "hf_x", "api_key": "k", "include_num_input_tokens_seen": "no", "max_new_tokens": 64,
                "sample_max_new_tokens": 64, "hub_model_id": "me/model", "push_to_hub_token": None}
    assert secret_fields(settings) == ["hub_token", "api_key"]
