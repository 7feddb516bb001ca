"""Closed-form generative models: PIL flow matching, its paths, samplers and the memorization reference."""

from ._empirical import EmpiricalVelocityField
from ._flow import PILFlowMatching
from ._paths import OTPath, check_time
from ._samplers import ODE_METHODS, ODEResult, integrate

__all__ = ["EmpiricalVelocityField", "ODEResult", "ODE_METHODS", "OTPath", "PILFlowMatching", "check_time",
           "integrate"]
