"""negalign: align causal LMs from negatives, point-wise feedback and pairs."""

__version__ = "0.1.0"
