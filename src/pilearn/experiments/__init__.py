"""Benchmark suites: PIL side by side with the methods a user would otherwise pick."""

from .classify import ClassifyConfig, make_config as make_classify_config, render as render_classify, run_classify

#: suite name -> (config factory, runner); ``pilearn bench`` with no suite runs them all
SUITES = {"classify": (make_classify_config, run_classify)}
#: suite name -> renderer of a results folder (tables and plots come from results.json only)
RENDERERS = {"classify": render_classify}

__all__ = ["SUITES", "ClassifyConfig", "run_classify", "make_classify_config"]
