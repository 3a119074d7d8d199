"""Where a training run starts, given what its output_dir already holds: resume a checkpoint of the same settings,
refuse one of other settings, and never train over a finished run or a folder that is not a run unless
`overwrite: true` (which moves it aside: negalign.outputs)."""

from __future__ import annotations

import functools
import json
import logging
import os
import re

from negalign.config import NegalignConfig
from negalign.outputs import DiskFull, check_apart, claim
from negalign.provenance import INPUT_FILES

logger = logging.getLogger("negalign")

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(folder: str) -> str | None:
    """Why `folder` cannot be resumed from (None if it can). Trainer writes a checkpoint in place and its
    trainer_state.json last, so a run killed while saving leaves a folder without a readable state."""
    state = os.path.join(folder, "trainer_state.json")
    if not os.path.isdir(folder):
        return "does not exist"
    try:
        with open(state, encoding="utf-8") as handle:
            json.load(handle)["global_step"]
    except (OSError, ValueError, KeyError):
        return ("has no readable trainer_state.json (not a Trainer checkpoint, or one cut short by a kill while "
                "it was being saved)")
    names = os.listdir(folder)
    if not any(n.endswith((".safetensors", ".safetensors.index.json", ".bin")) or n.startswith("global_step")
               or n.startswith("pytorch_model_fsdp") for n in names):
        return "is incomplete (no model weights)"
    for name in sorted(names):
        if (problem := damaged(os.path.join(folder, name))) is not None:
            return f"has a damaged {name} ({problem})"
    return None


def damaged(path: str) -> str | None:
    """What is wrong with a file a checkpoint holds, if a kill or a full disk cut it short: a safetensors file
    must be exactly as long as its header says, a torch.save file (optimizer.pt, scheduler.pt, *.bin) must end
    in its zip directory. Only the header and the directory are read, not the tensors."""
    import zipfile

    if not os.path.isfile(path):
        return None
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if path.endswith(".safetensors"):
            length = int.from_bytes(head, "little") if len(head) == 8 else size
            if 8 + length > size:
                return f"cut short: {size} bytes, its header alone says {8 + length}"
            try:
                header = json.loads(handle.read(length))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                return "its header is unreadable"
            return None if 8 + length + end == size else f"{size} bytes where its header says {8 + length + end}"
    if path.endswith((".pt", ".pth", ".bin")) and head[:4] == b"PK\x03\x04":  # torch.save's zip format
        try:
            zipfile.ZipFile(path).close()  # reads the central directory at the end of the file
        except (zipfile.BadZipFile, OSError):
            return f"cut short: {size} bytes and no zip directory at its end"
    return None


# settings that may change between a run and its resume without changing what it computes
RESUME_FREE = {"output_dir", "logging_dir", "run_name", "resume_from_checkpoint", "save_strategy", "save_steps",
               "checkpoint_min_minutes",
               "save_total_limit", "save_only_model", "save_on_each_node", "logging_steps", "logging_strategy",
               "logging_first_step", "report_to", "disable_tqdm", "wait_for_lock", "cache_dir",
               "host_mmap_threshold_mb", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token",
               "hub_private_repo", "hub_always_push", "hub_revision", "project", "log_level", "log_level_replica",
               "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_persistent_workers",
               "dataloader_pin_memory", "skip_memory_metrics", "local_rank", "overwrite"}


def newest_checkpoint(output_dir: str, quiet: bool = False) -> str | None:
    """The newest complete checkpoint-N in output_dir (incomplete ones, left by a kill during a save, are
    passed over with a warning unless `quiet`), or None."""
    found = []
    if os.path.isdir(output_dir):
        found = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir)
                        if (m := CHECKPOINT_DIR.match(name))), reverse=True)
    for _, name in found:
        folder = os.path.join(output_dir, name)
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if not quiet:
            logger.warning("negalign: passing over %s: it %s", folder, problem)
    return None


# settings that name a model or a file: the same thing reached by another path (another working directory, another
# cache folder) is the same setting; a resume compares the files' contents where both runs recorded them
MODEL_SETTINGS = ("model", "ref_model", "ref_plus_model")


def _place(key: str, value):
    """What a path setting names, however it is spelled: a bundled model's short name (also for its converted
    folder in any machine's cache, .../models/<short name>), else the real path of a local file, else the name."""
    from negalign.models import SHORT_NAMES, bundled_short_name

    if not isinstance(value, str):
        return value
    parts = os.path.normpath(value).split(os.sep)
    if key in MODEL_SETTINGS and (bundled_short_name(value) or parts[-2:-1] == ["models"] and parts[-1] in SHORT_NAMES):
        return parts[-1]
    path = os.path.expanduser(value)
    return os.path.realpath(path) if os.path.exists(path) else value


@functools.cache
def _defaults() -> dict:
    """Every setting's default, as negalign_config.yaml would record it."""
    import dataclasses

    from negalign.files import portable

    found = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
             for f in dataclasses.fields(NegalignConfig)
             if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    return portable(json.loads(json.dumps(found, default=str)))


def recorded_inputs(folder: str) -> dict | None:
    """The fingerprints of its inputs that a run or checkpoint recorded (inputs.json), None if it has none (an
    older negalign wrote it)."""
    from negalign.provenance import INPUTS_FILE

    try:
        with open(os.path.join(folder, INPUTS_FILE), encoding="utf-8") as handle:
            found = json.load(handle)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def compare_settings(then: dict, then_inputs: dict | None, now: dict, now_inputs: dict, written: str) -> list[str]:
    """How the settings `now` differ from those of a run recorded as `then` ("key: then -> now"), leaving out
    RESUME_FREE ones. What changes results is compared, not how it is written down: a file both runs fingerprinted
    by its content (named as "changed since `written` was written"), a model the run fingerprinted not by its
    path (its weights are compared once loaded: model_changed), other paths by what they name (_place), and a
    setting added since that run, absent from its record, is no change at its default."""
    by_content = {key for key in then_inputs or {} if key in now_inputs or key == "model"}
    changed = []
    for key in sorted((set(then) | set(now)) - RESUME_FREE - by_content):
        if key not in then and key in _defaults() and now.get(key) == _defaults()[key]:
            continue
        old, new = then.get(key), now.get(key)
        if old != new and (key not in (*MODEL_SETTINGS, *INPUT_FILES) or _place(key, old) != _place(key, new)):
            changed.append(f"{key}: {old!r} -> {new!r}")
    for key in sorted(by_content & set(now_inputs)):
        if then_inputs[key] != now_inputs[key]:
            changed.append(f"{key}: {os.path.basename(str(now.get(key)))} changed since {written} was written")
    return changed


def _written(folder: str) -> str:
    name = os.path.basename(os.path.normpath(folder))
    return name if CHECKPOINT_DIR.match(name) else f"the run in {folder}"


def settings_changed(config: NegalignConfig, checkpoint: str) -> list[str]:
    """The settings in which `config` differs from the run that wrote `checkpoint` (compare_settings); a
    checkpoint without a saved config counts as all-different."""
    import yaml

    from negalign.provenance import CONFIG_FILE, input_fingerprints, resolved_settings

    try:
        with open(os.path.join(checkpoint, CONFIG_FILE), encoding="utf-8") as handle:
            then = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError):
        return [f"{CONFIG_FILE} missing or unreadable in {checkpoint}"]
    now = resolved_settings(config)
    return compare_settings(then, recorded_inputs(checkpoint), now, input_fingerprints(now), _written(checkpoint))


def model_changed(checkpoint: str, model: str, fingerprint: str) -> list[str]:
    """The model's part of settings_changed, once it is loaded: its weights (`fingerprint`) against those the run
    that wrote `checkpoint` started from."""
    recorded = (recorded_inputs(checkpoint) or {}).get("model")
    if recorded is None or recorded == fingerprint:
        return []
    return [f"model: the weights of {model} are not those {_written(checkpoint)} was trained from"]


def refuse_or_warn(output_dir: str, explicit: bool, checkpoint: str, changed: list[str]) -> None:
    """Settings that differ from the checkpoint's: an error, unless the user asked to resume it anyway
    (`explicit`: resume_from_checkpoint is set)."""
    if not changed:
        return
    if explicit:
        logger.warning("negalign: resuming %s with changed settings: %s", checkpoint, "; ".join(changed))
        return
    raise ValueError(f"{output_dir} holds checkpoints of a run with other settings "
                     f"({'; '.join(changed[:6])}{'; ...' if len(changed) > 6 else ''}); rerun with that "
                     "run's settings to resume it, set resume_from_checkpoint: true to resume it with these, "
                     "overwrite: true (--overwrite) to move it aside and start over, or use another output_dir")


def _warn_unknown_inputs(checkpoint: str) -> None:
    if recorded_inputs(checkpoint) is None:
        logger.warning("negalign: %s records no fingerprints of its input files (an older negalign wrote it): "
                       "whether its data or samples files changed since is unknown", checkpoint)


def checkpoint_step(checkpoint: str) -> int:
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
        return int(json.load(handle)["global_step"])


def resolve_checkpoint(config: NegalignConfig) -> str | None:
    """Where training starts. `resume_from_checkpoint` unset (the default): the newest complete checkpoint in
    output_dir if there is one and it was written with the same settings (a different run's checkpoints there
    are an error, not silently overwritten or resumed); true: the newest complete one whatever its settings;
    a folder: that checkpoint (refused with a clear message if incomplete); false: start over, which needs an
    output_dir without checkpoints."""
    wanted = config.resume_from_checkpoint
    explicit = wanted is True or str(wanted).lower() == "true"
    if wanted is None or wanted == "" or explicit:
        folder = newest_checkpoint(config.output_dir)
        if folder is None and explicit:
            raise ValueError(f"resume_from_checkpoint: true, but {config.output_dir} holds no complete checkpoint-N "
                             "folder; train without resume_from_checkpoint, or point output_dir at the run to "
                             "resume")
        if folder is None:
            return None
        refuse_or_warn(config.output_dir, explicit, folder, settings_changed(config, folder))
        _warn_unknown_inputs(folder)
        if not explicit:
            logger.info("negalign: resuming from %s (step %d of %s), the newest complete checkpoint of this run "
                        "with the same settings", folder, checkpoint_step(folder),
                        config.max_steps if config.max_steps > 0 else "the epochs")
        return folder
    if wanted is False or str(wanted).lower() == "false":
        if newest_checkpoint(config.output_dir) is not None:
            raise ValueError(f"resume_from_checkpoint: false, but {config.output_dir} holds checkpoints of an earlier "
                             "run; set overwrite: true (--overwrite) to move it aside and start over, or use another "
                             "output_dir")
        return None
    problem = checkpoint_problem(str(wanted))
    if problem is not None:
        raise ValueError(f"resume_from_checkpoint: {wanted} {problem}; resume from an earlier checkpoint-N, or "
                         "set resume_from_checkpoint: true to take the newest complete one")
    return str(wanted)


# what a run writes into output_dir before its first checkpoint (a run killed that early is still a run)
EARLY_FILES = {"refreshed_samples", "retain_decontamination.json"}
TENSORBOARD_DIR = "runs"  # report_to tensorboard's events, from the start (transformers: output_dir/runs/<time>_<host>)


def _tensorboard_events_only(folder: str) -> bool:
    """Whether `folder` holds TensorBoard event files and nothing else (report_to tensorboard's logging dir)."""
    return all(name.startswith("events.out.tfevents.") for _, _, names in os.walk(folder) for name in names)


WEIGHTS = (".safetensors", ".safetensors.index.json", ".bin")


def is_training_run(names: list[str]) -> bool:
    """Whether a folder's entries are those of a negalign training run (finished or not)."""
    return ("negalign_config.yaml" in names or any(CHECKPOINT_DIR.match(name) for name in names)
            or set(names) <= EARLY_FILES)


def is_finished_run(names: list[str]) -> bool:
    """A run that saved its final model: train_log.json is written last, after the model and its config."""
    return "train_log.json" in names or ("negalign_config.yaml" in names and any(
        name.endswith(WEIGHTS) and name != "training_args.bin" for name in names))


def resumes_explicitly(config: NegalignConfig) -> bool:
    """resume_from_checkpoint is true or a checkpoint folder: the user asks to continue a run."""
    wanted = config.resume_from_checkpoint
    return wanted not in (None, "", False) and str(wanted).lower() != "false"


def _output_dir_verdict(config: NegalignConfig, folder) -> str | None:
    """Why training must not write into `folder` (see negalign.outputs.claim), or None: an unfinished run or a
    finished one that kept its checkpoints (resolve_checkpoint then resumes or refuses them: a finished run of
    these settings is saved again as it is, not trained again)."""
    names = sorted(os.listdir(folder))
    if not is_training_run([name for name in names if name != TENSORBOARD_DIR
                            or not _tensorboard_events_only(os.path.join(folder, name))]):
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        return f"holds files that are not a negalign training run ({shown})"
    if resumes_explicitly(config) or not is_finished_run(names) or newest_checkpoint(str(folder),
                                                                                                   quiet=True):
        return None
    changed = settings_changed(config, str(folder))
    if changed:
        return (f"holds a finished training run with other settings ({'; '.join(changed[:6])}"
                f"{'; ...' if len(changed) > 6 else ''})")
    steps = f" (step {config.max_steps} of {config.max_steps})" if config.max_steps > 0 else ""
    return f"holds a finished training run of these settings{steps}: nothing is left to train"


def training_inputs(config: NegalignConfig) -> list[tuple[str, str | None]]:
    """The local files and folders a run reads, which its output_dir must keep apart from."""
    return [(key, getattr(config, key)) for key in ("data", "samples", "benign_samples", "retain_data", "model",
                                                    "ref_model", "ref_plus_model", "sampling_context")]


def claim_output_dir(config: NegalignConfig) -> None:
    """Apply the output policy to output_dir (under its lock): inputs kept apart; a folder that is not a run, or
    a finished run, refused unless overwrite, which moves it aside."""
    if config.overwrite and resumes_explicitly(config):
        raise ValueError("overwrite: true starts over and resume_from_checkpoint continues the run in "
                         f"{config.output_dir}: set one of them")
    check_apart(config.output_dir, training_inputs(config), option="output_dir")
    claim(config.output_dir, folder=True, overwrite=config.overwrite,
          verdict=lambda folder: _output_dir_verdict(config, folder), flag="--overwrite (overwrite: true)",
          option="output_dir")


def disk_full(output_dir: str) -> DiskFull:
    """The full disk as one line: what was being saved and where a rerun resumes from."""
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    last = newest_checkpoint(output_dir, quiet=True)
    cut = sorted((int(name.split("-")[1]), name) for name in names
                 if name.startswith("checkpoint-") and name.split("-")[1].isdigit()
                 and checkpoint_problem(os.path.join(output_dir, name)) is not None)
    being = os.path.join(output_dir, cut[-1][1]) if cut else output_dir
    return DiskFull(f"no space left on device while saving {being}; free some space (or lower save_total_limit) "
                    f"and rerun the same command: it resumes from {last or 'the start (no complete checkpoint)'}")
