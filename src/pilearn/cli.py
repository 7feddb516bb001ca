"""The ``pilearn`` command: ``pilearn bench [SUITE] --scale smoke|small|full --out DIR`` and ``pilearn ablate SUITE``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence


def _parser() -> argparse.ArgumentParser:
    from .experiments import SUITES

    p = argparse.ArgumentParser(prog="pilearn", description="Pseudoinverse learning: closed-form models and benchmarks.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="run a benchmark suite (all suites when none is named)")
    b.add_argument("suite", nargs="?", choices=sorted(SUITES), help="suite to run (default: every suite)")
    b.add_argument("--scale", choices=("smoke", "small", "full"), default="small",
                   help="smoke: seconds (CI-sized); small: a few CPU minutes (default); full: a GPU")
    b.add_argument("--out", type=Path, default=None, help="output folder (default runs/<suite>-<time>/)")
    b.add_argument("--device", default=None,
                   help="torch device, e.g. cpu or cuda (default: the scale's, cpu except where a full scale says cuda)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--datasets", nargs="+", default=None, help="override the suite's datasets")
    b.add_argument("--only", nargs="+", default=None, metavar="GROUP",
                   help="run only these row groups of the suite (classify: dense conv bipil-seed deep mlp kernel "
                        "hpelm floor; lm: ngram pil baseline attn; reparam: pranc mcnc closed-form supsup nola; "
                        "lora: lm cls; solver: floor fit flat precision)")
    b.add_argument("--set", nargs="+", default=None, metavar="KEY=VALUE", dest="settings",
                   help="override fields of the suite's config, e.g. --set draws=4 width=2048 (values are Python "
                        "literals; a bare word is a string)")
    a = sub.add_parser("ablate", help="run the ablation studies of a suite")
    a.add_argument("suite", choices=("flow", "diffusion", "lm"))
    a.add_argument("--study", nargs="+", default=["all"], help="flow: width fusion lambda time buckets conditioning "
                   "layers steps; diffusion: sharing draws features bipil lambda target schedule steps; lm: bipil lambda "
                   "expansion design; or all (default)")
    a.add_argument("--scale", choices=("smoke", "small", "full"), default="small")
    a.add_argument("--out", type=Path, default=None, help="output folder (default runs/ablate-<suite>-<time>/)")
    a.add_argument("--device", default="cpu")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--dataset", default=None, help="override the data set (mnist, fashion-mnist, digits)")
    e = sub.add_parser("eval", help="evaluate a saved model on a task")
    e.add_argument("task", choices=("lambada",))
    e.add_argument("--model", type=Path, required=True, help="a PIL-LM file written by bench lm or save_lm")
    e.add_argument("--data", type=Path, required=True, help="LAMBADA jsonl file (one {\"text\": ...} per line)")
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    e.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    r = sub.add_parser("report", help="rebuild results.md and the plots of a results folder from its results.json")
    r.add_argument("folder", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pilearn`` console script."""
    from .experiments import SUITES

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args.folder)
    command = "pilearn " + " ".join(shlex.quote(a) for a in argv)
    if args.command == "ablate":
        return _ablate(args, command)
    if args.command == "eval":
        return _eval(args, command)
    if args.device is not None and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"pilearn: --device {args.device} asked for, but torch sees no CUDA device", file=sys.stderr)
            return 2
    suites = [args.suite] if args.suite else sorted(SUITES)
    for name in suites:
        make_config, run = SUITES[name]
        overrides = {"seed": args.seed}
        if args.device is not None:
            overrides["device"] = args.device
        if args.out is not None:
            overrides["out"] = args.out if len(suites) == 1 else args.out / name
        if args.datasets:
            overrides["datasets"] = tuple(args.datasets)
        if args.only:
            overrides["groups"] = tuple(args.only)
        try:
            overrides.update(_settings(args.settings or []))
            cfg = make_config(args.scale, **overrides)
        except (TypeError, ValueError) as err:
            print(f"pilearn bench {name}: {err}", file=sys.stderr)
            return 2
        run(cfg, command=command)
    return 0


def _settings(items: Sequence[str]) -> dict:
    """``["draws=4", "datasets=('mnist',)"]`` -> ``{"draws": 4, "datasets": ("mnist",)}``."""
    import ast

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--set takes KEY=VALUE pairs, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare word: a string
        out[key] = tuple(value) if isinstance(value, list) else value
        if key in ("datasets", "groups") and isinstance(out[key], str):
            out[key] = (out[key],)  # one name, not its letters
    return out


def _ablate(args: argparse.Namespace, command: str) -> int:
    if args.suite == "flow":
        from .experiments.flow import STUDIES, make_ablation_config, run_ablate_flow as run_ablation
    elif args.suite == "lm":
        from .experiments.lm import STUDIES, make_ablation_config, run_ablate_lm as run_ablation
    else:
        from .experiments.diffusion import STUDIES, make_ablation_config, run_ablate_diffusion as run_ablation

    studies = STUDIES if "all" in args.study else tuple(args.study)
    overrides = {"device": args.device, "seed": args.seed, "studies": studies, "out": args.out}
    if args.dataset:
        overrides["dataset"] = args.dataset
    try:
        cfg = make_ablation_config(args.scale, **overrides)
    except ValueError as err:
        print(f"pilearn ablate: {err}", file=sys.stderr)
        return 2
    run_ablation(cfg, command=command)
    return 0


def _eval(args: argparse.Namespace, command: str) -> int:
    import json

    from .data import DatasetNotFoundError
    from .experiments.lm import eval_lambada

    try:
        res = eval_lambada(args.model, args.data, limit=args.limit)
    except (ValueError, FileNotFoundError, DatasetNotFoundError) as err:
        print(f"pilearn eval lambada: {err}", file=sys.stderr)
        return 2
    res["command"] = command
    text = json.dumps(res, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


def _report(folder: Path) -> int:
    import json

    from .experiments import RENDERERS

    path = folder / "results.json"
    if not path.is_file():
        print(f"pilearn: no results.json in {folder}", file=sys.stderr)
        return 2
    suite = json.loads(path.read_text()).get("suite")
    if suite not in RENDERERS:
        print(f"pilearn: {path} is from suite {suite!r}, which has no renderer", file=sys.stderr)
        return 2
    RENDERERS[suite](folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
