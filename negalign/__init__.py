"""negalign: align causal LMs from negatives, point-wise feedback and pairs.

    import negalign
    negalign.train("configs/d2o.yaml", max_steps=10)          # or a dict / NegalignConfig
    from negalign.objectives import d2o                        # the pure loss functions
    from negalign.methods import METHODS                       # which slots feed each one
"""

__version__ = "0.1.0"


def train(config=None, **overrides):
    """Train with any objective; see negalign.pipeline.train."""
    from negalign.pipeline import train as _train

    return _train(config, **overrides)
