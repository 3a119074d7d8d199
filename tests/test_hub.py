"""The Hub and tracking (issue 34, item 3): `push_to_hub` in train and `negalign export --push-to-hub` upload
negalign's model card and the run's files (never the Trainer's card in its place, never a token), checked against
a local fake of the Hub; `report_to: tensorboard` writes the logged losses, read back from the event file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import negalign
from negalign.cli import main

SECRET = "hf_negalignHubSecret0123456789"


def offline(monkeypatch) -> None:
    """HF_HUB_OFFLINE=1 for this test: huggingface_hub reads the variable once, at import, so its value is set too."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


class FakeHub:
    """The Hub's side of `huggingface_hub.HfApi`, on disk: `create_repo` records the repository, `create_commit`
    (where every upload ends: upload_folder, upload_file, a model's push_to_hub) writes each commit's files under
    `root/<repo_id>/` and keeps them, with the commit's token, in `commits`, and the README's YAML header is checked
    locally (the Hub's validate-yaml). Everything above those (transformers' Trainer.push_to_hub and checkpoint
    pushes, upload_folder's choice of files and its ignore patterns, the background uploads) runs unchanged.
    hf_xet's streamed upload is switched off, so upload_folder takes its one-commit path, and offline mode makes
    any other request to the Hub fail."""

    def __init__(self, root: Path):
        self.root, self.repos, self.commits = root, [], []

    def install(self, monkeypatch):
        import huggingface_hub.hf_api as hf_api
        from huggingface_hub import CommitInfo, CommitOperationDelete, RepoUrl

        hub = self

        def create_repo(api, repo_id, *, token=None, private=None, exist_ok=False, **kwargs):
            repo_id = repo_id if "/" in repo_id else f"someone/{repo_id}"  # the Hub puts it in the token's namespace
            if repo_id in hub.repos and not exist_ok:
                raise ValueError(f"{repo_id} exists")
            if repo_id not in hub.repos:
                hub.repos.append(repo_id)
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_commit(api, repo_id, operations, *, commit_message, token=None, revision=None, **kwargs):
            if repo_id not in hub.repos:
                raise ValueError(f"{repo_id}: no such repository (create_repo first)")
            folder, files = hub.root / repo_id, {}
            for op in operations:
                target = folder / op.path_in_repo
                if isinstance(op, CommitOperationDelete):
                    target.unlink(missing_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with op.as_file() as source:
                    files[op.path_in_repo] = source.read()
                target.write_bytes(files[op.path_in_repo])
            hub.commits.append({"repo": repo_id, "message": commit_message, "files": files, "token": token})
            return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{len(hub.commits):040x}",
                              commit_message=commit_message, commit_description="", oid=f"{len(hub.commits):040x}")

        def validate_yaml(api, content, *, repo_type=None, token=None):
            if content.startswith("---"):
                yaml.safe_load(content.split("---", 2)[1])  # raises on a malformed header

        offline(monkeypatch)
        monkeypatch.setattr(hf_api, "is_xet_available", lambda: False)
        monkeypatch.setattr(hf_api.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(hf_api.HfApi, "create_commit", create_commit)
        monkeypatch.setattr(hf_api.HfApi, "_validate_yaml", validate_yaml)
        return self

    def files(self, repo_id: str) -> dict[str, bytes]:
        folder = self.root / repo_id
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    return FakeHub(tmp_path / "hub").install(monkeypatch)


@pytest.fixture
def negatives(tmp_path):
    data = tmp_path / "negatives.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}: how do I do thing {i}?",
                                        "rejected": f"Sure, thing {i}: step one"}) + "\n" for i in range(4)))
    return data


def tiny_run(model, data, out, **extra):
    return negalign.train(model=model, data=str(data), objective="npo", max_steps=2, per_device_train_batch_size=2,
                          output_dir=str(out), cache_dir=str(out.parent / "cache"), max_length=64,
                          max_prompt_length=32, use_cpu=True, **extra)


RUN_FILES = {"README.md", "negalign_config.yaml", "versions.json", "train_log.json", "decontamination.json",
             "trained_prompts.jsonl"}


def assert_negalign_card(card: bytes) -> None:
    text = card.decode()
    assert "Trained with negalign, objective `npo`" in text and "tags: [negalign, npo]" in text
    assert "generated_from_trainer" not in text and "generated automatically" not in text  # the Trainer's draft


def test_push_to_hub_in_train_uploads_negalign_card_and_run_files_and_no_token(tiny_model_dir, negatives, tmp_path,
                                                                              hub):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    trainer = tiny_run(tiny_model_dir, negatives, out, push_to_hub=True, hub_model_id="me/tiny", hub_token=SECRET,
                       save_steps=1)
    assert hub.repos == ["me/tiny"]
    messages = [c["message"] for c in hub.commits]
    assert messages == ["Training in progress, step 1", "Training in progress, step 2", "End of training"]
    for commit in hub.commits:  # each checkpoint's push too: negalign's card and settings with its weights
        assert {"README.md", "negalign_config.yaml", "versions.json", "model.safetensors"} <= set(commit["files"])
        assert_negalign_card(commit["files"]["README.md"])
        assert commit["token"] == SECRET  # the push authenticates with hub_token ...
        leaking = [name for name, data in commit["files"].items() if SECRET.encode() in data]
        assert leaking == []  # ... which no uploaded file holds (training_args.bin included)
        assert not any(name.startswith("checkpoint-") for name in commit["files"])
    final = hub.files("me/tiny")
    assert RUN_FILES <= set(final) and "training_args.bin" in final
    for name in RUN_FILES:  # the run's own files, as they are on disk at the end
        assert final[name] == (out / name).read_bytes(), name
    assert_negalign_card(final["README.md"])  # and the Trainer's card replaced negalign's nowhere, not in the run
    log = json.loads(final["train_log.json"])
    assert [row["loss"] for row in log["log_history"] if "loss" in row] == [
        row["loss"] for row in trainer.state.log_history if "loss" in row]
    pushed = AutoModelForCausalLM.from_pretrained(hub.root / "me/tiny")
    for name, value in trainer.model.state_dict().items():  # the trained weights
        assert torch.equal(pushed.state_dict()[name], value.cpu()), name


def test_export_push_to_hub_uploads_the_whole_exported_folder(tiny_model_dir, negatives, tmp_path, hub, capsys):
    run, exported = tmp_path / "run", tmp_path / "exported"
    tiny_run(tiny_model_dir, negatives, run, save_strategy="no")
    assert main(["export", str(run), "--output", str(exported), "--push-to-hub", "me/exported"]) == 0
    assert "(pushed to me/exported)" in capsys.readouterr().out
    assert [c["message"] for c in hub.commits] == ["negalign export of run"]
    uploaded = hub.files("me/exported")
    assert uploaded == {p.relative_to(exported).as_posix(): p.read_bytes() for p in exported.rglob("*") if p.is_file()}
    assert RUN_FILES <= set(uploaded) and {"model.safetensors", "config.json", "tokenizer.json"} <= set(uploaded)
    assert_negalign_card(uploaded["README.md"])
    assert b"Exported by `negalign export` from `run`" in uploaded["README.md"]


def test_a_push_that_fails_says_in_one_line_what_is_saved_and_how_to_upload_it(tiny_model_dir, negatives, tmp_path,
                                                                               monkeypatch, capsys):
    offline(monkeypatch)  # no fake Hub: the first request to the Hub fails, offline
    run = tmp_path / "run"
    tiny_run(tiny_model_dir, negatives, run, save_strategy="no")
    capsys.readouterr()
    assert main(["export", str(run), "--output", str(tmp_path / "exported"), "--push-to-hub", "me/exported"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("negalign export: ")
    err = err.splitlines()[-1]
    assert f"{tmp_path / 'exported'} is written, but pushing it to the Hub (me/exported) failed" in err
    assert f"upload it with `hf upload me/exported {tmp_path / 'exported'}`" in err
    assert (tmp_path / "exported" / "model.safetensors").exists()


def test_a_train_push_that_fails_at_the_end_leaves_the_run_saved(tiny_model_dir, negatives, tmp_path, hub,
                                                                 monkeypatch):
    import huggingface_hub.hf_api as hf_api

    def cut(api, repo_id, operations, **kwargs):  # the repository was made at the start; the upload fails
        raise ConnectionError("Connection reset by peer")

    monkeypatch.setattr(hf_api.HfApi, "create_commit", cut)
    out = tmp_path / "run"
    with pytest.raises(OSError) as error:
        tiny_run(tiny_model_dir, negatives, out, push_to_hub=True, hub_model_id="me/tiny", hub_strategy="end",
                 save_strategy="no")
    assert str(error.value) == (f"the run is saved in {out}, but pushing it to the Hub (me/tiny) failed: Connection "
                                f"reset by peer; upload it with `hf upload me/tiny {out} "
                                "--exclude 'checkpoint-*'`")
    assert RUN_FILES <= {p.name for p in out.iterdir()} and (out / "model.safetensors").exists()
    assert_negalign_card((out / "README.md").read_bytes())


def test_report_to_tensorboard_writes_the_logged_losses(tiny_model_dir, negatives, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'negalign[tracking]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logs))  # transformers 5: where the Trainer's writer goes
    trainer = tiny_run(tiny_model_dir, negatives, tmp_path / "run", report_to="tensorboard", save_strategy="no",
                       hub_token=SECRET)
    events = sorted(logs.glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert SECRET.encode() not in events[0].read_bytes()  # the settings it records have the token blanked
    accumulator = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    accumulator.Reload()
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert [row["step"] for row in logged] == [1, 2]
    for key in ("loss", "npo/negative_logratio", "grad_norm", "learning_rate"):
        scalars = accumulator.Scalars(f"train/{key}")
        assert [s.step for s in scalars] == [1, 2], key
        assert [s.value for s in scalars] == pytest.approx([row[key] for row in logged], rel=1e-6), key


def test_a_run_killed_before_its_first_checkpoint_with_tensorboard_logs_is_still_a_run(tiny_model_dir, negatives,
                                                                                       tmp_path):
    out = tmp_path / "run"  # what report_to tensorboard leaves when the run is killed before its first checkpoint
    (out / "runs" / "Jan01_00-00-00_host").mkdir(parents=True)
    (out / "runs" / "Jan01_00-00-00_host" / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"")
    tiny_run(tiny_model_dir, negatives, out, save_strategy="no")  # the same command again: it trains
    assert (out / "train_log.json").exists() and (out / "runs").is_dir()
    other = tmp_path / "other"  # a folder named runs holding anything else is not a run's
    (other / "runs").mkdir(parents=True)
    (other / "runs" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that are not a negalign training run \(runs\)"):
        tiny_run(tiny_model_dir, negatives, other, save_strategy="no")
