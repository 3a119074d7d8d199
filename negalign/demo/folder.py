"""The demo's output folder: whose it is, and whether this run may continue it.

The demo writes one folder (answers, negatives, anchors, the runs trained on them, their evaluations and the
report), and every file in it depends on the settings that made the data. So the folder is claimed as a whole,
under one lock (two demos at once would append every anchor twice):

- nothing there, or an earlier demo of the same data settings: continue it (every stage reuses what it finds);
- an earlier demo of other data settings: refused, naming them, unless --overwrite, which moves the whole folder
  aside, so that no trained run is ever kept without the anchors and negatives it was trained on;
- anything else (a folder that a demo did not write): refused unless --overwrite, which moves it aside.

Settings that only add to the folder (more methods) or that each stage checks for itself (the evaluation's
sizes) are not data settings. Of the generation-server settings only one is: whether a server draws the starting
model's answers at all (answers drawn locally and through a server are not mixed, as in a samples file). A key
added to the demo since an earlier record was written counts as no change when today's value is the default, so
that the committed reference runs stay the reference they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from negalign.demo.settings import DemoSettings

RECORD = "demo_config.json"
# what a demo record always holds: a file of this name without them is not the demo's
RECORD_KEYS = {"output", "methods", "preset", "model", "harmful", "benign"}
# settings that do not change the data a folder holds: the methods add runs beside the others, each evaluation
# compares its own sizes (runs/<m>/eval/eval.json), and where the folder is and what to do with it are not data
NOT_DATA = {"output", "methods", "overwrite", "eval_prompts", "eval_max_new_tokens", "quick"}
# what draws the starting model's answers: the one server setting compared (a server restarted on another address,
# or with other timeouts, continues the folder; that it serves the starting model is checked by each stage)
ENGINES = {"local": "by negalign's own decoding", "server": "by a generation server"}


def demo_record(folder: Path) -> dict | None:
    """The settings an earlier demo recorded in `folder`, or None when no demo wrote it."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and RECORD_KEYS <= set(record) else None


def changed_settings(record: dict, settings: DemoSettings) -> list[str]:
    """The data settings in which `settings` differ from an earlier demo's `record` ("key: then -> now"). A key
    the record lacks (added to the demo since) is a change only when today's value is not its default."""
    now = asdict(settings)
    default = asdict(DemoSettings(preset=settings.preset, output=settings.output))
    changes = []
    for key in sorted(set(now) - NOT_DATA):
        then = record.get(key, default[key])
        if key == "server":  # only where the answers come from (negalign or a server) makes other data
            then, now_engine = _engine(record.get(key)), _engine(now[key])
            if then != now_engine:
                changes.insert(0, f"engine: {then!r} -> {now_engine!r} (the starting model's answers and anchors "
                               f"drawn {ENGINES[then]} are not mixed with ones drawn {ENGINES[now_engine]})")
            continue
        if key == "model_options":  # a nested record: compare the options each side has, with the same rule
            then = {name: record.get(key, {}).get(name, value) for name, value in default[key].items()}
        if then != now[key]:
            changes.append(f"{key}: {then!r} -> {now[key]!r}")
    return changes


def _engine(server: dict | None) -> str:
    """What drew a demo's answers, from its `server` settings (None in a record older than the setting)."""
    return "server" if (server or {}).get("generation_server") else "local"


def settings_record(settings: DemoSettings) -> dict:
    """The settings as demo_config.json records them: every field, the generation server's URL without any
    user:password part (the API key is never a setting)."""
    record = asdict(settings)
    record["server"] = settings.server.shown()
    return record


def folder_verdict(settings: DemoSettings):
    """outputs.claim's verdict for the demo's folder: None to continue it, or why it must not be written."""
    def verdict(folder: Path) -> str | None:
        record = demo_record(folder)
        if record is None:
            names = sorted(p.name for p in folder.iterdir())
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            return f"holds files that a negalign demo did not write ({shown})"
        changes = changed_settings(record, settings)
        if changes:
            return (f"holds a demo made with other settings ({'; '.join(changes[:6])}"
                    f"{'; ...' if len(changes) > 6 else ''}), whose runs were trained on its own data")
        return None
    return verdict
