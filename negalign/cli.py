"""`negalign` command line. Every option of `negalign train` is a NegalignConfig field: it can be set in the
YAML recipe (`key: value`) or on the command line (`key=value` or `--key value`); the command line wins."""

from __future__ import annotations

import argparse
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
    from negalign.config import load_config, parse_overrides
    from negalign.training import train

    recipe = None
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise SystemExit("negalign train: --config needs a YAML file")
        recipe = argv[at + 1]
        argv = argv[:at] + argv[at + 2:]
    try:
        config = load_config(recipe, parse_overrides(argv))
    except (ValueError, FileNotFoundError) as error:
        print(f"negalign train: {error}", file=sys.stderr)
        return 2
    trainer = train(config)
    last = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
    print(f"negalign: trained {trainer.state.global_step} steps of {config.objective}; "
          f"last loss {last.get('loss', float('nan')):.4f}; saved to {config.output_dir}")
    return 0


COMMANDS = {"train": (cmd_train, "train a model with any objective (D2O, DPO, NPO, KTO, ULMA, ...)")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: negalign COMMAND [options]   (negalign COMMAND --help for its options)", "",
                 "Align causal language models from negatives, point-wise feedback and pairs.", "", "commands:"]
        lines += [f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()]
        print("\n".join(lines))
        known = not argv or argv[0] in ("-h", "--help")
        if not known:
            print(f"\nnegalign: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if known else 2
    command, _ = COMMANDS[argv[0]]
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
