"""`negalign loop` (and `negalign.loop(...)`): mine the next negatives from the model being trained, round after
round. Each round the current model answers the round's harmful and benign prompts, the offline judge flags
harmful compliance and benign refusals, these become the round's negatives with K anchors drawn from the current
model under the sampling context, D2O trains with the current model as policy start and reference (a refusal
watch scoring a held-apart slice every N steps, keeping the checkpoints on the harm / refusal front), and the
result is evaluated on the suites and the reach check, then becomes the next round's model. docs/loop.md."""

from __future__ import annotations

from negalign.loop.settings import LoopSettings

__all__ = ["LoopSettings", "loop", "cmd_loop"]


def loop(settings: LoopSettings | dict | None = None, **overrides) -> dict:
    """Run (or continue) a loop: `settings` a LoopSettings or a dict of its fields, keywords win. Returns the
    report across rounds ({"rounds": [...]}; out/report.md and out/front.png on disk)."""
    from dataclasses import asdict

    from negalign.loop.run import run_loop

    if isinstance(settings, LoopSettings):
        values = {k: v for k, v in asdict(settings).items() if k != "training"}
        values["model_options"] = settings.model_options
    else:
        values = dict(settings or {})
    values.update(overrides)
    if isinstance(values.get("model_options"), dict):
        from negalign.models import ModelOptions

        values["model_options"] = ModelOptions(**values["model_options"])
    return run_loop(LoopSettings(**values))


def cmd_loop(argv: list[str]) -> int:
    from negalign.commandline import parse_command
    from negalign.loop.run import run_loop

    settings = parse_command(LoopSettings, argv, prog="negalign loop", description=__doc__)
    report = run_loop(settings)
    print(f"negalign loop: {len(report['rounds']) - 1} rounds -> {report['markdown']}")
    return 0


class _CallableModule(__import__("types").ModuleType):
    """`negalign.loop(...)` calls loop(): importing this package puts the module, not the function, at
    negalign.loop, so the module itself answers the call."""

    def __call__(self, settings=None, **overrides):
        return loop(settings, **overrides)


__import__("sys").modules[__name__].__class__ = _CallableModule
