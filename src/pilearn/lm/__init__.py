"""PIL-LM: a transformer language model whose feed-forward networks are solved in closed form, and its baselines.

* :class:`PILLM` / :class:`LMConfig` (``model.py``): the transformer, one readable file.
* :func:`fit_pil`: PIL-LM (pure), every weight without a gradient; :func:`train_adamw`: the AdamW baseline and the
  +Attn phase.
* :class:`KneserNeyLM`: interpolated modified Kneser-Ney n-gram model, the classic gradient-free baseline.
* :func:`evaluate`: exact perplexity and top-1 accuracy; :func:`save_lm` / :func:`load_lm`: safetensors.
"""

from ._io import load_lm, save_lm
from ._metrics import LMEval, evaluate, perplexity, scored_hidden, sliding_windows, token_log_probs
from ._ngram import DiscountFallbackWarning, KneserNeyLM
from ._pil import PILFitConfig, PILFitReport, fit_pil, spectral_embeddings, stream_layout
from ._train import TrainConfig, TrainReport, train_adamw, trainable_parameters
from .model import CONFIGS, LMConfig, PILLM

__all__ = ["CONFIGS", "LMConfig", "PILLM", "PILFitConfig", "PILFitReport", "fit_pil", "spectral_embeddings",
           "stream_layout", "TrainConfig", "TrainReport", "train_adamw", "trainable_parameters", "KneserNeyLM",
           "DiscountFallbackWarning", "LMEval", "evaluate", "perplexity", "scored_hidden", "sliding_windows", "token_log_probs", "save_lm", "load_lm"]
