"""Deep PIL and Bi-PIL: every solve against its normal equations, the backward targets against hand-worked
cases, the validation split, and bad input."""

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from pilearn import BiPILClassifier, DeepPILClassifier
from pilearn.data import load_digits
from pilearn.estimators._deep import INVERTIBLE_ACTIVATIONS, back_project
from pilearn.features import RandomProjection, derive_seed, random_matrix

F64 = torch.float64


@parametrize_with_checks(
    [
        DeepPILClassifier(hidden_layers=(16, 8), dtype="float64", random_state=0),
        BiPILClassifier(hidden_layers=(16,), fusion_hidden=(0, 16), mu_grid=(0.01,), dtype="float64", random_state=0),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    """scikit-learn's own check_* functions; each raises AssertionError (or the error it expects) on a violation."""
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits("train")
    Xt, yt = load_digits("test")
    return X.reshape(len(X), -1).astype(np.float64), y, Xt.reshape(len(Xt), -1).astype(np.float64), yt


@pytest.fixture(scope="module")
def bipil(digits):
    X, y, _, _ = digits
    return BiPILClassifier(hidden_layers=(96, 64), patience=2, fusion_hidden=(0, 128), dtype="float64",
                           random_state=5).fit(X, y)


def _ridge(H, T, lam):
    """Ridge with an unpenalized intercept, from the normal equations written out."""
    Hm, Tm = H.mean(0), T.mean(0)
    Hc, Tc = H - Hm, T - Tm
    W = np.linalg.solve(Hc.T @ Hc + lam * np.eye(H.shape[1]), Hc.T @ Tc)
    return W, Tm - Hm @ W


def _A0(model, X):
    return (X - model.front_mean_.numpy()) * model.front_scale_


def _onehot(model, y):
    return (y[:, None] == model.classes_[None, :]).astype(float)


# ---------------------------------------------------------------- back_project by hand
def test_back_project_worked_by_hand_more_inputs_than_outputs():
    # W maps 3 inputs to 2 outputs: z = a W with W = [[1, 0], [0, 2], [0, 0]].
    # μ = 0: the minimum-norm a with a W = [1, 4] is [1, 2, 0].
    W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=F64)
    T = torch.tensor([[1.0, 4.0]], dtype=F64)
    np.testing.assert_allclose(back_project(T, W, None, 0.0).numpy(), [[1.0, 2.0, 0.0]], atol=1e-15)
    # μ = 1: a = T (WᵀW + I)⁻¹ Wᵀ = [1, 4] · diag(1/2, 1/5) · Wᵀ = [0.5, 0.8] · Wᵀ = [0.5, 1.6, 0].
    np.testing.assert_allclose(back_project(T, W, None, 1.0).numpy(), [[0.5, 1.6, 0.0]], atol=1e-15)
    # a bias is removed first: T − b = [1, 4] for b = [2, −1] and T = [3, 3]
    b = torch.tensor([2.0, -1.0], dtype=F64)
    np.testing.assert_allclose(back_project(torch.tensor([[3.0, 3.0]], dtype=F64), W, b, 1.0).numpy(),
                               [[0.5, 1.6, 0.0]], atol=1e-15)


def test_back_project_worked_by_hand_fewer_inputs_than_outputs():
    # one input feeding two outputs with weight 1 each: z = [a, a]. For T = [2, 2], μ = 0 gives a = 2;
    # μ = 2 gives a = (T Wᵀ) / (W Wᵀ + μ) = 4 / (2 + 2) = 1.
    W = torch.tensor([[1.0, 1.0]], dtype=F64)
    T = torch.tensor([[2.0, 2.0]], dtype=F64)
    np.testing.assert_allclose(back_project(T, W, None, 0.0).numpy(), [[2.0]], atol=1e-15)
    np.testing.assert_allclose(back_project(T, W, None, 2.0).numpy(), [[1.0]], atol=1e-15)


def test_back_project_is_the_ridge_minimizer_both_ways():
    g = torch.Generator().manual_seed(0)
    for d_in, d_out in ((7, 4), (4, 7)):
        W = torch.randn(d_in, d_out, generator=g, dtype=F64)
        T = torch.randn(5, d_out, generator=g, dtype=F64)
        A = back_project(T, W, None, 0.3)
        # gradient of ‖T − A W‖² + μ‖A‖² vanishes at the minimizer
        grad = -(T - A @ W) @ W.T + 0.3 * A
        assert float(grad.abs().max()) < 1e-12


def test_inverse_activations_invert():
    x = torch.linspace(-2, 2, 41, dtype=F64)
    from pilearn.features import get_activation

    for name, finv in INVERTIBLE_ACTIVATIONS.items():
        np.testing.assert_allclose(finv(get_activation(name)(x)).numpy(), x.numpy(), atol=1e-9, err_msg=name)


# ---------------------------------------------------------------- forward layer = PILAE normal equations
def test_first_layer_is_the_tied_autoencoder_solution(digits, bipil):
    X, _, _, _ = digits
    m = bipil
    A0 = _A0(m, X[m.train_index_])
    d, p = A0.shape[1], m.layers_[0].W.shape[1]
    E = random_matrix((d, p), kind="orthogonal", seed=derive_seed(m.seed_, "encoder", 0, p), dtype=F64).numpy()
    Z = np.tanh(A0 @ (E / np.sqrt(d)))
    lam = m.selection_["forward"][0]["lam_ae"]
    D, _ = _ridge(Z, A0, lam)  # decoder (p, d): A0 ≈ Z D
    W = D.T  # tied encoder
    P = A0 @ W
    m_, sd = P.mean(0), P.std(0)
    np.testing.assert_allclose(m.layers_[0].W.numpy(), W / sd, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(m.layers_[0].b.numpy(), -m_ / sd, rtol=1e-6, atol=1e-9)


def test_forward_head_is_ridge_on_top_layer(digits, bipil):
    X, y, _, _ = digits
    m = bipil
    A = _A0(m, X[m.train_index_])
    for layer in m.layers_:
        A = np.tanh(A @ layer.W.numpy() + layer.b.numpy())
    W, b = _ridge(A, _onehot(m, y[m.train_index_]), m.head_.lam)
    np.testing.assert_allclose(m.head_.coef.numpy(), W, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(m.head_.intercept.numpy(), b, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- backward pass
def test_target_codes_follow_the_formula(bipil):
    m = bipil
    mu = m.mu_
    codes = m.target_codes(mu)
    beta, beta0 = m.head_.coef.numpy(), m.head_.intercept.numpy()
    c = len(m.classes_)
    mu_b = mu * (beta**2).sum() / min(beta.shape)
    A_t = (np.eye(c) - beta0) @ np.linalg.solve(beta.T @ beta + mu_b * np.eye(c), beta.T)
    Z = np.arctanh(np.clip(A_t, -1 + 1e-3, 1 - 1e-3))
    np.testing.assert_allclose(codes[-1].numpy(), Z, rtol=1e-8, atol=1e-10)
    for l in range(len(m.layers_) - 1, 0, -1):
        W, b = m.layers_[l].W.numpy(), m.layers_[l].b.numpy()
        mu_w = mu * (W**2).sum() / min(W.shape)
        A_t = (Z - b) @ np.linalg.solve(W.T @ W + mu_w * np.eye(W.shape[1]), W.T)
        Z = np.arctanh(np.clip(A_t, -1 + 1e-3, 1 - 1e-3))
        np.testing.assert_allclose(codes[l - 1].numpy(), Z, rtol=1e-7, atol=1e-9)


def test_backward_layers_solve_their_normal_equations(digits, bipil):
    """Each twin layer is the ridge regression, from its real input, onto the propagated targets Y K_l."""
    X, y, _, _ = digits
    m = bipil
    codes = m.target_codes(m.mu_)
    Y = _onehot(m, y[m.train_index_])
    B = _A0(m, X[m.train_index_])
    for l, layer in enumerate(m.backward_layers_):
        lam = m.selection_["backward"]["layers"][l]["lam"]
        W, b = _ridge(B, Y @ codes[l].numpy(), lam)
        np.testing.assert_allclose(layer.W.numpy(), W, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(layer.b.numpy(), b, rtol=1e-6, atol=1e-8)
        B = np.tanh(B @ W + b)


def test_fusion_head_reads_the_chosen_pair(digits, bipil):
    """The fused scores, recomputed by hand from the chosen pair: concat, standardize, random hidden layer, ridge."""
    _, _, Xt, _ = digits
    m = bipil
    l1, l2 = m.fusion_pair_
    sel = m.selection_["fusion"]
    assert sel["pair_candidates"][f"{l1},{l2}"] == max(sel["pair_candidates"].values())
    assert m.fusion_width_ == max(sel["hidden_candidates"], key=sel["hidden_candidates"].get)
    A = B = _A0(m, Xt)
    fw, bw = [], []
    for layer in m.layers_:
        A = np.tanh(A @ layer.W.numpy() + layer.b.numpy())
        fw.append(A)
    for layer in m.backward_layers_:
        B = np.tanh(B @ layer.W.numpy() + layer.b.numpy())
        bw.append(B)
    F = (np.hstack([fw[l1 - 1], bw[l2 - 1]]) - m.fusion_mean_.numpy()) * m.fusion_scale_
    if m.fusion_width_:
        d = F.shape[1]
        P = random_matrix((d, m.fusion_width_), kind="gaussian", seed=derive_seed(m.seed_, "fusion", m.fusion_width_),
                          dtype=F64).numpy() / np.sqrt(d)
        F = np.tanh(F @ P)
    expected = F @ m.fusion_head_.coef.numpy() + m.fusion_head_.intercept.numpy()
    parts = m.decision_parts(Xt)
    np.testing.assert_allclose(parts["fused"], expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(m.predict(Xt), m.classes_[parts[m.output_].argmax(1)])
    assert m.selection_["output"]["val_acc"][m.output_] == max(m.selection_["output"]["val_acc"].values())


def test_bipil_learns_digits(digits, bipil):
    _, _, Xt, yt = digits
    assert bipil.score(Xt, yt) > 0.93
    parts = bipil.decision_parts(Xt)
    # the twin alone is a real classifier, not noise
    assert (parts["backward"].argmax(1) == np.searchsorted(bipil.classes_, yt)).mean() > 0.85


# ---------------------------------------------------------------- selection on validation only
def test_validation_rows_come_from_fit_data_and_are_disjoint(digits, bipil):
    X, _, _, _ = digits
    tr, va = bipil.train_index_, bipil.validation_index_
    assert np.intersect1d(tr, va).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(X)))
    assert abs(len(va) - 0.1 * len(X)) <= 1


def test_fit_reads_no_data_but_its_arguments(digits):
    """Relabelling a held-out test set cannot move the fit: the model depends on (X, y) of fit alone."""
    X, y, Xt, yt = digits
    a = DeepPILClassifier(hidden_layers=(64,), random_state=1).fit(X, y)
    b = DeepPILClassifier(hidden_layers=(64,), random_state=1).fit(X, y)
    np.testing.assert_array_equal(a.decision_function(Xt), b.decision_function(Xt))
    # the validation score that drove the selection is the model's accuracy on the validation rows of X
    va = a.validation_index_
    assert a.selection_["forward_val_acc"] == pytest.approx(a.score(X[va], y[va]), abs=1e-12)


def test_bipil_selection_scores_are_validation_accuracies(digits, bipil):
    X, y, _, _ = digits
    va = bipil.validation_index_
    parts = bipil.decision_parts(X[va])
    truth = np.searchsorted(bipil.classes_, y[va])
    for part, acc in bipil.selection_["output"]["val_acc"].items():
        assert acc == pytest.approx((parts[part].argmax(1) == truth).mean(), abs=1e-12), part


def test_depth_selection_keeps_best_validation_layer(digits):
    X, y, _, _ = digits
    m = DeepPILClassifier(hidden_layers=(96, 64, 32), patience=3, random_state=2).fit(X, y)
    accs = [r["val_acc"] for r in m.selection_["forward"]]
    assert len(accs) == 3
    assert m.depth_ == int(np.argmax(accs)) + 1 and len(m.layers_) == m.depth_


def test_width_candidates_are_selected(digits):
    X, y, _, _ = digits
    m = DeepPILClassifier(hidden_layers=((32, 128),), random_state=0).fit(X, y)
    cands = m.selection_["forward"][0]["candidates"]
    assert set(cands) == {32, 128}
    assert m.layers_[0].W.shape[1] == max(cands, key=cands.get)


def test_streaming_without_cache_equals_cached(digits):
    X, y, Xt, _ = digits
    a = BiPILClassifier(hidden_layers=(48,), mu_grid=(0.01,), dtype="float64", random_state=4).fit(X, y)
    b = BiPILClassifier(hidden_layers=(48,), mu_grid=(0.01,), dtype="float64", cache_input=False, batch_size=97,
                        random_state=4).fit(X, y)
    np.testing.assert_allclose(a.decision_function(Xt), b.decision_function(Xt), rtol=1e-7, atol=1e-9)


def test_conv_front_end(digits):
    X, y, Xt, yt = digits
    m = DeepPILClassifier(hidden_layers=(64,), features="conv", random_state=0).fit(X[:600], y[:600])
    assert m.front_ is not None and m.front_.in_features == 64
    assert m.score(Xt, yt) > 0.8


def test_feature_map_front_end(digits):
    X, y, _, _ = digits
    fmap = RandomProjection(64, 40, activation="relu", seed=3)
    m = DeepPILClassifier(hidden_layers=(16,), features=fmap, random_state=0).fit(X, y)
    assert m.front_.out_features == 40 and m.layers_[0].W.shape == (40, 16)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"hidden_layers": ()}, "hidden_layers"),
        ({"hidden_layers": (10, 0)}, r"hidden_layers\[1\]"),
        ({"hidden_layers": ((),)}, r"hidden_layers\[0\]"),
        ({"activation": "relu"}, "activation.*f⁻¹"),
        ({"features": "fourier"}, "features"),
        ({"kind": "uniform"}, "kind"),
        ({"lam_grid": (1.0, -1.0)}, "lam_grid"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"patience": 0}, "patience"),
        ({"random_state": -1}, "random_state"),
    ],
)
def test_bad_parameters_are_named(digits, params, match):
    X, y, _, _ = digits
    with pytest.raises(ValueError, match=match):
        DeepPILClassifier(**params).fit(X, y)


@pytest.mark.parametrize(("params", "match"), [({"mu_grid": ()}, "mu_grid"), ({"fusion_hidden": -4}, "fusion_hidden"),
                                               ({"fusion_activation": "swish"}, "activation")])
def test_bad_bipil_parameters_are_named(digits, params, match):
    X, y, _, _ = digits
    with pytest.raises(ValueError, match=match):
        BiPILClassifier(hidden_layers=(8,), **params).fit(X, y)


def test_bad_data(digits):
    X, y, Xt, _ = digits
    Xn = X.copy()
    Xn[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DeepPILClassifier(hidden_layers=(8,)).fit(Xn, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        DeepPILClassifier(hidden_layers=(8,)).fit(X, np.zeros(len(X), dtype=int))
    with pytest.raises(ValueError, match="inconsistent|samples"):
        DeepPILClassifier(hidden_layers=(8,)).fit(X, y[:-1])
    with pytest.raises(ValueError, match="too few"):
        DeepPILClassifier(hidden_layers=(8,)).fit(X[:5], np.array([0, 1, 2, 0, 1]))
    m = DeepPILClassifier(hidden_layers=(8,), random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        m.predict(Xt[:, :10])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        BiPILClassifier().predict(Xt)
    with pytest.raises(ValueError, match="conv.*square"):
        DeepPILClassifier(hidden_layers=(8,), features="conv").fit(X[:, :60], y)


def test_linear_fusion_head_is_ridge_on_the_fused_pair(digits):
    X, y, Xt, _ = digits
    m = BiPILClassifier(hidden_layers=(48, 32), patience=2, fusion_hidden=0, output="fused", mu_grid=(0.01,),
                        dtype="float64", random_state=7).fit(X, y)
    assert m.output_ == "fused" and m.fusion_width_ == 0
    l1, l2 = m.fusion_pair_

    def feats(Z):
        A = B = _A0(m, Z)
        fw, bw = [], []
        for layer in m.layers_:
            A = np.tanh(A @ layer.W.numpy() + layer.b.numpy())
            fw.append(A)
        for layer in m.backward_layers_:
            B = np.tanh(B @ layer.W.numpy() + layer.b.numpy())
            bw.append(B)
        return np.hstack([fw[l1 - 1], bw[l2 - 1]])

    lam_raw = m.fusion_head_.lam / m.fusion_scale_**2  # the head's λ is in standardized units
    W, b = _ridge(feats(X[m.train_index_]), _onehot(m, y[m.train_index_]), lam_raw)
    np.testing.assert_allclose(m.decision_function(Xt), feats(Xt) @ W + b, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- explicit validation rows; torch.distributed
def test_explicit_validation_rows(digits):
    X, y, Xt, yt = digits
    m = BiPILClassifier(hidden_layers=(32,), mu_grid=(0.01,), random_state=0).fit(X[:1000], y[:1000], X[1000:],
                                                                               y[1000:])
    assert m.validation_index_ is None and len(m.train_index_) == 1000
    parts = m.decision_parts(X[1000:])
    truth = np.searchsorted(m.classes_, y[1000:])
    assert m.selection_["forward_val_acc"] == pytest.approx((parts["forward"].argmax(1) == truth).mean(), abs=1e-12)
    with pytest.raises(ValueError, match="together"):
        BiPILClassifier(hidden_layers=(8,)).fit(X, y, X_val=Xt)
    with pytest.raises(ValueError, match="y_val"):
        BiPILClassifier(hidden_layers=(8,)).fit(X, y, Xt, yt[:-1])
    with pytest.raises(ValueError, match="absent from y"):
        BiPILClassifier(hidden_layers=(8,)).fit(X[y < 9], y[y < 9], Xt, yt)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank, world, port, X, y, Xv, yv, Xt, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        sl = slice(rank, None, world)  # each rank holds its own shard of the training and validation rows
        m = BiPILClassifier(hidden_layers=(40, 24), patience=2, fusion_hidden=(0, 32), mu_grid=(0.01, 0.1),
                            dtype="float64", distributed=True, random_state=3).fit(X[sl], y[sl], Xv[sl], yv[sl])
        out[rank] = (m.decision_parts(Xt), m.selection_["output"], m.fusion_pair_, m.mu_)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_fit_equals_single_process(digits):
    import torch.multiprocessing as mp

    X, y, Xt, _ = digits
    Xtr, ytr, Xv, yv = X[:1200], y[:1200], X[1200:], y[1200:]
    out = mp.Manager().dict()
    mp.spawn(_dist_worker, args=(2, _free_port(), Xtr, ytr, Xv, yv, Xt, out), nprocs=2, join=True)
    ref = BiPILClassifier(hidden_layers=(40, 24), patience=2, fusion_hidden=(0, 32), mu_grid=(0.01, 0.1),
                          dtype="float64", random_state=3).fit(Xtr, ytr, Xv, yv)
    parts = ref.decision_parts(Xt)
    for rank in (0, 1):
        got, sel, pair, mu = out[rank]
        assert sel == ref.selection_["output"] and pair == ref.fusion_pair_ and mu == ref.mu_
        for k in parts:
            np.testing.assert_allclose(got[k], parts[k], rtol=1e-10, atol=1e-10, err_msg=k)


def test_distributed_without_process_group_is_a_clear_error(digits):
    X, y, _, _ = digits
    with pytest.raises(RuntimeError, match="torch.distributed"):
        DeepPILClassifier(hidden_layers=(8,), distributed=True, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="distributed must be a bool"):
        DeepPILClassifier(hidden_layers=(8,), distributed="yes").fit(X, y)
