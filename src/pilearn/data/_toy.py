"""Two-dimensional toy distributions for flow matching: the usual FFJORD / torchcfm benchmark shapes.

Every sampler draws from ``numpy.random.Generator(PCG64(seed))`` and is scaled so that each coordinate has a
standard deviation between about 1 and 1.8 (and a mean within 0.4 of 0), comparable to the N(0, I) source of the
flow path. Two-part shapes (moons, circles, spirals) draw ``n // 2`` points from the first part and the rest from
the second, then shuffle the rows, so any prefix of the output is itself a sample.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np

__all__ = ["TOY_2D_NAMES", "make_toy_2d"]

TOY_2D_NAMES: tuple[str, ...] = ("8gaussians", "moons", "circles", "checkerboard", "spirals", "swissroll")

# Shape parameters, named so that tests (and docs) can refer to them.
EIGHT_GAUSSIANS_RADIUS = 2.0
EIGHT_GAUSSIANS_STD = 0.2
MOONS_SCALE = 2.0
MOONS_NOISE = 0.1  # before scaling, so 0.2 after
CIRCLES_RADII = (1.0, 2.0)
CIRCLES_NOISE = 0.1
CHECKERBOARD_HALF_WIDTH = 2.0
SPIRALS_TURNS = 1.5  # the arm angle runs over [0, 2π·turns]
SPIRALS_SCALE = 1.0 / 3.0
SPIRALS_NOISE = 0.1
SWISSROLL_SCALE = 0.2
SWISSROLL_NOISE = 0.1  # after scaling


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    angles = np.arange(8) * (np.pi / 4)
    centres = EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (8, 2)
    k = rng.integers(0, 8, size=n)
    return centres[k] + EIGHT_GAUSSIANS_STD * rng.standard_normal((n, 2))


def moons_curve(theta: np.ndarray, part: int) -> np.ndarray:
    """Noise-free points of moon ``part`` (0 upper, 1 lower) at angles ``theta`` in [0, π]: ``(len(theta), 2)``."""
    if part == 0:
        raw = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    else:
        raw = np.stack([1 - np.cos(theta), 0.5 - np.sin(theta)], axis=1)
    return MOONS_SCALE * (raw - np.array([0.5, 0.25]))


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    sizes = (n // 2, n - n // 2)
    parts = [moons_curve(rng.uniform(0, np.pi, size), part) for part, size in enumerate(sizes)]
    return np.concatenate(parts) + MOONS_SCALE * MOONS_NOISE * rng.standard_normal((n, 2))


def _circles(rng: np.random.Generator, n: int) -> np.ndarray:
    radii = np.repeat(CIRCLES_RADII, (n // 2, n - n // 2))
    angle = rng.uniform(0, 2 * np.pi, n)
    points = radii[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return points + CIRCLES_NOISE * rng.standard_normal((n, 2))


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    # Uniform on the unit squares [a, a+1) × [b, b+1) of [-w, w)² with floor(a) + floor(b) even.
    w = int(CHECKERBOARD_HALF_WIDTH)
    cells = [(a, b) for a in range(-w, w) for b in range(-w, w) if (a + b) % 2 == 0]
    corner = np.array(cells, dtype=np.float64)[rng.integers(0, len(cells), size=n)]
    return corner + rng.uniform(0, 1, (n, 2))


def spirals_curve(angle: np.ndarray, part: int) -> np.ndarray:
    """Noise-free points of spiral arm ``part`` (0 or 1, the second is the first turned by π): ``(m, 2)``."""
    sign = 1.0 if part == 0 else -1.0
    return sign * SPIRALS_SCALE * angle[:, None] * np.stack([-np.cos(angle), np.sin(angle)], axis=1)


def _spirals(rng: np.random.Generator, n: int) -> np.ndarray:
    sizes = (n // 2, n - n // 2)
    top = 2 * np.pi * SPIRALS_TURNS
    # sqrt makes the density uniform along the arm's length, which grows like the angle.
    parts = [spirals_curve(top * np.sqrt(rng.uniform(0, 1, size)), part) for part, size in enumerate(sizes)]
    return np.concatenate(parts) + SPIRALS_NOISE * rng.standard_normal((n, 2))


def swissroll_curve(s: np.ndarray) -> np.ndarray:
    """Noise-free swiss-roll points at parameters ``s`` in [1.5π, 4.5π]: ``SWISSROLL_SCALE·s·(cos s, sin s)``."""
    return SWISSROLL_SCALE * s[:, None] * np.stack([np.cos(s), np.sin(s)], axis=1)


def _swissroll(rng: np.random.Generator, n: int) -> np.ndarray:
    s = 1.5 * np.pi * (1 + 2 * rng.uniform(0, 1, n))  # scikit-learn's make_swiss_roll parameter
    return swissroll_curve(s) + SWISSROLL_NOISE * rng.standard_normal((n, 2))


_SAMPLERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "8gaussians": _eight_gaussians,
    "moons": _moons,
    "circles": _circles,
    "checkerboard": _checkerboard,
    "spirals": _spirals,
    "swissroll": _swissroll,
}


def make_toy_2d(name: str, n: int, *, seed: int = 0) -> np.ndarray:
    """Draw ``n`` points of a 2-D toy distribution: float32 array of shape ``(n, 2)``.

    The shapes (constants in :mod:`pilearn.data._toy`):

    - ``"8gaussians"``: a mixture of 8 equally likely N(c_k, 0.2²I), centres c_k = 2·(cos kπ/4, sin kπ/4).
    - ``"moons"``: scikit-learn's two interleaving half circles (upper (cos θ, sin θ), lower (1 − cos θ,
      0.5 − sin θ), θ ~ U[0, π]) plus N(0, 0.1²I), centred by −(0.5, 0.25) and scaled by 2.
    - ``"circles"``: two concentric circles of radii 1 and 2, uniform angle, plus N(0, 0.1²I).
    - ``"checkerboard"``: uniform on the 8 unit squares [a, a+1) × [b, b+1) of [−2, 2)² with a + b even.
    - ``"spirals"``: two arms φ/3·(−cos φ, sin φ) and its negation, φ = 3π·√u, u ~ U[0, 1] (1.5 turns, uniform
      along the arm), plus N(0, 0.1²I).
    - ``"swissroll"``: s/5·(cos s, sin s), s ~ U[1.5π, 4.5π] (scikit-learn's ``make_swiss_roll`` in its x–z
      plane, divided by 5 as in FFJORD), plus N(0, 0.1²I).

    Args:
        name: one of :data:`TOY_2D_NAMES`.
        n: number of points, an int >= 1.
        seed: seed of the ``numpy.random.Generator``, an int >= 0; the same seed gives the same array.
    """
    if not isinstance(name, str) or name not in _SAMPLERS:
        raise ValueError(f"name must be one of {TOY_2D_NAMES}, got {name!r}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    points = _SAMPLERS[name](rng, int(n))
    return np.ascontiguousarray(points[rng.permutation(int(n))], dtype=np.float32)
