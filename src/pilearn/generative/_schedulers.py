"""Noise schedulers for discrete-time diffusion: DDPM (Ho et al. 2020) and DDIM (Song et al. 2021).

They follow the interface of the diffusers schedulers (``set_timesteps``, ``timesteps``, ``step``, ``add_noise``,
``get_velocity``, ``scale_model_input``, ``init_noise_sigma``, ``config``), so a diffusers user can swap them in.
They hold no weights and know nothing of the model: a scheduler is the schedule ``β_t`` and pure tensor math on
``x_t`` and whatever the model predicted.

Notation (Ho et al. 2020; Song et al. 2021). ``T`` training timesteps ``t = 0 … T−1``; the forward process is

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I),   α_t = 1 − β_t,   ᾱ_t = ∏_{s ≤ t} α_s

so ``x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε`` with ``ε ~ N(0, I)`` (:meth:`add_noise`). A model predicts, depending on
``prediction_type``, the noise ε ("epsilon"), the clean sample x_0 ("sample") or the velocity
``v = √ᾱ_t ε − √(1 − ᾱ_t) x_0`` ("v_prediction", Salimans & Ho 2022); each gives the same pair

    epsilon:       x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t
    sample:        ε̂   = (x_t − √ᾱ_t x̂_0)/√(1 − ᾱ_t)
    v_prediction:  x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v̂,   ε̂ = √ᾱ_t v̂ + √(1 − ᾱ_t) x_t

Sampling visits ``num_inference_steps`` timesteps ``t_1 > t_2 > …`` chosen by ``timestep_spacing``; a step goes
from ``t`` to the next visited timestep ``t'`` (``t' = −1`` after the last one, where ``ᾱ_{−1} = 1``), so every
formula below uses ``ᾱ_{t'}`` and the effective ``α_t = ᾱ_t/ᾱ_{t'}``, which is right for any number of steps.

All arithmetic runs in float64 (schedule and step coefficients included) and the results are cast back to the
dtype and device of the input sample.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

from ._samplers import check_model_output

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "DiffusionSampleResult",
    "PredictionType",
    "ScheduleName",
    "SchedulerOutput",
    "TimestepSpacing",
    "VarianceType",
    "denoise",
    "make_betas",
]

ScheduleName = Literal["linear", "scaled_linear", "cosine"]
PredictionType = Literal["epsilon", "sample", "v_prediction"]
VarianceType = Literal["fixed_small", "fixed_large"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]

_SCHEDULES: tuple[str, ...] = (*get_args(ScheduleName), "squaredcos_cap_v2")
_PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
_VARIANCE_TYPES: tuple[str, ...] = get_args(VarianceType)
_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)
_COSINE_S = 0.008  # Nichol & Dhariwal 2021, eq. 17: the offset that keeps β_0 from being vanishingly small
_MAX_BETA = 0.999  # ... and the cap that keeps β near t = T from reaching 1 (a singularity at ᾱ = 0)
_MIN_VARIANCE = 1e-20  # diffusers clamps the posterior variance β̃_t here (it is 0 at the last step)

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------- validation


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return str(value)


def _check_tensor(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def _check_same_shape(value: torch.Tensor, name: str, reference: torch.Tensor, reference_name: str) -> None:
    if value.shape != reference.shape:
        raise ValueError(f"{name} must have the shape of {reference_name} {tuple(reference.shape)}, "
                         f"got {tuple(value.shape)}")


def _work_dtype(device: torch.device) -> torch.dtype:
    """The working precision: float64, except on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(_work_dtype(x.device))


# ------------------------------------------------------------------------------------------------------ schedule


def make_betas(beta_schedule: ScheduleName | Literal["squaredcos_cap_v2"], num_train_timesteps: int,
               beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The variance schedule ``β_0 … β_{T−1}`` of the forward process, as diffusers builds it (in float64).

    ``linear`` (Ho et al. 2020):      β_t = linspace(β_start, β_end, T)
    ``scaled_linear`` (latent diffusion, Rombach et al. 2022):   β_t = linspace(√β_start, √β_end, T)²
    ``cosine`` (Nichol & Dhariwal 2021, eq. 17; diffusers' ``"squaredcos_cap_v2"``, accepted as an alias):

        ᾱ(τ) = cos²((τ + s)/(1 + s) · π/2),  s = 0.008,   β_t = min(1 − ᾱ((t + 1)/T)/ᾱ(t/T), 0.999)

    ``beta_start`` and ``beta_end`` are validated for every schedule but only used by the first two.

    Args:
        beta_schedule: ``"linear"``, ``"scaled_linear"``, ``"cosine"`` or ``"squaredcos_cap_v2"``.
        num_train_timesteps: ``T >= 1``.
        beta_start, beta_end: ``0 < β_start <= β_end < 1``.

    Returns:
        ``(T,)`` float64 CPU tensor.
    """
    beta_schedule = _check_choice(beta_schedule, "beta_schedule", _SCHEDULES)
    T = _check_int(num_train_timesteps, "num_train_timesteps", 1)
    beta_start, beta_end = _check_float(beta_start, "beta_start"), _check_float(beta_end, "beta_end")
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    if beta_start > beta_end:
        raise ValueError(f"beta_start must be <= beta_end, got beta_start={beta_start!r} > beta_end={beta_end!r}")
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    tau = torch.arange(T + 1, dtype=torch.float64) / T  # (T+1,) τ = t/T
    alpha_bar = torch.cos((tau + _COSINE_S) / (1 + _COSINE_S) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=_MAX_BETA)


def _leading(T: int, N: int, steps_offset: int) -> np.ndarray:
    # Every (T // N)-th timestep from 0, shifted by steps_offset (DDIM paper; Stable Diffusion uses offset 1).
    timesteps = (np.arange(0, N) * (T // N)).round()[::-1].copy().astype(np.int64) + steps_offset
    if timesteps[0] >= T:
        raise ValueError(f"steps_offset={steps_offset} with num_inference_steps={N} puts the first timestep at "
                         f"{int(timesteps[0])}, outside [0, {T}); lower steps_offset or num_inference_steps")
    return timesteps


def _trailing(T: int, N: int) -> np.ndarray:
    # From T − 1 down in strides of T/N (Lin et al. 2024, Table 2). np.arange with a float stride returns one
    # timestep too many (-1) for some (T, N), e.g. (1000, 61); diffusers keeps it, we keep the first N.
    return (np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1)[:N]


def _linspace(T: int, N: int) -> np.ndarray:
    return np.linspace(0, T - 1, N).round()[::-1].copy().astype(np.int64)


# ----------------------------------------------------------------------------------------------------- outputs


@dataclass
class SchedulerOutput:
    """What :meth:`DDPMScheduler.step` and :meth:`DDIMScheduler.step` return (as diffusers' ``*SchedulerOutput``).

    Attributes:
        prev_sample: ``x_{t'}``, the sample at the next visited (earlier) timestep; shape, dtype and device of
            ``sample``.
        pred_original_sample: ``x̂_0`` predicted at this step (after clipping, if on); same shape.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class _FrozenConfig(dict):
    """The ``__init__`` arguments of a scheduler, read-only, readable as ``config["x"]`` or ``config.x``
    (as diffusers' ``FrozenDict``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no entry {name!r}; it has {sorted(self)}") from None

    def _read_only(self, *args: object, **kwargs: object) -> None:
        raise TypeError("a scheduler config is read-only; build a new scheduler with the changed arguments")

    __setitem__ = __delitem__ = __setattr__ = __ior__ = update = pop = popitem = clear = setdefault = _read_only

    def __reduce__(self) -> tuple[type, tuple[dict]]:  # copy/deepcopy/pickle rebuild it without __setitem__
        return type(self), (dict(self),)


# ------------------------------------------------------------------------------------------------------- base


class _DiffusionScheduler:
    """What DDPM and DDIM share: the schedule, the forward process, the inference timesteps, x̂_0 and clipping."""

    order = 1  # model evaluations per step, as diffusers' ``scheduler.order``

    def __init__(self, *, num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
                 prediction_type: str, clip_sample: bool, clip_sample_range: float, timestep_spacing: str,
                 steps_offset: int, **extra: Any) -> None:
        self.betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)  # (T,) float64
        self.alphas = 1.0 - self.betas  # (T,) α_t
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # (T,) ᾱ_t
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.prediction_type = _check_choice(prediction_type, "prediction_type", _PREDICTION_TYPES)
        if not isinstance(clip_sample, bool):
            raise TypeError(f"clip_sample must be a bool, got {type(clip_sample).__name__} {clip_sample!r}")
        self.clip_sample = clip_sample
        self.clip_sample_range = _check_float(clip_sample_range, "clip_sample_range")
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range!r}")
        self.timestep_spacing = _check_choice(timestep_spacing, "timestep_spacing", _SPACINGS)
        self.steps_offset = _check_int(steps_offset, "steps_offset", 0)
        self.config = _FrozenConfig(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                                    beta_end=beta_end, beta_schedule=beta_schedule, prediction_type=prediction_type,
                                    clip_sample=clip_sample, clip_sample_range=clip_sample_range,
                                    timestep_spacing=timestep_spacing, steps_offset=steps_offset, **extra)
        self.init_noise_sigma = 1.0  # x_T ~ N(0, σ² I) with σ = 1 for DDPM/DDIM
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1, dtype=torch.long)  # (T,) descending
        self._next: dict[int, int] = {}  # t → t' (the next visited timestep, −1 after the last)

    def __len__(self) -> int:
        return self.num_train_timesteps

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args})"

    # ----------------------------------------------------------------------------------------------- timesteps

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the ``N = num_inference_steps`` timesteps that sampling visits, in descending order.

        The three spacings of diffusers (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
        Flawed", Table 2), for ``T`` training timesteps:

            leading   t_k = (N − 1 − k)·⌊T/N⌋ + steps_offset           e.g. T=1000, N=10: 900, 800, …, 0
            trailing  t_k = round(T − k·T/N) − 1                        e.g. 999, 899, …, 99
            linspace  t_k = round((N − 1 − k)·(T − 1)/(N − 1))          e.g. 999, 888, …, 0

        Sets ``timesteps`` (``(N,)`` long on ``device``) and ``num_inference_steps``.

        Args:
            num_inference_steps: ``1 <= N <= num_train_timesteps``.
            device: where ``timesteps`` lives (default CPU).
        """
        T = self.num_train_timesteps
        N = _check_int(num_inference_steps, "num_inference_steps", 1)
        if N > T:
            raise ValueError(f"num_inference_steps must be <= num_train_timesteps={T}, got {N}")
        if self.timestep_spacing == "leading":
            timesteps = _leading(T, N, self.steps_offset)
        elif self.timestep_spacing == "trailing":
            timesteps = _trailing(T, N)
        else:
            timesteps = _linspace(T, N)
        visited = timesteps.tolist()
        self._next = dict(zip(visited, [*visited[1:], -1]))
        self.num_inference_steps = N
        self.timesteps = torch.from_numpy(timesteps).to(device)

    def _timestep(self, timestep: object, name: str = "timestep") -> int:
        """``timestep`` (an int, or a one-element integer-valued tensor) as an int in ``[0, T)``."""
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"{name} must be a single timestep, got a tensor of shape {tuple(timestep.shape)}")
            timestep = timestep.item()
        if isinstance(timestep, float) and timestep.is_integer():
            timestep = int(timestep)
        if isinstance(timestep, bool) or not isinstance(timestep, numbers.Integral):
            raise TypeError(f"{name} must be an integer timestep, got {type(timestep).__name__} {timestep!r}")
        if not 0 <= timestep < self.num_train_timesteps:
            raise ValueError(f"{name} must be in [0, {self.num_train_timesteps}), got {timestep!r}")
        return int(timestep)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """``t'``, the timestep sampling visits after ``timestep`` (``−1`` after the last one).

        Before :meth:`set_timesteps` this is ``t − 1`` (the full chain), as in diffusers.
        """
        t = self._timestep(timestep)
        if self.num_inference_steps is None:
            return t - 1
        if t not in self._next:
            raise ValueError(f"timestep must be one of the {self.num_inference_steps} timesteps set by "
                             f"set_timesteps ({int(self.timesteps[0])} … {int(self.timesteps[-1])}), got {t}")
        return self._next[t]

    # ------------------------------------------------------------------------------------------ forward process

    def _alpha_bar_at(self, timesteps: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ at ``timesteps`` shaped to broadcast against ``like`` (n, ...): ``(n, 1, …, 1)`` or ``()``."""
        if isinstance(timesteps, torch.Tensor) and timesteps.ndim > 0:
            if timesteps.ndim != 1 or timesteps.is_floating_point() or timesteps.dtype == torch.bool:
                raise TypeError(f"timesteps must be an int or a 1-D integer tensor (n,), got dtype "
                                f"{timesteps.dtype} and shape {tuple(timesteps.shape)}")
            if like.ndim == 0:
                raise ValueError("a tensor of timesteps needs samples with a batch dimension (n, ...), got a "
                                 "0-d sample; pass one int timestep instead")
            n = like.shape[0]
            if timesteps.shape[0] != n:
                raise ValueError(f"timesteps must have one entry per sample (batch size n = {n}), "
                                 f"got length {timesteps.shape[0]}")
            index = timesteps.detach().to("cpu", torch.long)
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= self.num_train_timesteps:
                raise ValueError(f"timesteps must be in [0, {self.num_train_timesteps}), got values in "
                                 f"[{lo}, {hi}]")
            alpha_bar = self.alphas_cumprod[index].reshape(n, *([1] * (like.ndim - 1)))  # (n, 1, ..., 1)
        else:
            alpha_bar = self.alphas_cumprod[self._timestep(timesteps, "timesteps")]  # ()
        return alpha_bar.to(dtype=_work_dtype(like.device), device=like.device)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: int | torch.Tensor) -> torch.Tensor:
        """Sample the forward process q(x_t | x_0) (Ho et al. 2020, eq. 4): ``x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε``.

        Args:
            original_samples: ``x_0`` of shape ``(n, ...)``, any rank.
            noise: ``ε``, the shape of ``original_samples``.
            timesteps: ``(n,)`` integer tensor, one timestep per sample, or one int (or 0-d tensor) for all;
                each in ``[0, T)``.

        Returns:
            ``x_t``, the shape, dtype and device of ``original_samples``.
        """
        x0 = _check_tensor(original_samples, "original_samples")
        _check_same_shape(_check_tensor(noise, "noise"), "noise", x0, "original_samples")
        alpha_bar = self._alpha_bar_at(timesteps, x0)
        x_t = alpha_bar.sqrt() * _wide(x0) + (1 - alpha_bar).sqrt() * _wide(noise.to(x0.device))
        return x_t.to(x0.dtype)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor) -> torch.Tensor:
        """The v-prediction target (Salimans & Ho 2022, §4): ``v = √ᾱ_t ε − √(1 − ᾱ_t) x_0``.

        Args:
            sample: ``x_0`` of shape ``(n, ...)`` (named ``sample`` as in diffusers).
            noise: ``ε``, the shape of ``sample``.
            timesteps: as in :meth:`add_noise`.

        Returns:
            ``v``, the shape, dtype and device of ``sample``.
        """
        x0 = _check_tensor(sample, "sample")
        _check_same_shape(_check_tensor(noise, "noise"), "noise", x0, "sample")
        alpha_bar = self._alpha_bar_at(timesteps, x0)
        v = alpha_bar.sqrt() * _wide(noise.to(x0.device)) - (1 - alpha_bar).sqrt() * _wide(x0)
        return v.to(x0.dtype)

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None) -> torch.Tensor:
        """``sample`` unchanged: DDPM/DDIM feed ``x_t`` to the model as is (kept for diffusers compatibility)."""
        return sample

    # ------------------------------------------------------------------------------------------------- step

    def _begin_step(self, model_output: object, timestep: object, sample: object) -> tuple[int, int]:
        """Check a step's inputs; return ``(t, t')``."""
        if self.num_inference_steps is None:
            raise ValueError(f"num_inference_steps is None: call {type(self).__name__}.set_timesteps("
                             f"num_inference_steps) before step()")
        x_t = _check_tensor(sample, "sample")
        _check_same_shape(_check_tensor(model_output, "model_output"), "model_output", x_t, "sample")
        t = self._timestep(timestep)
        return t, self.previous_timestep(t)

    def _alpha_bar(self, t: int) -> float:
        """ᾱ_t as a Python float (float64), for the scalar coefficients of a step."""
        return float(self.alphas_cumprod[t])

    def _alpha_bar_prev(self, t_prev: int) -> float:
        """ᾱ_{t'}, with ᾱ_{−1} = 1 after the last step (DDIM overrides it for ``set_alpha_to_one=False``)."""
        return self._alpha_bar(t_prev) if t_prev >= 0 else 1.0

    def _x0_and_eps(self, model_output: torch.Tensor, x_t: torch.Tensor,
                    alpha_bar_t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x̂_0, ε̂)`` from the model output for the three prediction types (module docstring)."""
        a, b = math.sqrt(alpha_bar_t), math.sqrt(1 - alpha_bar_t)  # √ᾱ_t, √(1 − ᾱ_t)
        if self.prediction_type == "epsilon":
            return (x_t - b * model_output) / a, model_output
        if self.prediction_type == "sample":
            return model_output, (x_t - a * model_output) / b
        return a * x_t - b * model_output, a * model_output + b * x_t  # v_prediction

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        """x̂_0 clamped to ``[−clip_sample_range, clip_sample_range]`` if ``clip_sample`` (data scaled to [−1, 1])."""
        if not self.clip_sample:
            return x0
        return x0.clamp(-self.clip_sample_range, self.clip_sample_range)

    @staticmethod
    def _draw_noise(sample: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # Drawn on the generator's device (the sample's without one), in the sample's dtype, then moved: seeded
        # identically, a CPU generator gives the draw of diffusers' randn_tensor, on any device.
        device = generator.device if generator is not None else sample.device
        z = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device=device)
        return z.to(sample.device)

    @staticmethod
    def _output(prev_sample: torch.Tensor, x0: torch.Tensor, sample: torch.Tensor,
                return_dict: bool) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        prev_sample, x0 = prev_sample.to(sample.dtype), x0.to(sample.dtype)
        return SchedulerOutput(prev_sample, x0) if return_dict else (prev_sample, x0)


# ------------------------------------------------------------------------------------------------------- DDPM


class DDPMScheduler(_DiffusionScheduler):
    """Ancestral sampling of denoising diffusion probabilistic models (Ho et al. 2020), as diffusers'
    ``DDPMScheduler``.

    Each :meth:`step` samples the posterior q(x_{t'} | x_t, x_0) with x_0 replaced by the model's x̂_0
    (eqs. 6–7 of the paper, written for a step from ``t`` to any earlier visited ``t'``).

    Args:
        num_train_timesteps: ``T >= 1``, the length of the training chain.
        beta_start, beta_end: ends of the linear schedules, ``0 < β_start <= β_end < 1``.
        beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"cosine"`` (alias ``"squaredcos_cap_v2"``), see
            :func:`make_betas`.
        prediction_type: what the model predicts: ``"epsilon"`` (ε), ``"sample"`` (x_0) or ``"v_prediction"`` (v).
        variance_type: ``"fixed_small"`` (σ² = β̃_t, the posterior variance; the right choice when x_0 is a point)
            or ``"fixed_large"`` (σ² = β_t; right when x_0 ~ N(0, I)); Ho et al. 2020, §3.2.
        clip_sample: clamp x̂_0 to ``[−clip_sample_range, clip_sample_range]`` (for data scaled to [−1, 1]).
        clip_sample_range: ``> 0``.
        timestep_spacing: ``"leading"``, ``"trailing"`` or ``"linspace"``, see :meth:`set_timesteps`.
        steps_offset: ``>= 0``, added to the ``"leading"`` timesteps.

    Attributes:
        config: the arguments above, read-only (``config.prediction_type`` or ``config["prediction_type"]``).
        betas, alphas, alphas_cumprod: ``(T,)`` float64 CPU tensors β_t, α_t, ᾱ_t.
        timesteps: ``(N,)`` long, descending; all ``T`` of them until :meth:`set_timesteps` is called.
        num_inference_steps: ``N``, ``None`` until :meth:`set_timesteps`.
        init_noise_sigma: ``1.0``, the std of x_T.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: ScheduleName | Literal["squaredcos_cap_v2"] = "linear",
                 prediction_type: PredictionType = "epsilon", variance_type: VarianceType = "fixed_small",
                 clip_sample: bool = True, clip_sample_range: float = 1.0,
                 timestep_spacing: TimestepSpacing = "leading", steps_offset: int = 0) -> None:
        self.variance_type = _check_choice(variance_type, "variance_type", _VARIANCE_TYPES)
        super().__init__(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                         beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip_sample,
                         clip_sample_range=clip_sample_range, timestep_spacing=timestep_spacing,
                         steps_offset=steps_offset, variance_type=variance_type)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None,
             return_dict: bool = True) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step ``x_t → x_{t'}``, ``t'`` the next visited timestep.

        Notation (code name → paper):
            alpha_bar_t    ᾱ_t          alpha_bar_prev  ᾱ_{t'}  (1 after the last step)
            alpha_t        α_t = ᾱ_t/ᾱ_{t'}             beta_t  β_t = 1 − α_t   (the β of the whole stride)
            sample         x_t          x0              x̂_0 (clipped if clip_sample)
            mean           μ̃_t          variance        σ_t²     noise  z ~ N(0, I)

        Formula (Ho et al. 2020, eqs. 6–7):

            μ̃_t = √ᾱ_{t'} β_t/(1 − ᾱ_t) · x̂_0 + √α_t (1 − ᾱ_{t'})/(1 − ᾱ_t) · x_t
            σ_t² = β̃_t = (1 − ᾱ_{t'})/(1 − ᾱ_t) · β_t   (fixed_small, clamped at 1e-20)   or  β_t  (fixed_large)
            x_{t'} = μ̃_t + σ_t z    (z only for t > 0; at t = 0 the step returns μ̃_0)

        Args:
            model_output: the model's prediction at ``(sample, timestep)``, the shape of ``sample``.
            timestep: ``t``, one of :attr:`timesteps` (int or one-element tensor).
            sample: ``x_t``, any shape.
            generator: draws ``z`` (on its device, then moved to ``sample``'s); ``None`` uses torch's global RNG.
            return_dict: return a :class:`SchedulerOutput` (default) or a tuple ``(prev_sample, pred_original)``.

        Returns:
            ``x_{t'}`` and ``x̂_0`` in the dtype and device of ``sample``.
        """
        t, t_prev = self._begin_step(model_output, timestep, sample)
        alpha_bar_t, alpha_bar_prev = self._alpha_bar(t), self._alpha_bar_prev(t_prev)
        alpha_t = alpha_bar_t / alpha_bar_prev
        beta_t = 1 - alpha_t

        x_t = _wide(sample)
        x0, _ = self._x0_and_eps(_wide(model_output.to(sample.device)), x_t, alpha_bar_t)
        x0 = self._clip(x0)
        mean = (math.sqrt(alpha_bar_prev) * beta_t / (1 - alpha_bar_t)) * x0 \
            + (math.sqrt(alpha_t) * (1 - alpha_bar_prev) / (1 - alpha_bar_t)) * x_t
        if t > 0:
            if self.variance_type == "fixed_small":
                variance = max((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t, _MIN_VARIANCE)
            else:
                variance = beta_t
            mean = mean + math.sqrt(variance) * _wide(self._draw_noise(sample, generator))
        return self._output(mean, x0, sample, return_dict)


# ------------------------------------------------------------------------------------------------------- DDIM


class DDIMScheduler(_DiffusionScheduler):
    """Denoising diffusion implicit models (Song et al. 2021), as diffusers' ``DDIMScheduler``.

    The non-Markovian reverse process of the paper's eq. 12: deterministic for η = 0 (an ODE sampler that allows
    few steps), the DDPM posterior variance for η = 1.

    Args:
        As :class:`DDPMScheduler`, without ``variance_type``, plus
        set_alpha_to_one: the ᾱ_{t'} used by the last step: ``1`` (the step lands on x_0, default) or ``ᾱ_0``.

    Attributes:
        As :class:`DDPMScheduler`, plus ``final_alpha_cumprod`` (ᾱ_{t'} of the last step, a 0-d float64 tensor).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: ScheduleName | Literal["squaredcos_cap_v2"] = "linear",
                 prediction_type: PredictionType = "epsilon", clip_sample: bool = True,
                 clip_sample_range: float = 1.0, set_alpha_to_one: bool = True,
                 timestep_spacing: TimestepSpacing = "leading", steps_offset: int = 0) -> None:
        if not isinstance(set_alpha_to_one, bool):
            raise TypeError(f"set_alpha_to_one must be a bool, got {type(set_alpha_to_one).__name__} "
                            f"{set_alpha_to_one!r}")
        super().__init__(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                         beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip_sample,
                         clip_sample_range=clip_sample_range, timestep_spacing=timestep_spacing,
                         steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one)
        self.set_alpha_to_one = set_alpha_to_one
        self.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if set_alpha_to_one \
            else self.alphas_cumprod[0].clone()

    def _alpha_bar_prev(self, t_prev: int) -> float:
        return self._alpha_bar(t_prev) if t_prev >= 0 else float(self.final_alpha_cumprod)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             eta: float = 0.0, use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None,
             return_dict: bool = True) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One generalized DDIM step ``x_t → x_{t'}``, ``t'`` the next visited timestep (Song et al. 2021, eq. 12).

        Notation (code name → paper; diffusers' names in brackets):
            alpha_bar_t     α_t in the paper, ᾱ_t here      [alpha_prod_t]
            alpha_bar_prev  α_{t−1} in the paper, ᾱ_{t'}    [alpha_prod_t_prev]; after the last step 1, or ᾱ_0
                            if not set_alpha_to_one
            x0, eps         x̂_0 = f_θ(x_t), ε̂ = ε_θ(x_t)    [pred_original_sample, pred_epsilon]
            sigma           σ_t(η)                           [std_dev_t]
            direction       "direction pointing to x_t"     [pred_sample_direction]

        Formula (eqs. 12 and 16):

            σ_t = η · √((1 − ᾱ_{t'})/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_{t'})
            x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ_t²) ε̂ + σ_t z,    z ~ N(0, I)

        With ``use_clipped_model_output`` ε̂ is recomputed from the clipped x̂_0, ``ε̂ = (x_t − √ᾱ_t x̂_0)/√(1 − ᾱ_t)``,
        so the two terms stay consistent.

        Args:
            model_output: the model's prediction at ``(sample, timestep)``, the shape of ``sample``.
            timestep: ``t``, one of :attr:`timesteps`.
            sample: ``x_t``, any shape.
            eta: ``η >= 0``; 0 is DDIM, 1 is DDPM's posterior variance. Above 1 it is accepted as long as
                ``σ_t² <= 1 − ᾱ_{t'}`` at this step.
            use_clipped_model_output: see above.
            generator: draws ``z`` when η > 0 and no ``variance_noise`` is given; ``None`` uses torch's global RNG.
            variance_noise: ``z`` itself, the shape of ``sample`` (not together with ``generator``).
            return_dict: return a :class:`SchedulerOutput` (default) or a tuple ``(prev_sample, pred_original)``.

        Returns:
            ``x_{t'}`` and ``x̂_0`` in the dtype and device of ``sample``.
        """
        t, t_prev = self._begin_step(model_output, timestep, sample)
        eta = _check_float(eta, "eta")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta!r}")
        if variance_noise is not None:
            if generator is not None:
                raise ValueError("pass generator or variance_noise, not both: variance_noise is the noise itself")
            _check_same_shape(_check_tensor(variance_noise, "variance_noise"), "variance_noise", sample, "sample")
        alpha_bar_t, alpha_bar_prev = self._alpha_bar(t), self._alpha_bar_prev(t_prev)

        x_t = _wide(sample)
        x0, eps = self._x0_and_eps(_wide(model_output.to(sample.device)), x_t, alpha_bar_t)
        x0 = self._clip(x0)
        if use_clipped_model_output:
            eps = (x_t - math.sqrt(alpha_bar_t) * x0) / math.sqrt(1 - alpha_bar_t)
        sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev))
        direction_variance = 1 - alpha_bar_prev - sigma**2
        if direction_variance < -1e-12:
            raise ValueError(f"eta={eta!r} is too large at timestep {t}: σ² = {sigma**2:.6g} exceeds "
                             f"1 − ᾱ_prev = {1 - alpha_bar_prev:.6g}")
        prev = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(max(direction_variance, 0.0)) * eps
        if eta > 0:
            z = variance_noise.to(sample.device) if variance_noise is not None else self._draw_noise(sample, generator)
            prev = prev + sigma * _wide(z)
        return self._output(prev, x0, sample, return_dict)


# ---------------------------------------------------------------------------------------------- sampling loop


@dataclass
class DiffusionSampleResult:
    """What :func:`denoise` returns.

    Attributes:
        x: the final samples x̂_0, the shape, dtype and device of ``x_T``.
        nfe: the number of model evaluations made, counted exactly (= ``num_inference_steps``).
        timesteps: ``(N,)`` long, the timesteps visited, in order.
        trajectory: ``(N + 1, *x.shape)``: ``x_T`` first, then the sample after each step, ``x`` last; or ``None``.
        pred_original: ``(N, *x.shape)``, x̂_0 predicted at each step; or ``None``.
    """

    x: torch.Tensor
    nfe: int
    timesteps: torch.Tensor
    trajectory: torch.Tensor | None = None
    pred_original: torch.Tensor | None = None


def denoise(predict: Predict, scheduler: DDPMScheduler | DDIMScheduler, x_T: torch.Tensor,
            num_inference_steps: int, *, generator: torch.Generator | None = None, eta: float = 0.0,
            return_trajectory: bool = False) -> DiffusionSampleResult:
    """Run the reverse process from ``x_T`` with ``scheduler`` and a model ``predict``: the loop of a diffusers
    pipeline, without the pipeline.

        scheduler.set_timesteps(N)
        for t in scheduler.timesteps:  x ← scheduler.step(predict(x, t), t, x).prev_sample

    Runs under ``torch.no_grad()``. Every model output is checked, so that a model that blows up is reported at
    the timestep where it happened rather than as NaN samples. ``scheduler`` is left with ``N`` timesteps set.

    Args:
        predict: ``predict(x (n, ...), timesteps (n,) long) -> (n, ...)``, the model output in the scheduler's
            ``prediction_type``; all entries of ``timesteps`` are equal.
        scheduler: a :class:`DDPMScheduler` or :class:`DDIMScheduler`.
        x_T: ``(n, ...)`` floating, the starting noise (std ``scheduler.init_noise_sigma`` = 1).
        num_inference_steps: ``N``, ``1 <= N <= num_train_timesteps``.
        generator: the noise of DDPM steps and of DDIM steps with η > 0; ``None`` uses torch's global RNG.
        eta: DDIM's η >= 0; must be 0 with DDPM.
        return_trajectory: also return the states and the x̂_0 of every step.

    Returns:
        :class:`DiffusionSampleResult`.

    Raises:
        ValueError: bad arguments, or a model output of the wrong shape (both shapes named).
        FloatingPointError: a model output with NaN or inf (the timestep and step named).
    """
    if not callable(predict):
        raise TypeError(f"predict must be callable as predict(x, timesteps), got {type(predict).__name__}")
    if not isinstance(scheduler, _DiffusionScheduler):
        raise TypeError(f"scheduler must be a DDPMScheduler or DDIMScheduler, got {type(scheduler).__name__}")
    x_T = _check_tensor(x_T, "x_T")
    if x_T.ndim < 1:
        raise ValueError(f"x_T must have a batch dimension (n, ...), got shape {tuple(x_T.shape)}")
    eta = _check_float(eta, "eta")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    if eta != 0 and not isinstance(scheduler, DDIMScheduler):
        raise ValueError(f"eta is DDIM's and must be 0 with {type(scheduler).__name__}, got {eta!r}")
    scheduler.set_timesteps(num_inference_steps, device=x_T.device)
    step_kwargs: dict[str, Any] = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}

    timesteps = scheduler.timesteps.clone()
    visited = timesteps.tolist()
    x, nfe = x_T, 0
    frames, preds = [x_T], []
    with torch.no_grad():
        for i, t in enumerate(visited):
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (n,)
            out = predict(scheduler.scale_model_input(x, t), t_batch)
            nfe += 1
            out = check_model_output(out, x, "predict", f"timestep {t} (step {i + 1} of {len(visited)})",
                                     nonfinite=FloatingPointError)
            result = scheduler.step(out, t, x, generator=generator, **step_kwargs)
            x = result.prev_sample
            if return_trajectory:
                frames.append(x)
                preds.append(result.pred_original_sample)
    if not return_trajectory:
        return DiffusionSampleResult(x=x, nfe=nfe, timesteps=timesteps)
    return DiffusionSampleResult(x=x, nfe=nfe, timesteps=timesteps, trajectory=torch.stack(frames),
                                 pred_original=torch.stack(preds))
