"""What a saved model carries besides its weights: the resolved config, the package versions, a model card
(README.md) and, for D2O, where its anchors came from (sampling_context.json)."""

from __future__ import annotations

import functools
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version

import yaml

from negalign.files import atomic_write_text, portable
from negalign.methods import method

PACKAGES = ("negalign", "torch", "transformers", "datasets", "peft", "accelerate")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def model_card(config, anchors: dict | None) -> str:
    """README.md for the saved model: what it was trained from and how, and for D2O the sampling context its
    anchors were drawn under (a user's choice that shapes the result as much as the data)."""
    lines = ["---", "library_name: transformers", "tags: [negalign, " + config.objective + "]",
             f"base_model: {portable(config.model)}", "---", "",
             f"# {os.path.basename(os.path.normpath(config.output_dir))}", "",
             f"Trained with negalign, objective `{config.objective}`, from `{portable(config.model)}` on "
             f"`{portable(config.data)}`.",
             "", "| setting | value |", "|---|---|"]
    for key in ("objective", "beta", "alpha", "k", "logp_reduction", "learning_rate", "max_steps",
                "num_train_epochs", "per_device_train_batch_size", "max_length", "max_prompt_length", "use_lora",
                "reference", "sampling", "samples", "max_prompts", "seed"):
        if key == "alpha" and "alpha" not in method(config.objective).hyperparameters:
            continue
        if key in ("sampling", "samples") and not method(config.objective).reads_samples_file:
            continue
        if key == "k" and not method(config.objective).anchored:  # d2o and context distillation
            continue
        if key == "num_train_epochs" and config.max_steps > 0:  # max_steps decides the length then
            continue
        lines.append(f"| {key} | {getattr(config, key)} |")
    if anchors:
        context = anchors.get("sampling_context")
        lines += ["", "## D2O anchors", ""]
        if context in (None, "unknown"):
            lines.append("Sampling context: none (the anchors were drawn after each prompt alone)." if context is None
                         else "Sampling context: unknown (the samples file carries no .meta.json).")
        else:
            lines.append(f"Sampling context `{context['sha256']}` ({context['demonstrations']} demonstrations"
                         + (", with a system message" if context["system"] else "") + "), placed before each "
                         "prompt only while the anchors were sampled, never in training (sampling_context.json "
                         "holds its messages):")
            lines.append("")
            lines += [f"> **{m['role']}**: {' '.join(m['content'].split())}" + "  " for m in context["messages"]]
        for other in anchors.get("mixed_with") or []:
            drawn = other.get("sampling_context")
            lines += ["", f"Also in the file: {other.get('rows')} anchors from `{other.get('file')}`, drawn "
                      + ("with no sampling context." if drawn is None else f"under sampling context `{drawn['sha256']}`.")]
    if config.chat_template:
        import hashlib

        from negalign.models import resolve_chat_template

        digest = hashlib.sha256(resolve_chat_template(config.chat_template).encode()).hexdigest()[:12]
        given = (f"the file `{os.path.basename(config.chat_template)}`"
                 if os.path.isfile(os.path.expanduser(config.chat_template)) else "given inline")
        lines += ["", f"Chat template: not the starting model's but {given} (sha256 {digest}); training used it and "
                  "this folder's tokenizer keeps it."]
    lines += ["", "Files: `negalign_config.yaml` (every setting), `versions.json` (package versions), `train_log.json` "
              "(the logged losses and metrics), `trained_prompts.jsonl` (every prompt trained on) and "
              "`decontamination.json` (the training prompts left out as evaluation prompts).", ""]
    return "\n".join(lines)


CONFIG_FILE = "negalign_config.yaml"
# What a run holds besides its weights, tokenizer and card (README.md): write_provenance's files (in the run and in
# every checkpoint), the retain set's record, then the pipeline's, written last (base_model.json: a LoRA run's base
# weights, models.BASE_RECORD; train_log.json marks a finished run). `negalign export` carries them; a Hub push
# uploads them with the card.
RUN_FILES = (CONFIG_FILE, "inputs.json", "versions.json", "sampling_context.json", "trained_prompts.jsonl",
             "retain_decontamination.json", "decontamination.json", "base_model.json", "train_log.json")


def resolved_settings(config) -> dict:
    """Every setting of a run as plain YAML-able values, paths made portable: what negalign_config.yaml holds."""
    resolved = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    return portable(json.loads(json.dumps(resolved, default=str)))


INPUTS_FILE = "inputs.json"
# The settings that name local files a run trains from: a resume compares what they hold (sha256), not their names,
# so an edited or redrawn file is a change and the same file reached by another path is not. `model` is recorded
# by its weights (negalign.models.model_fingerprint of the starting model), known only once it is loaded.
INPUT_FILES = ("data", "samples", "benign_samples", "retain_data", "sampling_context", "chat_template")


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: an edit between calls is hashed again
    from negalign.flag import file_sha256

    return file_sha256(path)


def content_fingerprint(path: str) -> str | None:
    """sha256 of a local file (of a folder: of its files' names and contents); None for what is not a local file
    or folder (a Hub data set's name, rows handed over from Python, a named sampling context, a template given
    inline)."""
    path = os.path.realpath(os.path.expanduser(path))
    if os.path.isfile(path):
        stat = os.stat(path)
        return _sha256(path, stat.st_size, stat.st_mtime_ns)
    if not os.path.isdir(path):
        return None
    import hashlib

    digest = hashlib.sha256()
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            digest.update(os.path.relpath(os.path.join(root, name), path).encode() + b"\0")
            digest.update(content_fingerprint(os.path.join(root, name)).encode())
    return digest.hexdigest()


def input_fingerprints(settings: dict) -> dict[str, str]:
    """{setting: sha256} of the local files that a run's settings (a dict: resolved_settings or to_dict) name
    (the pipeline adds `model` once it is loaded and keeps the whole as config._inputs, which every save writes
    as inputs.json)."""
    return {key: digest for key in INPUT_FILES if settings.get(key)
            and (digest := content_fingerprint(str(settings[key]))) is not None}


TRAINED_PROMPTS = "trained_prompts.jsonl"


def trained_prompts(items: list[dict], retain_prompts: list | None = None) -> list[dict]:
    """One row per distinct prompt the model was trained on: its messages, its role (`feedback`: a row of the
    training data; `benign`: a D2O benign prompt with anchors and no human negative; `retain`: a retain-set
    prompt) and how many training examples it gave."""
    from negalign.data import prompt_key

    rows: dict[tuple[str, str], dict] = {}
    for item in items:
        role = "feedback" if item.get("has_negative", True) else "benign"
        entry = rows.setdefault((role, item["prompt_key"]), {"prompt": item["prompt"], "role": role, "examples": 0})
        entry["examples"] += 1
    for prompt in retain_prompts or []:
        entry = rows.setdefault(("retain", prompt_key(prompt)), {"prompt": prompt, "role": "retain", "examples": 0})
        entry["examples"] += 1
    return list(rows.values())


def write_provenance(output_dir: str, config, anchors: dict | None = None, prompts: list[dict] | None = None) -> None:
    os.makedirs(output_dir, exist_ok=True)
    if prompts is not None:  # the prompts behind these weights, so nobody evaluates on them by mistake
        atomic_write_text(os.path.join(output_dir, TRAINED_PROMPTS),
                          "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in prompts))
    atomic_write_text(os.path.join(output_dir, CONFIG_FILE), yaml.safe_dump(resolved_settings(config), sort_keys=True))
    atomic_write_text(os.path.join(output_dir, "versions.json"), json.dumps(package_versions(), indent=2))
    if getattr(config, "_inputs", None) is not None:  # the inputs as they were when the run started (pipeline)
        atomic_write_text(os.path.join(output_dir, INPUTS_FILE), json.dumps(config._inputs, indent=2) + "\n")
    if anchors is not None:
        atomic_write_text(os.path.join(output_dir, "sampling_context.json"),
                          json.dumps(portable(anchors), indent=2) + "\n")
    atomic_write_text(os.path.join(output_dir, "README.md"), model_card(config, anchors))
    portable_adapter_config(output_dir, config.model)


class RecordsProvenance:
    """Mixed into a Trainer (before transformers.Trainer): every save, checkpoints and the final model alike,
    carries the run's record (write_provenance), the model card is negalign's, and a checkpoint's Hub push
    takes the card and run files along. Reads the trainer's `anchor_provenance` (where D2O's anchors came
    from) and `retain` (a negalign.retain.RetainSet or None)."""

    anchor_provenance: dict | None = None
    retain = None

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        prompts = trained_prompts(self.train_dataset, self.retain.prompts if self.retain is not None else None)
        write_provenance(output_dir or self.args.output_dir, self.args, self.anchor_provenance, prompts)

    def create_model_card(self, *args, **kwargs) -> None:
        """negalign's model card (model_card), not the Trainer's draft: Trainer.push_to_hub calls this just before
        it uploads output_dir, and the Trainer's card would replace README.md there and on the Hub."""
        if self.is_world_process_zero():
            atomic_write_text(os.path.join(self.args.output_dir, "README.md"),
                              model_card(self.args, self.anchor_provenance))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """A checkpoint's push (hub_strategy every_save, checkpoint, all_checkpoints) uploads output_dir, where the
        Trainer copies only the checkpoint's weights and tokenizer: the card and run files go with them."""
        if self.is_world_process_zero() and self.args.hub_strategy != "end":
            import shutil

            for name in ("README.md", *RUN_FILES):
                if os.path.isfile(os.path.join(checkpoint_folder, name)):
                    shutil.copy2(os.path.join(checkpoint_folder, name), os.path.join(self.args.output_dir, name))
        super()._push_from_checkpoint(checkpoint_folder)


def portable_adapter_config(output_dir: str, model: str) -> None:
    """peft records a bundled model's base as negalign's cache folder of the converted GGUF, an absolute path of
    one machine: name it by its short name, which negalign resolves on any machine (load_model reads adapter
    folders). Any other base stays as peft wrote it."""
    from negalign.models import ADAPTER_CONFIG, bundled_short_name

    path = os.path.join(output_dir, ADAPTER_CONFIG)
    if not os.path.exists(path):
        return
    adapter = json.loads(open(path, encoding="utf-8").read())
    short = bundled_short_name(model) or bundled_short_name(adapter.get("base_model_name_or_path") or "")
    if short is not None:
        adapter["base_model_name_or_path"] = short
        atomic_write_text(path, json.dumps(adapter, indent=2, sort_keys=True) + "\n")
