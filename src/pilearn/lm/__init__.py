"""PIL-LM: a transformer language model whose feed-forward networks are solved in closed form, and its baselines."""

from ._ngram import DiscountFallbackWarning, KneserNeyLM

__all__ = ["KneserNeyLM", "DiscountFallbackWarning"]
