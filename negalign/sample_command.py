"""`negalign sample`: K self-samples per prompt into a resumable jsonl cache, from flags or a recipe.

The command's settings are one dataclass (SampleCommand) whose fields are its flags and the keys of a
`--config` file; a training recipe given as `--config` passes the settings it shares with sampling, so the
samples are the ones that recipe trains on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from negalign.commandline import option, parse_command
from negalign.data.loading import ON_BAD_ROW
from negalign.models import ModelOptions
from negalign.serving import SERVER_FIELDS, ServerOptions
from negalign.settings import AT_LEAST_1, SamplingSettings, number_problems

_DEFAULTS = SamplingSettings()  # one set of sampling defaults: here, in recipes, in refreshes


@dataclass
class SampleCommand:
    # a training recipe as --config: recipe key -> field
    RECIPE: ClassVar[dict] = {
        "model": "model", "data": "data", "samples": "output", "k": "k", "seed": "seed",
        "sample_max_new_tokens": "max_new_tokens", "sample_temperature": "temperature", "sample_top_p": "top_p",
        "sample_batch_size": "batch_size", "max_prompt_length": "max_prompt_length", "max_prompts": "max_prompts",
        "decontaminate": "decontaminate", "sampling_context": "sampling_context",
        "sampling_instruction": "sampling_instruction", "on_bad_row": "on_bad_row",
        "attn_implementation": "attn_implementation", "trust_remote_code": "trust_remote_code",
        **{name: name for name in SERVER_FIELDS}}  # the recipe's generation server draws its anchors
    # taken from a recipe even where it leaves them at their defaults, so that sampling and training agree
    RECIPE_DEFAULTS_TOO: ClassVar[tuple] = ("sample_max_new_tokens", "sample_temperature", "sample_top_p",
                                            "sample_batch_size")

    data: list[str] | None = option(None, "feedback file(s) or data set(s) whose prompts are sampled, in order, "
                                    "duplicates once (required without --config)")
    output: str | None = option(None, "samples jsonl; a .meta.json is written beside it (default with --config: "
                                "the recipe's `samples`)")
    model: str = option("smollm2-135m-instruct", "sampling policy (path, Hub or short name)")
    k: int = option(_DEFAULTS.k, "answers per prompt")
    max_new_tokens: int = option(_DEFAULTS.max_new_tokens, "tokens per answer")
    temperature: float = option(_DEFAULTS.temperature, "0 = greedy")
    top_p: float = option(_DEFAULTS.top_p, "nucleus sampling's probability mass")
    seed: int = option(_DEFAULTS.seed, "seed of the random draws")
    batch_size: int = option(_DEFAULTS.batch_size, "prompts per batch (x K rows decoded together)")
    max_prompt_length: int = option(_DEFAULTS.max_prompt_length, "prompt tokens kept (the last ones)")
    max_prompts: int | None = option(None, "only the first N distinct prompts (that are not evaluation prompts, "
                                     "as in training)")
    decontaminate: bool = option(True, "leave out prompts that duplicate an evaluation prompt, as training does "
                                 "(--no-decontaminate samples them too)")
    sampling_context: str | None = option(None, "chat messages placed before each prompt only while sampling: a "
                                          "preset (refusal, refusal-selective) or a JSON/YAML file of {role, "
                                          "content} messages (docs/sampling_context.md)")
    sampling_instruction: str | None = option(None, "system prompt used only while sampling: the one-message "
                                              "case of --sampling-context")
    bf16: bool = option(False, "bf16 autocast while generating (float32 weights; --dtype bfloat16 loads bf16 "
                        "weights instead)")
    on_bad_row: str = option("error", "stop at a bad data row, or skip and count bad rows",
                             choices=list(ON_BAD_ROW))
    overwrite: bool = option(False, "regenerate even if the output exists (what is there is moved aside to "
                             "OUTPUT.replaced-<time>)")
    wait: bool = option(False, "if another process is writing --output, wait for it (default: stop at once)")
    anchor_report: bool = option(True, "print the anchor report (refusal share, length, examples beside the human "
                                 "negatives) and save it as OUTPUT.anchors.json")
    model_options: ModelOptions = option(help="", factory=ModelOptions)
    server: ServerOptions = option(help="", factory=ServerOptions)

    def __post_init__(self):
        """Every number checked when the command is read, before any file is touched (settings.number_problems):
        `--max-prompts -1` sampled all prompts but the last."""
        if problems := number_problems(self, {"max_prompts": AT_LEAST_1}):
            raise ValueError("; ".join(problems))
        self.sampling_settings()  # k, temperature, top_p ...: finite and in range

    def sampling_settings(self) -> SamplingSettings:
        """The generation settings, checked (a bad number stops here, before data or model are read)."""
        from negalign.sampling_context import resolve_context

        return SamplingSettings(k=self.k, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                top_p=self.top_p, seed=self.seed, batch_size=self.batch_size,
                                max_prompt_length=self.max_prompt_length,
                                context=resolve_context(self.sampling_context, self.sampling_instruction))


def cmd_sample(argv: list[str]) -> int:
    command = parse_command(
        SampleCommand, argv, prog="negalign sample",
        description="Generate K self-samples per prompt into a resumable jsonl cache (rerun the same command to "
        "continue after an interruption).",
        epilog="--config RECIPE takes the model, data, samples file (as --output), k, sampling settings and "
        "context from a training recipe, so the samples are the ones that recipe trains on; flags win.")
    for needed in ("data", "output"):
        if not getattr(command, needed):
            raise ValueError(f"--{needed} is required (or a --config recipe that sets it)")
    return run_sample(command)


def samples_verdict(path) -> str | None:
    """An existing samples file is this command's to continue (its .meta.json then decides whether the settings
    match); any other file is not written over without --overwrite."""
    from negalign.sampling import META_SUFFIX

    if path.with_name(path.name + META_SUFFIX).exists():
        return None
    return f"exists and was not written by `negalign sample` (no {path.name}{META_SUFFIX} beside it)"


def claim_samples_output(command: SampleCommand, sources: list[str]) -> None:
    """Before anything is read: the output is none of the inputs, and its place can hold a file."""
    from negalign.models import check_model
    from negalign.outputs import check_before_lock
    from negalign.sampling import check_output_name

    check_output_name(command.output)  # a .gz output: refused before any work (rows are appended as made)
    check_model(command.model)  # a model that cannot load: refused before the lock file or any output is made
    check_before_lock(command.output, [("--data", source) for source in sources] + [
        ("--model", command.model), ("--sampling-context", command.sampling_context)],  # a preset is no path
        folder=False)


def run_sample(command: SampleCommand) -> int:
    import torch

    from negalign.anchors import REPORT_SUFFIX
    from negalign.data.paths import data_dir
    from negalign.decontamination import RECORD_SUFFIX, write_record
    from negalign.interrupts import finish_then_stop
    from negalign.locks import output_lock
    from negalign.models import load_model, load_tokenizer, loaded_as
    from negalign.outputs import claim
    from negalign.sampling import META_SUFFIX, check_existing, prompts_for_sampling, sample

    settings = command.sampling_settings()
    sources = command.data if isinstance(command.data, list) else [command.data]  # a recipe's `data` is one
    folder = data_dir() if command.decontaminate else None
    claim_samples_output(command, sources)
    with output_lock(command.output, "sampling", wait=command.wait):
        # the output's own files go aside with it (a refusal or --overwrite never leaves another's record rewritten)
        claim(command.output, folder=False, overwrite=command.overwrite, verdict=samples_verdict,
              companions=[META_SUFFIX, REPORT_SUFFIX, RECORD_SUFFIX])
        check_existing(command.output)  # a corrupt file left by an earlier run stops before the model loads
        removed: list = []
        prompts = prompts_for_sampling(sources, command.output, command.max_prompts, folder,
                                       on_bad_row=command.on_bad_row, removals=removed)
        options = command.model_options
        tokenizer = load_tokenizer(command.model, options.trust_remote_code, options.chat_template)
        model = load_model(command.model, options)
        print(f"negalign sample: {command.model} loaded as {loaded_as(model)}", file=sys.stderr)
        server = command.server.client()
        if server is not None:
            print(f"negalign sample: answers from the generation server {server.shown}", file=sys.stderr)
        try:
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=command.bf16), \
                    finish_then_stop("batch of samples" if server is None else "requests to the server"):
                report = sample(model, tokenizer, prompts, command.output, settings, model_id=command.model,
                                overwrite=command.overwrite, stop_on_signal=True, server=server)
        finally:
            if server is not None:
                server.close()
        if folder is not None:  # sample() accepted the output (its .meta.json): the record is this output's
            write_record(command.output, folder, removed)
    print(f"negalign: {report.n_rows_written} samples written, {report.n_rows_reused} reused, "
          f"{report.n_prompts} prompts, {report.tokens_per_second:.1f} generated tokens/s -> {report.output}")
    if command.anchor_report:
        from negalign.anchors import REPORT_SUFFIX, format_report, report_samples_file

        print(format_report(report_samples_file(command.output, sources[0] if len(sources) == 1 else None,
                                                on_bad_row=command.on_bad_row)))
        print(f"negalign: anchor report -> {command.output}{REPORT_SUFFIX}")
    return 0
