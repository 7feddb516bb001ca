"""``get_pil_model`` and ``PILModel``: inject PIL-LoRA adapters into any ``nn.Module``, save, load, merge."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..features import derive_seed
from ._config import ALL_LINEAR, PILLoraConfig
from ._layer import PILLoraLinear

__all__ = ["PILModel", "get_pil_model", "FORMAT", "CONFIG_NAME", "WEIGHTS_NAME"]

FORMAT = "pilearn.adapters.pil_lora.v1"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _output_embedding(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get):
        return None
    try:
        return get()
    except (NotImplementedError, AttributeError):
        return None


def _select_targets(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Names of the modules to adapt, in ``named_modules`` order; errors name the culprit."""
    modules = dict(model.named_modules())
    if targets == ALL_LINEAR:
        head = _output_embedding(model)
        names = [n for n, m in modules.items() if isinstance(m, nn.Linear) and m is not head]
        if not names:
            raise ValueError(f'target_modules="all-linear" found no nn.Linear in {type(model).__name__}')
        return names
    linear = _linear_names(model)
    chosen: list[str] = []
    for target in targets:
        hits = [n for n in modules if n and _matches(n, target)]
        if not hits:
            few = ", ".join(repr(n) for n in linear[:8]) + (f", ... ({len(linear)} in all)" if len(linear) > 8 else "")
            raise ValueError(f"target module {target!r} not found in {type(model).__name__}; its nn.Linear modules "
                             f"are: {few or 'none'}")
        for name in hits:
            module = modules[name]
            if isinstance(module, PILLoraLinear):
                raise ValueError(f"module {name!r} already carries a PIL-LoRA adapter")
            if not isinstance(module, nn.Linear):
                raise TypeError(f"target module {name!r} is a {type(module).__name__}; PIL-LoRA adapts torch.nn.Linear "
                                "layers only (name a Linear inside it)")
            if name not in chosen:
                chosen.append(name)
    order = {n: i for i, n in enumerate(modules)}
    return sorted(chosen, key=order.__getitem__)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


class PILModel(nn.Module):
    """A base model with PIL-LoRA adapters injected (peft's ``PeftModel`` for closed-form adapters).

    ``forward`` (and any attribute it lacks, e.g. ``generate`` or ``config``) delegates to ``base_model``, whose
    target ``nn.Linear`` layers have been replaced in place by :class:`PILLoraLinear` wrappers. Every base
    parameter is frozen. Fit the adapters with :func:`fit_distill` or :func:`fit_task_residuals`.

    Attributes:
        base_model: the wrapped model (modified in place).
        pil_config: the :class:`PILLoraConfig`.
        adapter_names: names of the adapted layers in the base model, in ``named_modules`` order.
    """

    def __init__(self, base_model: nn.Module, config: PILLoraConfig) -> None:
        super().__init__()
        if not isinstance(config, PILLoraConfig):
            raise TypeError(f"config must be a PILLoraConfig, got {type(config).__name__}")
        if not isinstance(base_model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(base_model).__name__}")
        if any(isinstance(m, PILLoraLinear) for m in base_model.modules()):
            raise ValueError("model already carries PIL-LoRA adapters; load or fit the existing PILModel instead")
        names = _select_targets(base_model, config.target_modules)
        base_model.requires_grad_(False)
        for name in names:
            base = base_model.get_submodule(name)
            layer = PILLoraLinear(base, rank=config.rank, activation=config.activation,
                                  seed=derive_seed(config.seed, "pil_lora", name), init=config.init,
                                  scaling=config.scaling, fit_bias=config.fit_bias, standardize=config.standardize,
                                  name=name, down=config.down)
            _replace(base_model, name, layer)
        self.base_model = base_model
        self.pil_config = config
        self.adapter_names: list[str] = names

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # ------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> dict[str, PILLoraLinear]:
        """Name (in the base model) -> its :class:`PILLoraLinear`, in ``named_modules`` order."""
        return {name: self.base_model.get_submodule(name) for name in self.adapter_names}

    def _set_disabled(self, value: bool) -> None:
        for layer in self.adapters.values():
            layer.disabled = value

    def disable_adapters(self) -> "_AdapterSwitch":
        """Turn every adapter off now (the model computes its base function).

        Also a context manager that restores the previous state on exit::

            with pil_model.disable_adapters():
                base_logits = pil_model(**batch).logits
        """
        before = {name: layer.disabled for name, layer in self.adapters.items()}
        self._set_disabled(True)
        return _AdapterSwitch(self, before)

    def enable_adapters(self) -> None:
        """Turn every adapter back on."""
        self._set_disabled(False)

    def reset_adapters(self) -> None:
        """Zero every adapter (W_up = b = 0) and forget its input statistics: the base model again."""
        for layer in self.adapters.values():
            layer.reset()

    @property
    def n_adapter_parameters(self) -> int:
        """Solved numbers: Σ rank·out (+ out for the bias) over adapted layers, plus in·rank for a data-chosen
        ``W_down`` (``down="rrr"``); a seeded ``W_down`` is regenerated, not stored. A checkpoint also holds each
        layer's input statistics (in + 1 numbers)."""
        return sum(layer.W_up.numel() + (layer.bias.numel() if layer.bias is not None else 0)
                   + (layer.W_down.numel() if layer.down == "rrr" else 0)
                   for layer in self.adapters.values())

    def parameter_summary(self) -> str:
        """``"adapter params: 9,216 || base params: 134,515,008 || adapter%: 0.0069"`` (peft's
        ``print_trainable_parameters``, returned instead of printed)."""
        n_ad = self.n_adapter_parameters
        n_base = sum(p.numel() for p in self.base_model.parameters()) - n_ad
        return f"adapter params: {n_ad:,} || base params: {n_base:,} || adapter%: {100 * n_ad / max(n_base, 1):.4f}"

    # ------------------------------------------------------------------ merging
    def merge_and_unload(self) -> nn.Module:
        """Fold every adapter into its base weight and return the base model with plain ``nn.Linear`` layers.

        Only linear adapters (``activation="identity"``) merge: W ← W + (scaling/s)(W_down W_up)ᵀ and
        b ← b + scaling·(b_Δ − (μ/s) W_down W_up); a nonlinear adapter raises ValueError (see
        :meth:`PILLoraLinear.delta_weight`). The PILModel must not be used afterwards.
        """
        if self.pil_config.activation != "identity":
            raise ValueError(
                f"merge_and_unload needs activation='identity', this model's adapters use "
                f"{self.pil_config.activation!r}: Δ(x) = scaling·σ(x̂ W_down) W_up is not linear in x, so no merged "
                "weight reproduces it; keep the PILModel (or unload() it), or refit with activation='identity'"
            )
        for name, layer in self.adapters.items():
            _replace(self.base_model, name, layer.merged_linear() if layer._is_fitted else layer.base_layer)
        return self.base_model

    def unload(self) -> nn.Module:
        """Remove the adapters without merging: the base model with its original ``nn.Linear`` layers."""
        for name, layer in self.adapters.items():
            _replace(self.base_model, name, layer.base_layer)
        return self.base_model

    # ------------------------------------------------------------------ checkpoints
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """``{"<layer>.W_up", "<layer>.bias", "<layer>.input_shift", "<layer>.input_scale"}`` (and ``"<layer>.W_down"``
        for ``down="rrr"``), detached CPU copies."""
        out: dict[str, torch.Tensor] = {}
        for name, layer in self.adapters.items():
            for key in layer.stored_tensors:
                value = getattr(layer, key)
                if value is not None:
                    out[f"{name}.{key}"] = value.detach().cpu().contiguous()
        return out

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``adapter_config.json`` (config, layer names, flags) and ``adapter_model.safetensors`` (W_up, b, μ,
        s of every layer) to ``save_directory``. A seeded ``W_down`` is not written: it is regenerated from the seed; a
        data-chosen one (``down="rrr"``) is."""
        os.makedirs(save_directory, exist_ok=True)
        meta = {
            "format": FORMAT,
            "config": self.pil_config.to_dict(),
            "layers": list(self.adapter_names),
            "fitted": {n: bool(layer._is_fitted) for n, layer in self.adapters.items()},
            "calibrated": {n: bool(layer.calibrated) for n, layer in self.adapters.items()},
            "base_model_class": type(self.base_model).__name__,
        }
        with open(os.path.join(save_directory, CONFIG_NAME), "w") as f:
            json.dump(meta, f, indent=2)
        save_file(self.adapter_state_dict(), os.path.join(save_directory, WEIGHTS_NAME),
                  metadata={"format": FORMAT})

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, model_id: str | os.PathLike) -> "PILModel":
        """Inject the adapters saved by :meth:`save_pretrained` in ``model_id`` (a folder) into ``base_model`` (a fresh
        copy of the same architecture, modified in place). Outputs equal those before saving, bit for bit on the
        same device.

        Raises:
            FileNotFoundError: the folder lacks ``adapter_config.json`` or ``adapter_model.safetensors``.
            ValueError: not a checkpoint of this format, or ``base_model`` does not have the saved layers/shapes.
        """
        meta = _read_meta(os.fspath(model_id))
        config = PILLoraConfig.from_dict(meta["config"])
        model = cls(base_model, config)
        if model.adapter_names != meta["layers"]:
            missing = sorted(set(meta["layers"]) - set(model.adapter_names))
            extra = sorted(set(model.adapter_names) - set(meta["layers"]))
            raise ValueError(f"base_model does not match the checkpoint: saved layers missing here: {missing[:5]}, "
                             f"layers here not in the checkpoint: {extra[:5]}")
        tensors = load_file(os.path.join(os.fspath(model_id), WEIGHTS_NAME))
        with torch.no_grad():
            for name, layer in model.adapters.items():
                for key in layer.stored_tensors:
                    target = getattr(layer, key)
                    if target is None:
                        continue
                    value = tensors.get(f"{name}.{key}")
                    if value is None:
                        raise ValueError(f"checkpoint lacks {name}.{key}")
                    if value.shape != target.shape:
                        raise ValueError(f"{name}.{key} has shape {tuple(value.shape)} in the checkpoint, "
                                         f"{tuple(target.shape)} in base_model")
                    target.copy_(value)
                layer.calibrated.fill_(bool(meta["calibrated"][name]))
                layer._set_fitted(bool(meta["fitted"][name]))
        return model

    def __repr__(self) -> str:
        return f"PILModel(\n  (base_model): {self.base_model!r}\n)"


class _AdapterSwitch:
    """Returned by :meth:`PILModel.disable_adapters`: the adapters are already off; ``with`` restores them."""

    def __init__(self, model: PILModel, before: dict[str, bool]) -> None:
        self._model, self._before = model, before

    def __enter__(self) -> PILModel:
        return self._model

    def __exit__(self, *exc: object) -> None:
        for name, layer in self._model.adapters.items():
            layer.disabled = self._before.get(name, False)


def _read_meta(folder: str) -> dict:
    cfg, weights = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
    for path in (cfg, weights):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no PIL-LoRA checkpoint at {folder!r}: {os.path.basename(path)} is missing")
    with open(cfg) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
    with safe_open(weights, framework="pt") as f:
        if (f.metadata() or {}).get("format") != FORMAT:
            raise ValueError(f"{weights!r} is not a PIL-LoRA weights file")
    return meta


def get_pil_model(model: nn.Module, config: PILLoraConfig) -> PILModel:
    """Wrap ``model`` in a :class:`PILModel`: every ``nn.Linear`` named by ``config.target_modules`` becomes a
    :class:`PILLoraLinear` (in place), and every base parameter is frozen. The adapters start at zero, so the
    model's function is unchanged until a fit.

    Raises:
        ValueError: a target matches no module (the message lists some ``nn.Linear`` names), or the model already
            has adapters.
        TypeError: a target names a module that is not an ``nn.Linear``.
    """
    return PILModel(model, config)

