"""The report across rounds: out/report.md, out/report.json, out/front.png (every round on the suites and on
the reach check, every watch point with the kept checkpoints filled) and out/watch.png (harmful compliance and
benign refusal on the watch slice against training steps, rounds end to end)."""

from __future__ import annotations

import json
from pathlib import Path

from negalign.files import atomic_write_text


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _entry(block: dict | None, *keys):
    for key in keys:
        block = (block or {}).get(key)
    return block


def round_row(folder: Path, done: dict) -> dict:
    """One round's numbers, read from its evaluation files."""
    result, reach = _read(folder / "eval" / "eval.json"), _read(folder / "reach" / "eval.json")
    watch = _read(folder / "watch.json")
    return {
        "round": done["round"], "model": done["model"], "trained": done["trained"], "mined": done.get("mined"),
        "n_training_negatives": done.get("n_training_negatives", 0), "stopped_at": done.get("stopped_at"),
        "kept_checkpoints": done.get("kept_checkpoints", []), "watch": (watch or {}).get("points", []),
        "harmful_compliance": _entry(result, "harmful", "harmful_compliance"),
        "harmful_content": _entry(result, "harmful", "harmful_content"),
        "benign_refusal": _entry(result, "benign", "benign_refusal"),
        "nll": _entry(result, "preference", "chosen_nll_per_token"),
        "n_pairs": _entry(result, "preference", "n_pairs"),
        "kl": _entry(result, "kl", "kl"), "n_kl": _entry(result, "kl", "n_answers"),
        "ifeval": _entry(result, "ifeval", "prompt_strict"),
        "reach": {name: suite.get("harmful_compliance") or suite.get("benign_refusal")
                  for name, suite in ((reach or {}).get("suites") or {}).items()},
        "reach_harmful": _entry(reach, "harmful", "harmful_compliance"),
        "seconds": done.get("seconds"),
    }


def _rate(entry: dict | None) -> str:
    if not entry or entry.get("rate") is None:
        return "n/a"
    return f"{entry['rate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}] (n={entry['n']})"


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict], plots: list[str]) -> str:
    lines = ["# negalign loop: rounds", "",
             "Round 0 is the starting model. Rates with Wilson 95 % intervals and n; NLL per token of the held-out "
             "HH chosen answers; KL to the starting model on benign prompts; IFEval prompt-level strict.", "",
             "| round | harmful compliance | harmful content | benign refusal | NLL/token (pairs) | KL (answers) | IFEval |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | {_rate(r['harmful_compliance'])} | {_rate(r['harmful_content'])} | "
                     f"{_rate(r['benign_refusal'])} | {_number(r['nll'])} ({r['n_pairs'] or 0}) | "
                     f"{_number(r['kl'])} ({r['n_kl'] or 0}) | {_rate(r['ifeval'])} |")
    suites = sorted({name for r in rows for name in r["reach"]})
    if suites:
        lines += ["", "## Reach check (docs/loop.md): prompts unlike the training ones", "",
                  "| round | all harmful | " + " | ".join(suites) + " |", "|---|---|" + "---|" * len(suites)]
        for r in rows:
            lines.append(f"| {r['round']} | {_rate(r['reach_harmful'])} | "
                         + " | ".join(_rate(r["reach"].get(s)) for s in suites) + " |")
    lines += ["", "## What each round mined", "",
              "| round | harmful answered | harmful flagged | benign answered | benign refusals | trained on | "
              "stopped early at | kept checkpoints (watch: harm, refusal) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows[1:]:
        m, points = r["mined"] or {}, {p["step"]: p for p in r["watch"]}
        kept = ", ".join(f"{s} ({points[s]['harmful_compliance']:.2f}, {points[s]['benign_refusal']:.2f})"
                         for s in r["kept_checkpoints"] if s in points) or "none"
        lines.append(f"| {r['round']} | {_entry(m, 'harmful', 'answered')} | {_entry(m, 'harmful', 'negatives')} | "
                     f"{_entry(m, 'benign', 'answered')} | {_entry(m, 'benign', 'negatives')} | "
                     f"{r['n_training_negatives']} | {r['stopped_at'] or '-'} | {kept} |")
    for r in rows[1:]:
        for kind, title in (("harmful", "harmful answers flagged complying"), ("benign", "benign refusals")):
            examples = _entry(r["mined"], kind, "examples") or []
            if examples:
                lines += ["", f"Round {r['round']}, {title}:", ""]
                lines += [f"- {e['prompt']!r} -> {e['answer']!r}" for e in examples]
    lines += [""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def write_report(out: Path, dones: list[dict]) -> dict:
    from negalign.loop.plots import plot_front, plot_watch

    rows = [round_row(out / f"round-{d['round']}", d) for d in dones]
    plots = [name for name, made in (("front.png", plot_front(rows, out / "front.png")),
                                     ("watch.png", plot_watch(rows, out / "watch.png"))) if made]
    atomic_write_text(out / "report.json", json.dumps({"rounds": rows}, indent=2) + "\n")
    atomic_write_text(out / "report.md", markdown(rows, plots))
    return {"rounds": rows, "markdown": str(out / "report.md"), "plots": [str(out / p) for p in plots]}
