import pytest
import torch
from torch import nn

from pilearn.reparam import (
    PRANC,
    NOLAConfig,
    NOLALinear,
    apply_nola,
    fit_linear_coefficients,
    fit_nola_layer,
    solve_pranc_head,
)

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def normal_equations(H: torch.Tensor, t: torch.Tensor, lam: float) -> torch.Tensor:
    """The oracle: solve (HᵀH + λI) α = Hᵀt in float64."""
    H, t = H.to(F64), t.to(F64)
    return torch.linalg.solve(H.T @ H + lam * torch.eye(H.shape[1], dtype=F64), H.T @ t)


@pytest.mark.parametrize("lam", [1e-3, 0.5])
@pytest.mark.parametrize("batch_size", [3, None])  # 3: many streamed updates, past the dual-to-primal switch
def test_linear_coefficients_solve_the_normal_equations(lam, batch_size, generator):
    k, d_out, d_in, n = 6, 3, 4, 11
    W = torch.randn(k, d_out, d_in, generator=generator, dtype=F64)
    b = torch.randn(k, d_out, generator=generator, dtype=F64)
    W0 = torch.randn(d_out, d_in, generator=generator, dtype=F64)
    b0 = torch.randn(d_out, generator=generator, dtype=F64)
    X = torch.randn(n, d_in, generator=generator, dtype=F64)
    Y = torch.randn(n, d_out, generator=generator, dtype=F64)
    # H written out row by row: H[(n, o), j] = (xₙWⱼᵀ + bⱼ)_o, t[(n, o)] = Y[n, o] − (xₙW₀ᵀ + b₀)_o
    H = torch.stack([torch.stack([(X[i] @ W[j].T + b[j]) for j in range(k)], dim=1) for i in range(n)])
    H = H.reshape(n * d_out, k)
    t = (Y - X @ W0.T - b0).reshape(-1)
    alpha = fit_linear_coefficients(W, X, Y, lam, bias_basis=b, weight0=W0, bias0=b0, batch_size=batch_size)
    torch.testing.assert_close(alpha, normal_equations(H, t, lam), rtol=1e-9, atol=1e-10)


def test_pranc_head_solves_the_normal_equations(generator):
    head = PRANC(nn.Linear(5, 3), n_basis=12, seed=4).double()
    X = torch.randn(20, 5, generator=generator, dtype=F64)
    Y = nn.functional.one_hot(torch.arange(20) % 3, 3).to(F64)
    # oracle columns through the forward pass: column j is the head's output with α = eⱼ
    columns = []
    for j in range(12):
        with torch.no_grad():
            head.alpha.zero_()
            head.alpha[j] = 1.0
            columns.append(head(X).reshape(-1))
    H = torch.stack(columns, dim=1)
    alpha = solve_pranc_head(head, X, Y, 0.1)
    torch.testing.assert_close(alpha.detach(), normal_equations(H, Y.reshape(-1), 0.1), rtol=1e-9, atol=1e-10)
    assert alpha is head.alpha


def test_nola_layer_solves_the_normal_equations(generator):
    layer = NOLALinear(nn.Linear(6, 4).double(), rank=2, n_basis_a=5, n_basis_b=9, alpha=3.0, seed=1)
    X = torch.randn(15, 6, generator=generator, dtype=F64)
    R = torch.randn(15, 4, generator=generator, dtype=F64)
    # oracle columns through the forward pass: the delta with b = eⱼ
    columns = []
    for j in range(9):
        with torch.no_grad():
            layer.nola_b.zero_()
            layer.nola_b[j] = 1.0
            columns.append((layer(X) - layer.base_layer(X)).reshape(-1))
    H = torch.stack(columns, dim=1)
    b = fit_nola_layer(layer, X, R, 0.01)
    torch.testing.assert_close(b.detach(), normal_equations(H, R.reshape(-1), 0.01), rtol=1e-9, atol=1e-10)
    with torch.no_grad():  # the fit can only lower the residual error of b = 0
        assert float((layer(X) - layer.base_layer(X) - R).square().sum()) < float(R.square().sum())


def test_nola_layer_distills_a_target_inside_a_model(generator):
    torch.manual_seed(0)
    model = apply_nola(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)),
                       NOLAConfig(target_modules=["2"], rank=4, n_basis_a=32, n_basis_b=64))
    layer = model[2]
    X = torch.tanh(model[0](torch.randn(200, 8, generator=generator))).detach()
    with torch.no_grad():  # a target the layer can reach: its own output under some b*
        layer.nola_b.copy_(torch.randn(64, generator=generator))
        target = layer(X)
        layer.nola_b.zero_()
    fit_nola_layer(layer, X, target - layer.base_layer(X).detach(), 1e-8)
    with torch.no_grad():
        torch.testing.assert_close(layer(X), target, rtol=1e-3, atol=1e-3)


def test_shape_errors_name_both_shapes():
    W = torch.zeros(4, 3, 2)
    with pytest.raises(ValueError, match=r"Y must have 3 columns .* got shape \(5, 2\)"):
        fit_linear_coefficients(W, torch.zeros(5, 2), torch.zeros(5, 2), 0.1)
    with pytest.raises(ValueError, match=r"X shape \(5, 2\) and Y shape \(6, 3\)"):
        fit_linear_coefficients(W, torch.zeros(5, 2), torch.zeros(6, 3), 0.1)
    layer = NOLALinear(nn.Linear(6, 4), rank=2, n_basis_a=3, n_basis_b=3, alpha=2.0, seed=0)
    with pytest.raises(ValueError, match=r"X must have 6 columns \(in_features\), got shape \(5, 3\)"):
        fit_nola_layer(layer, torch.zeros(5, 3), torch.zeros(5, 4), 0.1)
    with pytest.raises(ValueError, match=r"X shape \(5, 6\) and R shape \(4, 4\)"):
        fit_nola_layer(layer, torch.zeros(5, 6), torch.zeros(4, 4), 0.1)


def test_bad_values_are_refused():
    W = torch.zeros(4, 3, 2)
    X = torch.zeros(5, 2)
    X[1, 0] = float("nan")
    with pytest.raises(ValueError, match="X contains 1 NaN or infinite values"):
        fit_linear_coefficients(W, X, torch.zeros(5, 3), 0.1)
    with pytest.raises(ValueError, match="lam must be a finite float >= 0, got -1.0"):
        fit_linear_coefficients(W, torch.zeros(5, 2), torch.zeros(5, 3), -1.0)
    with pytest.raises(TypeError, match="needs a PRANC around an nn.Linear"):
        solve_pranc_head(PRANC(nn.Sequential(nn.Linear(2, 3)), n_basis=3), torch.zeros(4, 2), torch.zeros(4, 3), 0.1)
    layer = NOLALinear(nn.Linear(6, 4), rank=2, n_basis_a=3, n_basis_b=3, alpha=2.0, seed=0)
    layer.merge()
    with pytest.raises(ValueError, match="layer is merged"):
        fit_nola_layer(layer, torch.zeros(5, 6), torch.zeros(5, 4), 0.1)
