"""negalign: align causal LMs from negatives, point-wise feedback and pairs.

    import negalign
    negalign.train("configs/d2o.yaml", max_steps=10)          # or a dict / NegalignConfig
    negalign.train({"objective": "npo"}, model=model, tokenizer=tok, train_dataset=rows)  # objects in
    from negalign.objectives import d2o                        # the pure loss functions
    from negalign.methods import METHODS                       # which slots feed each one
"""

__version__ = "0.1.0"


def train(config=None, *, model=None, tokenizer=None, train_dataset=None, **overrides):
    """Train with any objective, from names or from objects you hold; see negalign.pipeline.train."""
    from negalign.pipeline import train as _train

    return _train(config, model=model, tokenizer=tokenizer, train_dataset=train_dataset, **overrides)
