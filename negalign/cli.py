"""`negalign` command line. Every option of `negalign train` is a NegalignConfig field: it can be set in the
YAML recipe (`key: value`) or on the command line (`key=value` or `--key value`); the command line wins."""

from __future__ import annotations

import argparse
import os
import signal
import sys

TRAIN_EPILOG = """\
examples:
  negalign train --config configs/d2o.yaml
  negalign train --config configs/d2o.yaml max_steps=10 beta=0.2 output_dir=runs/try
  negalign train --objective npo --data feedback.jsonl --max_steps 20

Every option below can be a YAML key in the recipe, key=value, or --key value.
"""


def _train_help() -> str:
    from transformers import HfArgumentParser

    from negalign.config import NegalignConfig

    parser = HfArgumentParser(NegalignConfig, prog="negalign train", epilog=TRAIN_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Train a causal LM with any negalign objective.")
    parser.add_argument("--config", help="YAML recipe (see configs/); other options override it")
    return parser.format_help()


def cmd_train(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(_train_help())
        return 0
    from negalign.commandline import split_config_flag
    from negalign.config import load_config, parse_overrides
    from negalign.pipeline import train

    recipe, rest = split_config_flag(argv)
    config = load_config(recipe, parse_overrides(rest))
    trainer = train(config)  # bad data or settings raise ValueError: main() prints it in one line
    if not trainer.is_world_process_zero():
        return 0
    last = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
    print(f"negalign: trained {trainer.state.global_step} steps of {config.objective}; "
          f"last loss {last.get('loss', float('nan')):.4f}; saved to {config.output_dir}")
    return 0


# every command: the function that runs it ("module:function", imported only when it runs, so that the command
# line starts fast and this module depends on none of them) and its line of help
COMMANDS = {
    "demo": ("negalign.demo:cmd_demo", "the whole path on SmolLM2 + HH negatives: sample, train D2O (and "
             "baselines), eval, report"),
    "loop": ("negalign.loop:cmd_loop", "round after round: the current model's own failures mined as D2O's next "
             "negatives, trained, evaluated (docs/loop.md)"),
    "train": ("negalign.cli:cmd_train", "train a model with any objective (D2O, DPO, NPO, KTO, ULMA, ...)"),
    "sample": ("negalign.sample_command:cmd_sample", "generate K self-samples per prompt (D2O anchors) into a resumable cache"),
    "flag": ("negalign.flag:cmd_flag", "turn the model's own answers to harmful prompts into negatives (judged "
             "complying)"),
    "eval": ("negalign.evaluation.evaluate:cmd_eval", "answer held-out prompts and judge them: harm, over-refusal, "
             "preference accuracy, KL"),
    "compare": ("negalign.evaluation.report:cmd_compare", "report over runs/evals: report.json, report.md, PNG plots"),
    "judge": ("negalign.evaluation.judge_command:cmd_judge", "the offline harm judge: `judge fit` re-makes it from "
              "XSTest, `judge score` scores answers"),
    "data": ("negalign.data.catalog:cmd_data", "the built-in data sets: `data list` shows where each is, `data "
             "fetch` downloads them"),
    "export": ("negalign.export:cmd_export", "a trained run -> a standalone model folder (LoRA merged) with its "
               "model card"),
    "llm-judge": ("negalign.evaluation.llm_judge:cmd_llm_judge", "pairwise win/tie/lose by an LLM over an "
                  "OpenAI-compatible API"),
}


def _command(target: str):
    import importlib

    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _show_progress_messages() -> None:
    """On the command line negalign's routine messages (INFO: data summary, reference cache, resume) are shown
    on stderr beside its warnings; a Python user sees warnings only unless they configure logging."""
    import logging

    class Stderr(logging.StreamHandler):  # whatever sys.stderr is when a message is written (tests swap it)
        negalign_cli = True
        stream = property(lambda self: sys.stderr, lambda self, value: None)

    logger = logging.getLogger("negalign")
    if not any(getattr(h, "negalign_cli", False) for h in logger.handlers):
        handler = Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _debug_flag(argv: list[str]) -> tuple[bool, list[str]]:
    """`negalign --debug COMMAND ...` (or a bare `--debug` among a command's options, or NEGALIGN_DEBUG=1): show the
    traceback behind a one-line error. `negalign train --debug VALUE` stays the Trainer's own `debug` option."""
    debug = os.environ.get("NEGALIGN_DEBUG", "") not in ("", "0")
    if argv[:1] == ["--debug"]:
        return True, argv[1:]
    rest = []
    for at, item in enumerate(argv):
        following = argv[at + 1] if at + 1 < len(argv) else None
        if item == "--debug" and at > 0 and (following is None or following.startswith("-") or "=" in following):
            debug = True
        else:
            rest.append(item)
    return debug, rest


def _progress_flag(argv: list[str]) -> tuple[bool, list[str]]:
    """`--no-progress` for every command: no progress bars at all. `eval` reads it as its own option, `train` as
    the Trainer's disable_tqdm (which also silences negalign's bars in that run); the others drop it here."""
    if "--no-progress" not in argv[1:] or argv[:1] == ["eval"]:
        return "--no-progress" in argv[1:], argv
    rest = [item for item in argv if item != "--no-progress"]
    return True, rest + (["--disable_tqdm=true"] if argv[:1] == ["train"] else [])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, argv = _debug_flag(argv)
    no_progress, argv = _progress_flag(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: negalign [--debug] COMMAND [options]   (negalign COMMAND --help for its options)", "",
                 "Align causal language models from negatives, point-wise feedback and pairs.", "", "commands:"]
        lines += [f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()]
        lines += ["", "--debug (or NEGALIGN_DEBUG=1): show the traceback behind a one-line error",
                  "--no-progress (or NEGALIGN_NO_PROGRESS=1): no progress bars, for any command"]
        print("\n".join(lines))
        known = not argv or argv[0] in ("-h", "--help")
        if not known:
            print(f"\nnegalign: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if known else 2
    target, _ = COMMANDS[argv[0]]
    from negalign import locks
    from negalign.interrupts import Interrupted, sigterm_as_interrupt
    from negalign.locks import OutputLocked
    from negalign.outputs import describe

    locks.COMMAND = argv[0]  # a name from COMMANDS: what a second process's refusal calls this one
    _show_progress_messages()
    # the user's own conditions end in one line (exit 2; 128 + the signal for SIGINT / SIGTERM); a bug still
    # shows its traceback, and --debug shows it for these too
    try:
        from negalign.progress import quietly

        with sigterm_as_interrupt(), quietly(no_progress):
            return _command(target)(argv[1:])
    except (ValueError, OSError, OutputLocked, Interrupted, KeyboardInterrupt) as error:
        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(error, (Interrupted, KeyboardInterrupt)):
            signum = getattr(error, "signum", signal.SIGINT)
            message = str(error) if isinstance(error, Interrupted) else (
                f"stopped by {signal.Signals(signum).name}; what was written completely is kept: rerun the same "
                "command to continue")
            print(f"negalign {argv[0]}: {message}", file=sys.stderr)
            return 128 + signum
        print(f"negalign {argv[0]}: {describe(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
