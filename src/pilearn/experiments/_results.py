"""Results files, machine records, timers and peak-memory probes shared by every benchmark suite."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import threading
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .._memory import release_freed_heap

__all__ = ["environment", "PeakMemory", "Stopwatch", "write_results", "markdown_table", "default_out_dir"]


def _git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu") -> dict[str, Any]:
    """What a reader needs to reproduce a number: revision, machine, device, library versions."""
    import numpy
    import scipy
    import sklearn

    from .. import __version__

    env: dict[str, Any] = {
        "pilearn": __version__,
        "git_revision": _git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every ``interval`` seconds.

    Large tensors are mmap'ed by the allocator and returned to the OS when freed, and the heap's freed pages are
    returned at entry (``malloc_trim``), so the increase of RSS over the entry level is the memory the measured
    block needed (memory the block frees and allocates again inside is counted once). On CUDA, the peak of
    ``torch.cuda.max_memory_allocated`` is recorded as well.
    """

    def __init__(self, interval: float = 0.002, device: str = "cpu") -> None:
        self.interval = interval
        self.device = device
        self.peak_bytes = 0
        self.cuda_peak_bytes: int | None = None

    def __enter__(self) -> "PeakMemory":
        release_freed_heap()
        self._base = _rss_bytes()
        self._max = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self._cuda_base = torch.cuda.memory_allocated()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, _rss_bytes())
        self.peak_bytes = self._max - self._base
        if self.device.startswith("cuda"):
            self.cuda_peak_bytes = torch.cuda.max_memory_allocated() - self._cuda_base

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


class Stopwatch:
    """Wall-clock seconds of a block (CUDA work is synchronized at both ends)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.seconds = float("nan")

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def __enter__(self) -> "Stopwatch":
        self._sync()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._t


def default_out_dir(suite: str) -> Path:
    return Path("runs") / f"{suite}-{time.strftime('%Y%m%d-%H%M%S')}"


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_results(out_dir: Path, results: dict[str, Any]) -> Path:
    """Write ``results.json`` into ``out_dir`` (created) and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    return path


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v != v:
            return "—"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``columns`` given as (key, header) pairs."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)
