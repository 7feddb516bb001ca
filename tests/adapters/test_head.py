"""ClosedFormHead: the solve against its normal equations, λ by GCV written out and by hold-out, errors."""

import pytest
import torch

from pilearn.adapters import ClosedFormHead, fit_head

F64 = torch.float64


def _data(generator, n=60, d=8, classes=(3, 7, 9)):
    centers = 2.0 * torch.randn(len(classes), d, generator=generator, dtype=F64)
    idx = torch.arange(n) % len(classes)
    X = centers[idx] + torch.randn(n, d, generator=generator, dtype=F64)
    return X, torch.tensor(classes)[idx]


def _centred(X, Y):
    return X - X.mean(0), Y - Y.mean(0)


def test_solve_equals_the_normal_equations(generator):
    X, y = _data(generator)
    head = fit_head(X, y, lam=0.1)
    Y = torch.nn.functional.one_hot(torch.searchsorted(torch.tensor([3, 7, 9]), y), 3).to(F64)
    Xc, Yc = _centred(X, Y)
    G = Xc.T @ Xc
    W = torch.linalg.solve(G + 0.1 * G.trace() / 8 * torch.eye(8, dtype=F64), Xc.T @ Yc)
    torch.testing.assert_close(head.coef, W, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(head.intercept, Y.mean(0) - X.mean(0) @ W, atol=1e-10, rtol=1e-10)
    assert head.classes.tolist() == [3, 7, 9]
    assert float((head.predict(X) == y).double().mean()) > 0.9


def test_auto_lambda_minimizes_gcv_written_out(generator):
    X, y = _data(generator, n=40, d=12)
    grid = (1e-4, 1e-2, 1.0, 10.0)
    head = ClosedFormHead(lam="auto", lam_grid=grid).fit(X, y)
    Y = torch.nn.functional.one_hot(torch.searchsorted(head.classes, y), 3).to(F64)
    Xc, Yc = _centred(X, Y)
    n, k = Y.shape
    scale = (Xc.T @ Xc).trace() / 12
    gcv = []
    for rel in grid:
        hat = Xc @ torch.linalg.solve(Xc.T @ Xc + rel * scale * torch.eye(12, dtype=F64), Xc.T)
        gcv.append(float((Yc - hat @ Yc).pow(2).sum() / (n * k) / (1 - (hat.trace() + 1) / n) ** 2))
    assert head.lam_ == grid[min(range(len(grid)), key=gcv.__getitem__)]


def test_holdout_choice_and_errors(generator):
    X, y = _data(generator)
    head = fit_head(X[:40], y[:40], valid=(X[40:], y[40:]))
    assert head.lam_ is not None and head(X).shape == (60, 3)
    with pytest.raises(RuntimeError, match="not fitted"):
        ClosedFormHead().predict(X)
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="features contains 1 NaN"):
        fit_head(bad, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_head(X, torch.zeros(60, dtype=torch.long))
    with pytest.raises(TypeError, match="integer class labels"):
        fit_head(X, y.double())
    with pytest.raises(ValueError, match="one label per row"):
        fit_head(X, y[:5])
    with pytest.raises(ValueError, match="classes not seen by the head"):
        head.label_index(torch.tensor([4]))
