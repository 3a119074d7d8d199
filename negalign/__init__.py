"""negalign: align causal LMs from negatives, point-wise feedback and pairs.

    import negalign
    negalign.train("configs/d2o.yaml", max_steps=10)          # or a dict / NegalignConfig
    negalign.train({"objective": "npo"}, model=model, tokenizer=tok, train_dataset=rows)  # objects in
    negalign.flag_answers(answers)                             # answers you hold -> negatives judged complying
    negalign.loop(rounds=3, output="runs/loop")                # mine, train, evaluate, round after round
    from negalign.objectives import d2o                        # the pure loss functions
    from negalign.methods import METHODS                       # which slots feed each one
"""

__version__ = "0.1.0"


def train(config=None, *, model=None, tokenizer=None, train_dataset=None, callbacks=None, **overrides):
    """Train with any objective, from names or from objects you hold; see negalign.pipeline.train."""
    from negalign.pipeline import train as _train

    return _train(config, model=model, tokenizer=tokenizer, train_dataset=train_dataset, callbacks=callbacks,
                  **overrides)


# not `flag`: importing the negalign.flag module would replace a function of that name on the package
def flag_answers(answers, *, keep: str = "complying", threshold: float | None = None, judge=None) -> list[dict]:
    """The answers (a `negalign sample` file, or rows you hold) judged complying, or with keep="refusing"
    refusing, as negatives; see negalign.flag.flag_answers."""
    from negalign.flag import THRESHOLD
    from negalign.flag import flag_answers as _flag_answers

    return _flag_answers(answers, keep=keep, threshold=THRESHOLD if threshold is None else threshold, judge=judge)


def __getattr__(name):
    """`negalign.loop(...)` without importing it first: the package negalign.loop, whose module is callable."""
    if name == "loop":
        import importlib

        return importlib.import_module("negalign.loop")
    raise AttributeError(f"module 'negalign' has no attribute {name!r}")
