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
    from negalign.config import load_config, parse_overrides, split_config_flag
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


def cmd_sample(argv: list[str]) -> int:
    from negalign.config import accept_underscore_spellings, recipe_defaults, split_config_flag
    from negalign.models import add_model_arguments
    from negalign.sampling import SamplingSettings

    defaults = SamplingSettings()  # one set of sampling defaults: here, in recipes, in refreshes
    parser = argparse.ArgumentParser(
        prog="negalign sample", description="Generate K self-samples per prompt into a resumable jsonl cache "
        "(rerun the same command to continue after an interruption).",
        epilog="--config RECIPE takes the model, data, samples file (as --output), k, sampling settings and "
        "context from a training recipe, so the samples are the ones that recipe trains on; flags win.")
    parser.add_argument("--config", help="a training recipe (YAML) to take the sampling settings from")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="sampling policy (path, Hub or short name)")
    parser.add_argument("--data", nargs="+", help="feedback file(s) or data set(s) whose prompts are sampled, in "
                        "order, duplicates once (required without --config)")
    parser.add_argument("--output", help="samples jsonl; a .meta.json is written beside it (default with --config: "
                        "the recipe's `samples`)")
    parser.add_argument("--k", type=int, default=defaults.k, help="answers per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="prompts per batch (x K rows decoded together)")
    parser.add_argument("--max-prompt-length", type=int, default=defaults.max_prompt_length,
                        help="prompt tokens kept (the last ones)")
    parser.add_argument("--max-prompts", type=int, default=None, help="only the first N distinct prompts (that "
                        "are not evaluation prompts, as in training)")
    parser.add_argument("--no-decontaminate", action="store_true", help="also sample prompts that duplicate an "
                        "evaluation prompt (training leaves those out unless `decontaminate: false`)")
    parser.add_argument("--sampling-context", default=None,
                        help="chat messages placed before each prompt only while sampling: a preset "
                        "(refusal, refusal-selective) or a JSON/YAML file of {role, content} messages "
                        "(docs/sampling_context.md)")
    parser.add_argument("--sampling-instruction", default=None,
                        help="system prompt used only while sampling: the one-message case of --sampling-context")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast while generating (float32 weights; "
                        "--dtype bfloat16 loads bf16 weights instead)")
    parser.add_argument("--on-bad-row", default="error", choices=["error", "skip"],
                        help="stop at a bad data row, or skip and count bad rows")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if the output exists")
    parser.add_argument("--wait", action="store_true",
                        help="if another process is writing --output, wait for it (default: stop at once)")
    parser.add_argument("--no-anchor-report", action="store_true",
                        help="skip the anchor report (refusal share, length, examples beside the human negatives) "
                        "printed and saved as OUTPUT.anchors.json")
    add_model_arguments(parser)
    accept_underscore_spellings(parser)
    recipe, _ = split_config_flag(argv)
    if recipe:
        parser.set_defaults(**recipe_defaults(recipe, "sample"))
    args = parser.parse_args(argv)
    for needed in ("data", "output"):
        if not getattr(args, needed):
            parser.error(f"--{needed} is required (or a --config recipe that sets it)")
    import torch

    from negalign.data.paths import data_dir
    from negalign.locks import output_lock
    from negalign.models import load_model, load_tokenizer, loaded_as, model_options_from
    from negalign.sampling import SamplingSettings, prompts_for_sampling, sample
    from negalign.sampling_context import resolve_context

    context = resolve_context(args.sampling_context, args.sampling_instruction)
    # the settings first: a bad number stops here, before the data is read and the model loaded
    settings = SamplingSettings(k=args.k, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                                max_prompt_length=args.max_prompt_length,
                                context=context)
    sources = args.data if isinstance(args.data, list) else [args.data]  # a recipe's `data` is one source
    folder = None if args.no_decontaminate else data_dir()
    prompts = prompts_for_sampling(sources, args.output, args.max_prompts, folder, on_bad_row=args.on_bad_row)
    with output_lock(args.output, "sampling", wait=args.wait):
        options = model_options_from(args)
        tokenizer, model = load_tokenizer(args.model, options.trust_remote_code), load_model(args.model, options)
        print(f"negalign sample: {args.model} loaded as {loaded_as(model)}", file=sys.stderr)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=args.bf16):
            report = sample(model, tokenizer, prompts, args.output, settings, model_id=args.model,
                            overwrite=args.overwrite)
    print(f"negalign: {report.n_rows_written} samples written, {report.n_rows_reused} reused, "
          f"{report.n_prompts} prompts, {report.tokens_per_second:.1f} generated tokens/s -> {report.output}")
    if not args.no_anchor_report:
        from negalign.anchors import REPORT_SUFFIX, format_report, report_samples_file

        print(format_report(report_samples_file(args.output, sources[0] if len(sources) == 1 else None,
                                                      on_bad_row=args.on_bad_row)))
        print(f"negalign: anchor report -> {args.output}{REPORT_SUFFIX}")
    return 0


# every command: the function that runs it ("module:function", imported only when it runs, so that the command
# line starts fast and this module depends on none of them) and its line of help
COMMANDS = {
    "demo": ("negalign.demo:cmd_demo", "the whole path on SmolLM2 + HH negatives: sample, train D2O (and "
             "baselines), eval, report"),
    "train": ("negalign.cli:cmd_train", "train a model with any objective (D2O, DPO, NPO, KTO, ULMA, ...)"),
    "sample": ("negalign.cli:cmd_sample", "generate K self-samples per prompt (D2O anchors) into a resumable cache"),
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
    target, _ = COMMANDS[argv[0]]
    from negalign.locks import OutputLocked

    _show_progress_messages()
    try:
        return _command(target)(argv[1:])
    except (ValueError, OSError, OutputLocked) as error:  # bad input or settings: the message says what to fix
        print(f"negalign {argv[0]}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
