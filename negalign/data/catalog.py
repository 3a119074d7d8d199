"""Short names for the data sets negalign's demo, evaluation, judge and users need.

Each resolves to its local copy under the data directory (negalign.data.paths) or, where there is none, to
its Hugging Face Hub form with the config and split the catalog means (`hf:owner/name?data_dir=...&split=...`,
read by negalign.data.readers). `negalign data list` shows them, with the commands that need each and its
license; `negalign data fetch` downloads them into the data directory in the local layout, so later runs work
offline: from the Hub with `datasets` where there is a Hub copy, else from raw GitHub URLs pinned to a commit
(negalign.data.download). Each entry's `needed_by` names the commands that read it; a test checks it against
the evaluation suites, the demo and the judge (this package imports none of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from negalign.data.download import GitHub


@dataclass(frozen=True)
class Entry:
    relative: str                 # path under the data directory: a file, or a folder for a set of several
    what: str
    hub: str | None = None        # Hub data set, or None when it has no Hub copy
    hub_split: str = "train"
    hub_options: dict = field(default_factory=dict)  # load_dataset keywords (data_dir, name)
    github: GitHub | None = None  # pinned GitHub files `fetch` downloads when there is no Hub copy
    check: str = ""               # what each downloaded GitHub file must parse as (download.check_file)
    origin: str = ""              # the original source, in words: where a person gets it by hand
    license: str = ""             # its terms, printed by `data list` and `data fetch`
    needed_by: tuple[str, ...] = ()  # the negalign commands that read it (without it they stop, or skip a part)

    def files(self, root: Path) -> list[Path]:
        """Every local file of the set under data directory `root`."""
        target = root / self.relative
        return [target / name for name in self.github.files] if self.github and self.github.files else [target]


REFUSAL_COMMIT = "0b9c8bc56a73b42f595fd173156d4aefe9a9143c"
HARMFUL_LICENSE = ("MIT, inherited from its sources (AdvBench, MaliciousInstruct, TDC 2023, HarmBench, "
                   "StrongREJECT)")
ALPACA_LICENSE = "CC BY-NC 4.0 (Stanford Alpaca): non-commercial use only"
EVAL_AND_DEMO = ("demo", "eval")


def _split(file: str, what: str, license: str, needed_by: tuple[str, ...]) -> Entry:
    """One of the refusal-direction instruction splits (a JSON list of {instruction, category})."""
    return Entry(f"refusal-direction-splits/{file}", what,
                 github=GitHub("andyrdt/refusal_direction", REFUSAL_COMMIT, f"dataset/splits/{file}"),
                 check="instructions", origin="the refusal_direction repository (github.com/andyrdt/refusal_direction, "
                 f"dataset/splits/{file})",
                 license=license, needed_by=needed_by)


# the JailbreakBench artifacts' answer files (attack/type/model.json) with each attack's attack-info.json
JBB_MODELS = {"DSN/white_box": ("llama-2-7b-chat-hf", "vicuna-13b-v1.5"),
              "GCG/transfer": ("gpt-3.5-turbo-1106", "gpt-4-0125-preview"),
              "GCG/white_box": ("llama-2-7b-chat-hf", "vicuna-13b-v1.5"),
              **{folder: ("gpt-3.5-turbo-1106", "gpt-4-0125-preview", "llama-2-7b-chat-hf", "vicuna-13b-v1.5")
                 for folder in ("JBC/manual", "PAIR/black_box", "prompt_with_random_search/black_box")}}
JBB_FILES = tuple(sorted({f"{folder.split('/')[0]}/attack-info.json" for folder in JBB_MODELS}
                         | {f"{folder}/{model}.json" for folder, models in JBB_MODELS.items() for model in models}))
XSTEST_MODELS = ("gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct")
XSTEST_COMMIT = "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d"

CATALOG = {
    "hh-harmless-base": Entry("hh-rlhf-harmless-base-test/test.jsonl.gz",
                              "Anthropic HH harmless-base test pairs (2,312); rejected = the more harmful answer",
                              "Anthropic/hh-rlhf", "test", {"data_dir": "harmless-base"},
                              origin="https://github.com/anthropics/hh-rlhf/blob/354e5c3cb8960630860dd5774a6ac2a58313bf4d/"
                              "harmless-base/test.jsonl.gz",
                              license="MIT (Anthropic)", needed_by=EVAL_AND_DEMO),
    "xstest": Entry("xstest/xstest_prompts.csv", "XSTest: 250 safe and 200 unsafe prompts", "walledai/XSTest",
                    "test", origin=f"https://github.com/paul-rottger/exaggerated-safety/blob/{XSTEST_COMMIT}/"
                    "xstest_prompts.csv", license="CC BY 4.0 (XSTest)", needed_by=EVAL_AND_DEMO),
    "advbench": Entry("advbench/harmful_behaviors.csv", "AdvBench: 520 harmful requests", "walledai/AdvBench",
                      origin="https://github.com/llm-attacks/llm-attacks/blob/main/data/advbench/harmful_behaviors.csv",
                      license="MIT (llm-attacks)", needed_by=EVAL_AND_DEMO),
    "refusal-harmful": _split("harmful_test.json", "harmful test split of the refusal-direction instruction sets "
                              "(572)", HARMFUL_LICENSE, EVAL_AND_DEMO),
    "harmful-train": _split("harmful_train.json",
                            "harmful instructions (260, no answers), the train split of the refusal-direction sets: "
                            "prompts for `negalign flag` (the model's own complying answers as negatives); the "
                            "evaluation suites draw from the test split, and training leaves out duplicates of them",
                            HARMFUL_LICENSE, ("demo",)),
    "harmful-val": _split("harmful_val.json",
                          "harmful instructions (39, no answers), the validation split of the refusal-direction sets",
                          HARMFUL_LICENSE, ("demo",)),
    "benign-instructions": _split("harmless_val.json",
                                  "benign Alpaca instructions (6,264, no answers), the validation split of the "
                                  "refusal-direction sets: a retain source; the evaluation suites draw from the "
                                  "test split, and retain rows are decontaminated against them",
                                  ALPACA_LICENSE, ("demo",)),
    "refusal-benign": _split("harmless_test.json",
                             "benign (Alpaca) test split of the refusal-direction instruction sets (6,266)",
                             ALPACA_LICENSE, EVAL_AND_DEMO),
    "jbb-artifacts": Entry("jailbreakbench-artifacts/attack-artifacts",
                           "JailbreakBench artifacts: 18 files of answers by vicuna-13b, llama-2-7b-chat, "
                           "gpt-3.5-turbo and gpt-4 to jailbreaks of the 100 JBB-Behaviors goals (1,800), "
                           "each labelled `jailbroken` by JailbreakBench's judge: the harmful-content head's "
                           "training data",
                           github=GitHub("JailbreakBench/artifacts", "909e68c01d94222b8ad2e397a017e2e12e2adb73",
                                         "attack-artifacts", JBB_FILES),
                           check="jbb-artifact", origin="github.com/JailbreakBench/artifacts, attack-artifacts/",
                           license="MIT (JailbreakBench team and the artifacts' authors)",
                           needed_by=("judge fit-content",)),
    "xstest-completions": Entry("xstest/model_completions",
                                "XSTest's answers by 5 models to its 450 prompts (2,250), each labelled by people "
                                "(full compliance, full or partial refusal): the refusal head's training data",
                                github=GitHub("paul-rottger/exaggerated-safety", XSTEST_COMMIT, "model_completions",
                                              tuple(f"xstest_v2_completions_{m}.csv" for m in XSTEST_MODELS)),
                                check="csv:id,type,prompt,completion,final_label",
                                origin="github.com/paul-rottger/exaggerated-safety, model_completions/",
                                license="the answers are subject to the original licenses of Meta, Mistral and "
                                "OpenAI (XSTest's README); its prompts CC BY 4.0",
                                needed_by=("judge fit", "judge fit-content")),
}


def hub_spec(entry: Entry) -> str:
    options = "&".join(f"{key}={value}" for key, value in {**entry.hub_options, "split": entry.hub_split}.items())
    return f"hf:{entry.hub}?{options}"


def _root(data_dir: str | None) -> Path | None:
    from negalign.data.paths import data_dir as find_data_dir

    folder = find_data_dir(data_dir)
    return None if folder is None else Path(folder)


def local_path(name: str, data_dir: str | None = None) -> Path | None:
    """Where catalog set `name` is (or would be) in the data directory; None without a data directory."""
    root = _root(data_dir)
    return None if root is None else root / CATALOG[name].relative


def present(name: str, data_dir: str | None = None) -> bool:
    """Every file of set `name` is in the data directory."""
    root = _root(data_dir)
    return root is not None and all(file.exists() for file in CATALOG[name].files(root))


def missing_message(name: str, data_dir: str | None = None) -> str:
    where = local_path(name, data_dir)
    entry = CATALOG[name]
    get = (f"`negalign data fetch {name}` downloads it from the Hub ({entry.hub})" if entry.hub
           else f"it has no Hub copy: get it from {entry.origin}, or `negalign data fetch {name}` downloads it "
           f"({entry.github.describe()})")
    return (f"data set {name!r} is not in the data directory ({where or 'none found'}); {get}, or point "
            "--data-dir / $NEGALIGN_DATA at a folder that holds it")


def resolve_data(name: str, data_dir: str | None = None) -> str:
    """A catalog name -> local file path (if present) or its Hub form; anything else is returned unchanged."""
    if name not in CATALOG:
        return name
    if present(name, data_dir):
        return str(local_path(name, data_dir))
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
    from negalign.data.download import offline as is_offline

    offline = is_offline()
    missing = [name for name in dict.fromkeys(names) if not present(name, data_dir)
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
    """Download catalog set `name` into the data directory, in the local layout: from the Hub (with `datasets`)
    when it has a Hub copy, else from its pinned GitHub files (negalign.data.download, urllib). Needs the
    network; what is downloaded is checked and written through temporary names, so a corrupt or interrupted
    download leaves nothing. Raises OSError (offline, no network: the message says where to get it by hand)
    or ValueError (what came back is not the set)."""
    from negalign.data.download import fetch_github
    from negalign.data.paths import data_dir as find_data_dir
    from negalign.data.paths import download_dir

    entry = CATALOG[name]
    root = Path(find_data_dir(data_dir) or download_dir())  # a later run finds it there (negalign.data.paths)
    target = root / entry.relative
    if entry.hub is None:
        return fetch_github(name, entry.github, entry.check, target, overwrite)
    if target.exists() and not overwrite:
        return target
    return _fetch_hub(name, entry, target)


def _fetch_hub(name: str, entry: Entry, target: Path) -> Path:
    import csv
    import gzip
    import json

    import datasets

    from negalign.files import atomic_output

    try:
        rows = datasets.load_dataset(entry.hub, split=entry.hub_split, **entry.hub_options)
    except Exception as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise OSError(f"data set {name!r}: could not download {entry.hub} (split {entry.hub_split}): {reason}; "
                      f"get it by hand from {entry.origin} into {target} (or fetch it where the Hub is "
                      "reachable)") from error
    kind, columns = LAYOUT[name]
    absent = sorted(c for c in columns.values() if c is not None and c not in rows.column_names)
    if absent:
        raise ValueError(f"data set {name!r}: {entry.hub} has no column(s) {', '.join(absent)} "
                         f"(it has {', '.join(rows.column_names)}); nothing written")
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


def _describe(name: str, data_dir: str | None) -> str:
    """`data list`'s lines for one set."""
    entry, path = CATALOG[name], local_path(name, data_dir)
    if present(name, data_dir):
        state, where = "local", str(path)
    else:
        state = "not local"
        where = (f"Hub {hub_spec(entry)}" if entry.hub else f"fetch from {entry.github.describe()}")
    pad = " " * 21
    return (f"{name:<20} {state:<9} {where}\n{pad}{entry.what}\n"
            f"{pad}needed by: {', '.join(entry.needed_by) or 'no command (name it where you want it)'}\n"
            f"{pad}license: {entry.license}")


def cmd_data(argv: list[str]) -> int:
    """`negalign data list | fetch [NAME ...]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="negalign data", description="The built-in data sets: where they are, "
                                     "which commands need them, their licenses, and downloading them into the "
                                     "data directory (from the Hub, or from GitHub at a pinned commit).")
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
        print("\n".join(_describe(name, args.data_dir) for name in names))
        return 0
    failed = []
    for name in names:
        try:
            path = fetch(name, args.data_dir, args.overwrite)
            print(f"negalign data: {name} -> {path} (license: {CATALOG[name].license})")
        except (OSError, ValueError) as error:
            failed.append(name)
            print(f"negalign data: {error} (license: {CATALOG[name].license})")
    return 2 if failed else 0
