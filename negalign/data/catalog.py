"""Short names for the data sets negalign's demo and users need.

Each resolves to a local copy under the data directory (`--data-dir`, `$NEGALIGN_DATA`, or `../shared/data`
when it exists) or, where no local copy is found, to its Hugging Face Hub name.
"""

from __future__ import annotations

from pathlib import Path

# name -> (path under the data directory, Hub name, what it is)
CATALOG = {
    "hh-harmless-base": ("hh-rlhf-harmless-base-test/test.jsonl.gz", "Anthropic/hh-rlhf",
                         "Anthropic HH harmless-base test pairs (2,312); rejected = the more harmful answer"),
    "xstest": ("xstest/xstest_prompts.csv", "walledai/XSTest", "XSTest: 250 safe and 200 unsafe prompts"),
    "advbench": ("advbench/harmful_behaviors.csv", "walledai/AdvBench", "AdvBench: 520 harmful requests"),
    "refusal-harmful": ("refusal-direction-splits/harmful_test.json", None,
                        "harmful test split of the refusal-direction instruction sets"),
    "benign-instructions": ("refusal-direction-splits/harmless_val.json", None,
                            "benign Alpaca instructions (6,264, no answers), the validation split of the "
                            "refusal-direction sets: a retain source; the evaluation suites draw from the test "
                            "split, and retain rows are decontaminated against them"),
    "refusal-benign": ("refusal-direction-splits/harmless_test.json", None,
                       "benign (Alpaca) test split of the refusal-direction instruction sets"),
}


def resolve_data(name: str, data_dir: str | None = None) -> str:
    """A catalog name -> local file path (if present) or Hub name; anything else is returned unchanged."""
    if name not in CATALOG:
        return name
    from negalign.evaluation.paths import data_dir as find_data_dir

    relative, hub, _ = CATALOG[name]
    folder = find_data_dir(data_dir)
    if folder is not None and (Path(folder) / relative).exists():
        return str(Path(folder) / relative)
    if hub is None:
        raise FileNotFoundError(f"data set {name!r}: no local copy at {folder or '(no data directory)'}/"
                                f"{relative} and no Hub name; set --data-dir or $NEGALIGN_DATA")
    return hub
