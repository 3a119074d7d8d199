"""`negalign export RUN --output DIR [--merge]`: a trained run -> a standalone Hugging Face model folder.

A LoRA run holds only its adapter; `--merge` folds it into the base weights (peft `merge_and_unload`) so the
result loads with plain `transformers`. The folder gets the weights (safetensors), the tokenizer, the run's
run files (provenance.RUN_FILES: `negalign_config.yaml`, `versions.json`, `train_log.json`, `trained_prompts.jsonl`,
`decontamination.json`, `sampling_context.json` for D2O, ...) and a model card (README.md) with the base model,
objective and settings, data and, when the run was evaluated (`RUN/eval/eval.json`), its evaluation numbers.
Written to a temporary folder and renamed into place. `--push-to-hub REPO` then uploads that whole folder, card and
run files included, in one commit (huggingface_hub's upload_folder; the token is huggingface_hub's: HF_TOKEN or
`hf auth login`).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from negalign.files import read_yaml
from negalign.outputs import check_before_lock, folder_free, new_folder
from negalign.provenance import RUN_FILES

CARRIED = RUN_FILES


def _run_settings(run: Path) -> dict:
    path = run / "negalign_config.yaml"
    return (read_yaml(path) or {}) if path.exists() else {}


def check_run(run: Path) -> None:
    """Refuse, before anything loads or is written, a folder that is not a finished `negalign train` run: a
    plain Hugging Face model folder has no run files or settings to carry and needs no export."""
    from negalign.models import ADAPTER_CONFIG
    from negalign.provenance import CONFIG_FILE

    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such folder (export takes a `negalign train` output_dir)")
    if not (run / CONFIG_FILE).exists():
        raise ValueError(f"{run} is not a negalign training run (no {CONFIG_FILE} in it): export takes a `negalign "
                         "train` output_dir; a plain Hugging Face model folder loads as it is, with no export")
    if not (run / ADAPTER_CONFIG).exists() and not (run / "config.json").exists():
        raise ValueError(f"{run}: the run has no final model (no config.json or {ADAPTER_CONFIG}): it did not "
                         "finish; rerun its `negalign train` command to finish it, then export")


def load_run_model(run: str | os.PathLike, merge: bool = False):
    """The run's model as a plain transformers model (adapter merged when `merge`), and whether it was LoRA."""
    from negalign.models import ADAPTER_CONFIG, load_model

    run = Path(run)
    if not (run / ADAPTER_CONFIG).exists():
        if not (run / "config.json").exists():
            raise FileNotFoundError(f"{run}: not a trained run (no config.json or adapter_config.json)")
        return load_model(str(run)), False
    if not merge:
        raise ValueError(f"{run} holds a LoRA adapter, not a whole model: pass --merge to fold it into the base "
                         "weights (or load the adapter folder itself with peft)")
    return load_model(str(run)), True  # an adapter folder loads as its base with the adapter merged


def evaluation_section(run: Path) -> list[str]:
    path = run / "eval" / "eval.json"
    if not path.exists():
        return []
    from negalign.data.readers import read_json_file
    from negalign.evaluation.evaluate import summary_lines

    result = read_json_file(path, f"rerun `negalign eval` on {run}, or move {path.parent} aside")
    return ["", "## Evaluation", "", f"`negalign eval` of this run ({path.relative_to(run)}; rates with their n "
            "and Wilson 95 % intervals):", "", "```", *summary_lines(result), "```"]


def export(run: str | os.PathLike, output: str | os.PathLike, merge: bool = False, push_to_hub: str | None = None,
           overwrite: bool = False) -> Path:
    from negalign.models import load_tokenizer

    run, output = Path(run), Path(output)
    # never over the run itself or a folder around it (--overwrite once replaced them whole); an earlier export
    # or anything else there only with --overwrite, which moves it aside once the new folder is written
    check_before_lock(output, [("the run to export", run)], folder=True)
    check_run(run)
    folder_free(output, overwrite)
    model, was_lora = load_run_model(run, merge)
    settings = _run_settings(run)
    tokenizer = load_tokenizer(str(run) if (run / "tokenizer_config.json").exists() else settings.get("model", str(run)))
    with new_folder(output, "export", overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name in CARRIED:
            if (run / name).exists():
                shutil.copyfile(run / name, tmp / name)  # not copy2: the copy gets the umask, not the run's mode
        card = (run / "README.md").read_text(encoding="utf-8") if (run / "README.md").exists() else (
            f"# {run.name}\n\nTrained with negalign ({settings.get('objective', 'unknown objective')}).\n")
        card = card.rstrip("\n") + "\n" + "\n".join(evaluation_section(run)) + "\n\n" + (
            f"Exported by `negalign export` from `{run.name}`"
            + (": the LoRA adapter merged into the base weights (peft merge_and_unload)." if was_lora else ".")
            + "\n")
        (tmp / "README.md").write_text(card, encoding="utf-8")
    if push_to_hub:
        push_folder(output, push_to_hub, f"negalign export of {run.name}")
    return output


def push_folder(folder: Path, repo_id: str, message: str) -> str:
    """Upload every file of `folder` to the Hub model repository `repo_id` (created if missing) in one commit;
    returns the repository's id. A failure is one line saying the folder is written and how to upload it."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        repo_id = api.create_repo(repo_id, exist_ok=True).repo_id
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message)
    except OSError as error:  # the Hub's errors (no token, no network, refused) are OSErrors
        raise OSError(f"{folder} is written, but pushing it to the Hub ({repo_id}) failed: "
                      f"{' '.join(str(error).split()).rstrip('.')}; upload it with `hf upload {repo_id} {folder}`") from error
    return repo_id


def cmd_export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="negalign export", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("run", help="a `negalign train` output_dir")
    parser.add_argument("--output", required=True, help="folder for the standalone model")
    parser.add_argument("--merge", action="store_true", help="fold a LoRA adapter into the base weights")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload to this Hub repository")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output: what is there is "
                        "moved aside to OUTPUT.replaced-<time> (never the run itself or a folder that holds it)")
    args = parser.parse_args(argv)
    out = export(args.run, args.output, args.merge, args.push_to_hub, args.overwrite)
    print(f"negalign export: {args.run} -> {out}" + (f" (pushed to {args.push_to_hub})" if args.push_to_hub else ""))
    return 0


__all__ = ["export", "load_run_model"]
