"""Closed-form generative models: PIL flow matching and PIL diffusion, their paths, samplers and schedulers, and the
memorization references."""

from ._empirical import EmpiricalDenoiser, EmpiricalVelocityField
from ._diffusion import PILDiffusion
from ._flow import PILFlowMatching
from ._paths import OTPath, check_time
from ._samplers import ODE_METHODS, ODEResult, integrate
from ._schedulers import (DDIMScheduler, DDPMScheduler, DiffusionSampleResult, SchedulerOutput, denoise,
                          make_betas)

__all__ = ["DDIMScheduler", "DDPMScheduler", "DiffusionSampleResult", "PILDiffusion", "SchedulerOutput", "denoise",
           "EmpiricalDenoiser",
           "make_betas", "EmpiricalVelocityField", "ODEResult", "ODE_METHODS", "OTPath", "PILFlowMatching", "check_time",
           "integrate"]
