"""Short names for the data sets negalign's demo, evaluation and users need.

Each resolves to its local copy under the data directory (negalign.data.paths) or, where there is none, to
its Hugging Face Hub form with the config and split the catalog means (`hf:owner/name?data_dir=...&split=...`,
read by negalign.data.readers). `negalign data list` shows them; `negalign data fetch` downloads the Hub ones
into the data directory in the local layout, so later runs work offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    relative: str                 # path under the data directory
    what: str
    hub: str | None = None        # Hub data set, or None when it has no Hub copy
    hub_split: str = "train"
    hub_options: dict = field(default_factory=dict)  # load_dataset keywords (data_dir, name)
    source: str = ""              # where to get it when there is no Hub copy


REFUSAL_DIRECTION = "the refusal_direction repository (github.com/andyrdt/refusal_direction, dataset/splits/)"

CATALOG = {
    "hh-harmless-base": Entry("hh-rlhf-harmless-base-test/test.jsonl.gz",
                              "Anthropic HH harmless-base test pairs (2,312); rejected = the more harmful answer",
                              "Anthropic/hh-rlhf", "test", {"data_dir": "harmless-base"}),
    "xstest": Entry("xstest/xstest_prompts.csv", "XSTest: 250 safe and 200 unsafe prompts", "walledai/XSTest",
                    "test"),
    "advbench": Entry("advbench/harmful_behaviors.csv", "AdvBench: 520 harmful requests", "walledai/AdvBench"),
    "refusal-harmful": Entry("refusal-direction-splits/harmful_test.json",
                             "harmful test split of the refusal-direction instruction sets (572)",
                             source=REFUSAL_DIRECTION + ", harmful_test.json"),
    "harmful-train": Entry("refusal-direction-splits/harmful_train.json",
                           "harmful instructions (260, no answers), the train split of the refusal-direction sets: "
                           "prompts for `negalign flag` (the model's own complying answers as negatives); the "
                           "evaluation suites draw from the test split, and training leaves out duplicates of them",
                           source=REFUSAL_DIRECTION + ", harmful_train.json"),
    "harmful-val": Entry("refusal-direction-splits/harmful_val.json",
                         "harmful instructions (39, no answers), the validation split of the refusal-direction sets",
                         source=REFUSAL_DIRECTION + ", harmful_val.json"),
    "benign-instructions": Entry("refusal-direction-splits/harmless_val.json",
                                 "benign Alpaca instructions (6,264, no answers), the validation split of the "
                                 "refusal-direction sets: a retain source; the evaluation suites draw from the test "
                                 "split, and retain rows are decontaminated against them",
                                 source=REFUSAL_DIRECTION + ", harmless_val.json"),
    "refusal-benign": Entry("refusal-direction-splits/harmless_test.json",
                            "benign (Alpaca) test split of the refusal-direction instruction sets (6,266)",
                            source=REFUSAL_DIRECTION + ", harmless_test.json"),
}


def hub_spec(entry: Entry) -> str:
    options = "&".join(f"{key}={value}" for key, value in {**entry.hub_options, "split": entry.hub_split}.items())
    return f"hf:{entry.hub}?{options}"


def local_path(name: str, data_dir: str | None = None) -> Path | None:
    """Where catalog set `name` is (or would be) in the data directory; None without a data directory."""
    from negalign.data.paths import data_dir as find_data_dir

    folder = find_data_dir(data_dir)
    return None if folder is None else Path(folder) / CATALOG[name].relative


def missing_message(name: str, data_dir: str | None = None) -> str:
    where = local_path(name, data_dir)
    entry = CATALOG[name]
    get = (f"`negalign data fetch {name}` downloads it from the Hub ({entry.hub})" if entry.hub
           else f"it has no Hub copy: get it from {entry.source}")
    return (f"data set {name!r} is not in the data directory ({where or 'none found'}); {get}, or point "
            "--data-dir / $NEGALIGN_DATA at a folder that holds it")


def resolve_data(name: str, data_dir: str | None = None) -> str:
    """A catalog name -> local file path (if present) or its Hub form; anything else is returned unchanged."""
    if name not in CATALOG:
        return name
    path = local_path(name, data_dir)
    if path is not None and path.exists():
        return str(path)
    if CATALOG[name].hub is None:
        raise FileNotFoundError(missing_message(name, data_dir))
    return hub_spec(CATALOG[name])


def name_for(relative: str) -> str | None:
    """The catalog name of a path under the data directory (the evaluation suites name their files so)."""
    return next((name for name, entry in CATALOG.items() if entry.relative == relative), None)


def check_available(names: list[str], data_dir: str | None = None, hub_ok: tuple[str, ...] = ()) -> None:
    """Before expensive work: every named set is in the data directory, or, for those in `hub_ok` while the Hub
    may be reachable (HF_HUB_OFFLINE unset), loadable from the Hub on use. Otherwise one FileNotFoundError
    naming every missing set and how to get it."""
    import os

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    missing = [name for name in dict.fromkeys(names)
               if not ((p := local_path(name, data_dir)) is not None and p.exists())
               and (offline or name not in hub_ok or CATALOG[name].hub is None)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} data set(s) missing" + (" (offline)" if offline else "") + ": "
                                + "; ".join(missing_message(name, data_dir) for name in missing))


# how a Hub copy's rows become the local layout: (file kind, {local column: Hub column})
LAYOUT = {
    "hh-harmless-base": ("jsonl.gz", {"chosen": "chosen", "rejected": "rejected"}),
    "xstest": ("csv", {"id": None, "prompt": "prompt", "type": "type", "label": "label", "focus": "focus",
                       "note": "note"}),
    "advbench": ("csv", {"goal": "prompt", "target": "target"}),
}


def fetch(name: str, data_dir: str | None = None, overwrite: bool = False) -> Path:
    """Download catalog set `name` from the Hub into the data directory, in the local layout. Needs the network
    (and `datasets`); written to a temporary name and renamed, so an interrupted download leaves nothing."""
    import csv
    import gzip
    import json

    from negalign.data.paths import data_dir as find_data_dir
    from negalign.data.paths import download_dir
    from negalign.files import atomic_output

    entry = CATALOG[name]
    if entry.hub is None:
        raise FileNotFoundError(f"data set {name!r} has no Hub copy: get it from {entry.source}")
    folder = find_data_dir(data_dir) or download_dir()  # a later run finds it there (negalign.data.paths)
    target = Path(folder) / entry.relative
    if target.exists() and not overwrite:
        return target
    import datasets

    try:
        rows = datasets.load_dataset(entry.hub, split=entry.hub_split, **entry.hub_options)
    except Exception as error:
        raise OSError(f"data set {name!r}: could not download {entry.hub} (split {entry.hub_split}): "
                      f"{type(error).__name__}: {error}") from error
    kind, columns = LAYOUT[name]
    absent = sorted(c for c in columns.values() if c is not None and c not in rows.column_names)
    if absent:
        raise ValueError(f"data set {name!r}: {entry.hub} has no column(s) {', '.join(absent)} "
                         f"(it has {', '.join(rows.column_names)})")
    records = [{local: (index + 1 if hub is None else row[hub]) for local, hub in columns.items()}
               for index, row in enumerate(rows)]
    with atomic_output(target) as tmp:
        if kind == "jsonl.gz":
            with gzip.open(tmp, "wt", encoding="utf-8") as sink:
                sink.writelines(json.dumps(record) + "\n" for record in records)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as sink:
                writer = csv.DictWriter(sink, fieldnames=list(columns))
                writer.writeheader()
                writer.writerows(records)
    return target


def cmd_data(argv: list[str]) -> int:
    """`negalign data list | fetch [NAME ...]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="negalign data", description="The built-in data sets: where they are, "
                                     "and downloading them from the Hub into the data directory.")
    parser.add_argument("action", choices=["list", "fetch"])
    parser.add_argument("names", nargs="*", help="catalog names (default: all)")
    parser.add_argument("--data-dir", default=None, help="data folder (default: $NEGALIGN_DATA, then shared/data "
                        "beside the checkout)")
    parser.add_argument("--overwrite", action="store_true", help="download again even if present")
    args = parser.parse_intermixed_args(argv)
    unknown = [n for n in args.names if n not in CATALOG]
    if unknown:
        raise ValueError(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(CATALOG)}")
    names = args.names or list(CATALOG)
    if args.action == "list":
        for name in names:
            path = local_path(name, args.data_dir)
            here = path is not None and path.exists()
            where = str(path) if here else ("Hub " + hub_spec(CATALOG[name]) if CATALOG[name].hub else "missing")
            print(f"{name:<20} {'local' if here else 'not local':<9} {where}\n{'':<20} {CATALOG[name].what}")
        return 0
    failed = []
    for name in names:
        try:
            print(f"negalign data: {name} -> {fetch(name, args.data_dir, args.overwrite)}")
        except (OSError, ValueError) as error:
            failed.append(str(error))
            print(f"negalign data: {error}")
    return 2 if failed else 0
