"""Save and load fitted estimators without pickle: one safetensors file.

The tensors are the solved weights (and, if asked, the sufficient statistics); the header's
metadata holds JSON: the estimator's class and parameters, the feature map's config (its seed, not
its random matrix), the chosen λ and the classes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.utils.validation import check_is_fitted

from .. import __version__
from .._safetensors import read_safetensors
from ..features import FeatureMap, feature_map_from_config
from ..solvers import RidgeStats

FORMAT = "pilearn.estimator.v1"


def _jsonable_params(est: Any) -> dict:
    params = est.get_params(deep=False)
    if isinstance(params.get("features"), FeatureMap):
        params["features"] = params["features"].get_config()
    for key in ("image_shape", "lam_grid"):
        if params.get(key) is not None:
            params[key] = [float(v) if key == "lam_grid" else int(v) for v in params[key]]
    return params


def save_estimator(est: Any, path: str | os.PathLike, *, include_stats: bool = False) -> None:
    """Write ``est`` to ``path``; ``include_stats`` also stores G, C, … so ``partial_fit``/``forget`` can go on."""
    check_is_fitted(est, "coef_")
    tensors = {"coef": torch.as_tensor(est.coef_).contiguous(), "intercept": torch.as_tensor(est.intercept_).contiguous()}
    if include_stats:
        for name, t in est.stats_.state_dict().items():
            tensors[f"stats.{name}"] = t.detach().cpu().contiguous()
    meta = {
        "format": FORMAT,
        "pilearn_version": __version__,
        "class": type(est).__name__,
        "params": _jsonable_params(est),
        "feature_map": est.feature_map_.get_config(),
        "seed": est.seed_,
        "input_scale": est.input_scale_,
        "lam": est.lam_,
        "lam_relative": getattr(est, "lam_relative_", None),
        "solver": est.solver_,
        "n_features_in": int(est.n_features_in_),
    }
    if hasattr(est, "classes_"):
        meta["classes"] = est.classes_.tolist()
        meta["classes_dtype"] = est.classes_.dtype.str
    if hasattr(est, "_y_ndim"):
        meta["y_ndim"] = est._y_ndim
    save_file(tensors, os.fspath(path), metadata={"pilearn": json.dumps(meta)})


def load_estimator(cls: type, path: str | os.PathLike, *, device: str | None = None) -> Any:
    """Rebuild an estimator written by :func:`save_estimator`."""
    path = os.fspath(path)
    meta, _ = read_safetensors(path, "saved pilearn model", tensors=False)
    raw = meta.get("pilearn")
    if raw is None:
        raise ValueError(f"{path!r} is a safetensors file but not a pilearn model (no 'pilearn' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta["class"] != cls.__name__:
        raise ValueError(f"{path!r} holds a {meta['class']}, not a {cls.__name__}; use {meta['class']}.load")
    params = dict(meta["params"])
    if device is not None:
        params["device"] = device
    for key in ("image_shape", "lam_grid"):
        if params.get(key) is not None:
            params[key] = tuple(params[key])
    est = cls(**params)
    tensors = load_file(path)
    est.coef_ = tensors["coef"].numpy()
    est.intercept_ = tensors["intercept"].numpy()
    est.seed_ = int(meta["seed"])
    est.input_scale_ = float(meta["input_scale"])
    est.lam_ = float(meta["lam"])
    if meta.get("lam_relative") is not None:
        est.lam_relative_ = float(meta["lam_relative"])
    est.solver_ = meta["solver"]
    est.n_features_in_ = int(meta["n_features_in"])
    est.feature_map_ = feature_map_from_config(meta["feature_map"], device=est.device)
    if "classes" in meta:
        from sklearn.preprocessing import LabelBinarizer

        est.classes_ = np.asarray(meta["classes"], dtype=np.dtype(meta["classes_dtype"]))
        est._binarizer = LabelBinarizer().fit(est.classes_)
    if "y_ndim" in meta:
        est._y_ndim = int(meta["y_ndim"])
    if "stats.M" in tensors:
        stats = RidgeStats(est.coef_.shape[0], est.coef_.shape[1], device=est.device)
        stats.load_state_dict({k[len("stats."):]: v for k, v in tensors.items() if k.startswith("stats.")})
        est.stats_ = stats
    est._cache_weights()
    return est
