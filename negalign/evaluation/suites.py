"""Prompt suites: sets of held-out prompts, each harmful or benign, read from the data directory.

Built in (paths relative to the data directory, see `negalign.data.paths.data_dir`):

    advbench          harmful  advbench/harmful_behaviors.csv, column goal (520)
    refusal-harmful   harmful  refusal-direction-splits/harmful_test.json (572; AdvBench, MaliciousInstruct,
                               TDC2023, HarmBench, StrongREJECT)
    xstest-unsafe     harmful  xstest/xstest_prompts.csv, label unsafe (200)
    xstest-safe       benign   xstest/xstest_prompts.csv, label safe (250; tests over-refusal)
    alpaca-benign     benign   refusal-direction-splits/harmless_test.json, a seeded sample of 250 of 6,266

A user's file adds a suite: csv (columns prompt and harmful or label), jsonl/json (objects with prompt and
harmful: bool, or label: "harmful"/"benign"), or txt (one prompt per line, the kind given as
`FILE:harmful` / `FILE:benign`). A file that mixes kinds becomes two suites, NAME-harmful and NAME-benign.

Subsampling is nested: a seeded permutation of the suite, cut at N, so the first 20 prompts of a run with
`--max-prompts 50` are the prompts of a run with `--max-prompts 20`.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

KINDS = ("harmful", "benign")
ALPACA_SAMPLE = 250
# `negalign eval`'s preference pairs: the last pairs of the HH harmless-base file, at most HELD_OUT_PAIRS of them
# by default; training leaves out these HELD_OUT_PAIRS (negalign.decontamination), so the chosen answers' NLL is
# measured on pairs no run trained on
HH_PAIRS = "hh-rlhf-harmless-base-test/test.jsonl.gz"
HELD_OUT_PAIRS = 200


@dataclass
class Suite:
    name: str
    kind: str  # "harmful" or "benign"
    prompts: list[str]
    source: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"suite {self.name}: kind must be harmful or benign, got {self.kind!r}")

    def subsample(self, n: int | None, seed: int = 0) -> "Suite":
        if n is None or n >= len(self.prompts):
            return self
        order = list(range(len(self.prompts)))
        random.Random(f"{seed}-{self.name}").shuffle(order)
        return Suite(self.name, self.kind, [self.prompts[i] for i in order[:n]], self.source)


def held_out_pairs(path: str | os.PathLike, n: int) -> list[dict]:
    """The LAST n chosen/rejected pairs of a preference file: {prompt, chosen, rejected}. Training with
    max_examples reads a file from its start, so its end is the part a short run has not seen (and for the HH
    file, the part training leaves out)."""
    from negalign.data import complete_pairs, load_rows

    rows, _ = load_rows(str(path), on_bad_row="skip")
    return complete_pairs(rows)[-n:] if n else []


def _csv_column(path: Path, column: str, keep=lambda record: True) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [record[column] for record in csv.DictReader(handle) if keep(record)]


def _json_instructions(path: Path) -> list[str]:
    return [item["instruction"] for item in json.loads(path.read_text(encoding="utf-8"))]


def _alpaca(path: Path, seed: int) -> list[str]:
    prompts = _json_instructions(path)
    order = list(range(len(prompts)))
    random.Random(f"{seed}-alpaca-benign").shuffle(order)
    return [prompts[i] for i in order[:ALPACA_SAMPLE]]


BUILTIN = {
    # name: (kind, relative path, reader(path, seed))
    "advbench": ("harmful", "advbench/harmful_behaviors.csv", lambda p, s: _csv_column(p, "goal")),
    "refusal-harmful": ("harmful", "refusal-direction-splits/harmful_test.json", lambda p, s: _json_instructions(p)),
    "xstest-unsafe": ("harmful", "xstest/xstest_prompts.csv",
                      lambda p, s: _csv_column(p, "prompt", lambda r: r["label"] == "unsafe")),
    "xstest-safe": ("benign", "xstest/xstest_prompts.csv",
                    lambda p, s: _csv_column(p, "prompt", lambda r: r["label"] == "safe")),
    "alpaca-benign": ("benign", "refusal-direction-splits/harmless_test.json", _alpaca),
}


def builtin_suite(name: str, data_dir: str | os.PathLike, seed: int = 0) -> Suite:
    if name not in BUILTIN:
        raise ValueError(f"unknown suite {name!r}; built in: {', '.join(BUILTIN)} (or pass a file with --prompts)")
    kind, relative, reader = BUILTIN[name]
    path = Path(data_dir) / relative
    if not path.exists():
        raise FileNotFoundError(f"suite {name}: {path} not found (set --data-dir or $NEGALIGN_DATA)")
    return Suite(name, kind, reader(path, seed), str(path))


def _kind(value, where: str) -> str:
    if isinstance(value, bool):
        return "harmful" if value else "benign"
    text = str(value).strip().lower()
    if text in ("harmful", "unsafe", "true", "1", "yes"):
        return "harmful"
    if text in ("benign", "safe", "harmless", "false", "0", "no"):
        return "benign"
    raise ValueError(f"{where}: cannot read {value!r} as harmful/benign (use harmful: true/false or "
                     "label: harmful/benign)")


def _record_kind(record: dict, where: str, default: str | None) -> str:
    for key in ("harmful", "label", "kind"):
        if key in record and record[key] not in (None, ""):
            return _kind(record[key], where)
    if default is None:
        raise ValueError(f"{where}: no harmful/label column; add one or pass the file as FILE:harmful / FILE:benign")
    return default


def file_suites(spec: str) -> list[Suite]:
    """Suites from a user's file; `spec` is PATH or PATH:harmful / PATH:benign (the kind of every row)."""
    default = None
    path_text = spec
    head, _, tail = spec.rpartition(":")
    if head and tail.lower() in KINDS:
        path_text, default = head, tail.lower()
    path = Path(path_text)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} not found")
    name = path.name.split(".")[0]
    records: list[tuple[str, str]] = []
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            for number, record in enumerate(csv.DictReader(handle), start=2):
                where = f"{path}:{number}"
                if not record.get("prompt"):
                    raise ValueError(f"{where}: no prompt column/value")
                records.append((record["prompt"], _record_kind(record, where, default)))
    elif suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        items = json.loads(text) if suffix == ".json" else [json.loads(line) for line in text.splitlines() if line.strip()]
        for number, record in enumerate(items, start=1):
            where = f"{path}:{number}"
            if isinstance(record, str):
                record = {"prompt": record}
            if not record.get("prompt"):
                raise ValueError(f"{where}: no prompt")
            records.append((record["prompt"], _record_kind(record, where, default)))
    else:
        if default is None:
            raise ValueError(f"{path}: a plain-text prompt file needs its kind: {path}:harmful or {path}:benign")
        records = [(line.strip(), default) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kinds = sorted({kind for _, kind in records})
    if not records:
        raise ValueError(f"{path}: no prompts")
    if len(kinds) == 1:
        return [Suite(name, kinds[0], [p for p, _ in records], str(path))]
    return [Suite(f"{name}-{kind}", kind, [p for p, k in records if k == kind], str(path)) for kind in kinds]


def load_suites(names: list[str] | None, data_dir: str | os.PathLike | None, prompt_files: list[str] = (),
                max_prompts: int | None = None, seed: int = 0) -> list[Suite]:
    """Built-in suites by name (default: all of them, or none when prompt files are given) plus the users' files,
    each cut to `max_prompts` (seeded)."""
    if names is None:  # all built-in suites, unless the user brought their own prompts
        names = [] if prompt_files else list(BUILTIN)
    if names:  # one message for every missing set, before any model loads
        from negalign.data.catalog import check_available, name_for

        check_available([n for n in (name_for(BUILTIN[name][1]) for name in names if name in BUILTIN) if n],
                        data_dir)
    suites = [builtin_suite(name, data_dir, seed) for name in names]
    for spec in prompt_files:
        suites.extend(file_suites(spec))
    seen = set()
    for suite in suites:
        if suite.name in seen:
            raise ValueError(f"two suites are named {suite.name!r}; rename one of the files")
        seen.add(suite.name)
    if not suites:
        raise ValueError("no prompt suites: pass --suite NAME or --prompts FILE, or set the data directory")
    return [suite.subsample(max_prompts, seed) for suite in suites]
