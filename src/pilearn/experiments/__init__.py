"""Benchmark suites: PIL side by side with the methods a user would otherwise pick."""

from .classify import ClassifyConfig, make_config as make_classify_config, render as render_classify, run_classify
from .diffusion import (DiffusionConfig, make_config as make_diffusion_config, render as render_diffusion,
                        render_ablation as render_diffusion_ablation, run_diffusion)
from .lm import LMBenchConfig, make_config as make_lm_config, render as render_lm, render_ablation as render_lm_ablation, run_lm
from .flow import FlowConfig, make_config as make_flow_config, render as render_flow, render_ablation as render_flow_ablation, run_flow
from .lora import LoraBenchConfig, make_config as make_lora_config, render as render_lora, run_lora
from .reparam import ReparamConfig, make_config as make_reparam_config, render as render_reparam, run_reparam
from .solver import SolverConfig, make_config as make_solver_config, render as render_solver, run_solver

#: suite name -> (config factory, runner); ``pilearn bench`` with no suite runs them all
SUITES = {"classify": (make_classify_config, run_classify), "flow": (make_flow_config, run_flow),
          "diffusion": (make_diffusion_config, run_diffusion), "lm": (make_lm_config, run_lm),
          "reparam": (make_reparam_config, run_reparam),
          "lora": (make_lora_config, run_lora), "solver": (make_solver_config, run_solver)}
#: suite name -> renderer of a results folder (tables and plots come from results.json only)
RENDERERS = {"classify": render_classify, "flow": render_flow, "ablate-flow": render_flow_ablation,
             "diffusion": render_diffusion, "ablate-diffusion": render_diffusion_ablation, "lm": render_lm, "ablate-lm": render_lm_ablation,
             "reparam": render_reparam, "lora": render_lora, "solver": render_solver}

__all__ = ["SUITES", "ClassifyConfig", "LoraBenchConfig", "run_lora", "make_lora_config", "DiffusionConfig", "FlowConfig", "ReparamConfig", "run_classify", "run_diffusion",
           "run_flow", "run_reparam", "make_classify_config", "make_diffusion_config", "make_flow_config",
           "make_reparam_config", "SolverConfig", "run_solver", "make_solver_config"]
