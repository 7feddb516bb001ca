"""Out-of-core fits: array_batches over arrays, memmaps and tensors; fit_stream checkpoints and exact resume."""

import json

import numpy as np
import pytest
import torch

from pilearn.solvers import RidgeStats, array_batches, fit_stream, load_checkpoint

F64 = torch.float64


@pytest.fixture
def data(generator):
    X = torch.randn(1000, 24, generator=generator)
    Y = X[:, :3] @ torch.randn(3, 2, generator=generator) + 0.1 * torch.randn(1000, 2, generator=generator)
    return X.numpy(), Y.numpy()


def plain_fit(X, Y, batch=100, **kw):
    """The oracle: update batch by batch, no checkpoints."""
    stats = RidgeStats(X.shape[1], Y.shape[1], **kw)
    for i in range(0, X.shape[0], batch):
        stats.update(torch.from_numpy(np.array(X[i : i + batch])), torch.from_numpy(np.array(Y[i : i + batch])))
    return stats


def pairs(X, Y, batch=100, start=0):
    return zip(array_batches(X, batch, start=start), array_batches(Y, batch, start=start))


class Interrupted(RuntimeError):
    pass


def failing_after(k, it):
    """Yield the first k batches of ``it``, then raise (a data loader or node that dies)."""
    for i, b in enumerate(it):
        if i == k:
            raise Interrupted(f"lost after {k} batches")
        yield b


# ---------------------------------------------------------------- array_batches
def test_array_batches_covers_the_rows_once_as_views(data):
    X, _ = data
    out = list(array_batches(X, 300))
    assert [b.shape[0] for b in out] == [300, 300, 300, 100]
    assert np.array_equal(torch.cat(out).numpy(), X)
    assert np.shares_memory(out[1].numpy(), X)  # in-memory rows are not copied
    assert [b.shape[0] for b in array_batches(X, 300, start=2)] == [300, 100]
    assert list(array_batches(X, 300, start=4)) == []
    t = torch.from_numpy(X)
    tb = list(array_batches(t, 400, dtype=F64))
    assert tb[0].dtype == F64 and torch.equal(torch.cat(tb), t.double())


@pytest.mark.parametrize("kind", ["np.load", "np.memmap"])
def test_array_batches_over_a_memmap_copies_one_batch_at_a_time(data, tmp_path, kind):
    X, _ = data
    if kind == "np.load":
        np.save(tmp_path / "x.npy", X)
        M = np.load(tmp_path / "x.npy", mmap_mode="r")
    else:
        W = np.memmap(tmp_path / "x.bin", dtype=X.dtype, mode="w+", shape=X.shape)
        W[:] = X
        W.flush()
        M = np.memmap(tmp_path / "x.bin", dtype=X.dtype, mode="r", shape=X.shape)
    out = list(array_batches(M, 256))
    assert all(isinstance(b, torch.Tensor) and b.numpy().flags.writeable for b in out)  # copies, no warnings
    assert not any(np.shares_memory(b.numpy(), M) for b in out)
    assert np.array_equal(torch.cat(out).numpy(), X)
    assert np.array_equal(M[:5], X[:5])  # dropped pages read back from the file


def test_array_batches_checks_its_arguments(data):
    X, _ = data
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        next(array_batches(X, 0))
    with pytest.raises(ValueError, match="start must be an int >= 0, got -1"):
        next(array_batches(X, 10, start=-1))
    with pytest.raises(TypeError, match="array must be a numpy array, np.memmap or torch.Tensor, got list"):
        next(array_batches([1, 2], 1))
    with pytest.raises(ValueError, match="at least one dimension"):
        next(array_batches(np.array(1.0), 1))


# ---------------------------------------------------------------- fit_stream
def test_memmap_fit_equals_in_memory_fit(data, tmp_path):
    X, Y = data
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y)
    Xm, Ym = np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")
    mapped = fit_stream(RidgeStats(24, 2), pairs(Xm, Ym))
    ref = plain_fit(X, Y)
    assert mapped.n_rows == 1000 and torch.equal(mapped.M, ref.M)
    assert torch.equal(mapped.solve(0.5).coef, ref.solve(0.5).coef)


@pytest.mark.parametrize("every,k", [(3, 7), (1, 4), (4, 4), (20, 5)])
@pytest.mark.parametrize("accumulate", [torch.float64, torch.float32])
def test_resume_after_an_interruption_equals_an_uninterrupted_fit(data, tmp_path, every, k, accumulate):
    X, Y = data
    ckpt = tmp_path / "fit.safetensors"
    with pytest.raises(Interrupted):
        fit_stream(RidgeStats(24, 2, accumulate_dtype=accumulate), failing_after(k, pairs(X, Y)), checkpoint=ckpt,
                   every=every)
    saved = k // every * every
    assert ckpt.exists() == (saved > 0)
    if saved:
        assert load_checkpoint(ckpt)[1] == saved
    asked = []

    def rest(start):  # a callable stream: resumes without reading the consumed batches
        asked.append(start)
        return pairs(X, Y, start=start)

    resumed = fit_stream(RidgeStats(24, 2, accumulate_dtype=accumulate), rest, checkpoint=ckpt, every=every)
    ref = plain_fit(X, Y, accumulate_dtype=accumulate)
    assert asked == [saved]
    assert resumed.n_rows == ref.n_rows == 1000 and torch.equal(resumed.M, ref.M)
    assert torch.equal(resumed.solve(0.1).coef, ref.solve(0.1).coef)
    state, done, meta = load_checkpoint(ckpt)  # the finished fit is checkpointed too
    assert done == 10 and torch.equal(state["M"], ref.M) and int(state["n_rows"]) == 1000
    assert not [p for p in tmp_path.iterdir() if p.name != ckpt.name]  # no temporary file left behind
    again = fit_stream(RidgeStats(24, 2, accumulate_dtype=accumulate), rest, checkpoint=ckpt, every=every)
    assert asked[-1] == 10 and torch.equal(again.M, ref.M)  # a finished checkpoint reads nothing more


def test_an_iterable_is_advanced_past_the_consumed_batches(data, tmp_path):
    X, Y = data
    ckpt = tmp_path / "fit.safetensors"
    with pytest.raises(Interrupted):
        fit_stream(RidgeStats(24, 2), failing_after(6, pairs(X, Y)), checkpoint=ckpt, every=2)
    resumed = fit_stream(RidgeStats(24, 2), pairs(X, Y), checkpoint=ckpt, every=2)
    assert torch.equal(resumed.M, plain_fit(X, Y).M)


def test_weighted_batches_and_dual_statistics_resume(data, tmp_path):
    """Three-tuples carry sample weights; the kept rows of the dual form (n ≤ d) are folded in at a checkpoint."""
    X, Y = data
    w = np.linspace(0.5, 2.0, 1000)
    batches = lambda start: ((torch.from_numpy(X[i : i + 10]), torch.from_numpy(Y[i : i + 10]),  # noqa: E731
                              torch.from_numpy(w[i : i + 10])) for i in range(10 * start, 1000, 10))
    ckpt = tmp_path / "w.safetensors"
    with pytest.raises(Interrupted):
        fit_stream(RidgeStats(24, 2), lambda s: failing_after(5 - s, batches(s)), checkpoint=ckpt, every=1)
    resumed = fit_stream(RidgeStats(24, 2), batches, checkpoint=ckpt)
    ref = RidgeStats(24, 2)
    for b in batches(0):
        ref.update(*b)
    assert torch.equal(resumed.M, ref.M)


def test_a_checkpoint_of_another_problem_is_a_clear_error(data, tmp_path):
    X, Y = data
    ckpt = tmp_path / "fit.safetensors"
    fit_stream(RidgeStats(24, 2), pairs(X, Y), checkpoint=ckpt, fingerprint={"data": "x.npy", "batch": 100})
    with pytest.raises(ValueError, match=r"\(n_features, n_targets\) = \(24, 2\), but these statistics have \(12, 2\)"):
        fit_stream(RidgeStats(12, 2), pairs(X[:, :12], Y), checkpoint=ckpt)
    with pytest.raises(ValueError, match="fingerprint="):
        fit_stream(RidgeStats(24, 2), pairs(X, Y), checkpoint=ckpt, fingerprint={"data": "x.npy", "batch": 50})
    with pytest.raises(ValueError, match="accumulate_dtype=float64, this fit has accumulate_dtype=float32"):
        fit_stream(RidgeStats(24, 2, accumulate_dtype=torch.float32), pairs(X, Y), checkpoint=ckpt,
                   fingerprint={"data": "x.npy", "batch": 100})
    with pytest.raises(ValueError, match="fit_intercept"):
        fit_stream(RidgeStats(24, 2, fit_intercept=False), pairs(X, Y), checkpoint=ckpt,
                   fingerprint={"data": "x.npy", "batch": 100})
    meta = load_checkpoint(ckpt)[2]
    assert json.loads(meta["fingerprint"]) == {"data": "x.npy", "batch": 100} and meta["n_features"] == "24"


def test_fit_stream_checks_its_arguments(data, tmp_path):
    X, Y = data
    with pytest.raises(ValueError, match="stats must be empty when checkpoint is given"):
        fit_stream(RidgeStats(24, 2).update(torch.from_numpy(X), torch.from_numpy(Y)), pairs(X, Y),
                   checkpoint=tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="every must be an int >= 1, got 0"):
        fit_stream(RidgeStats(24, 2), pairs(X, Y), every=0)
    with pytest.raises(TypeError, match="stats must be a RidgeStats"):
        fit_stream(None, pairs(X, Y))
    with pytest.raises(TypeError, match=r"batches must yield \(H, Y\) or \(H, Y, sample_weight\) tuples"):
        fit_stream(RidgeStats(24, 2), array_batches(X, 100))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.safetensors' is not a readable safetensors file .*; expected a fit_stream checkpoint"):
        fit_stream(RidgeStats(24, 2), pairs(X, Y), checkpoint=tmp_path / "junk.safetensors")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_batches_to_cuda(data, tmp_path):
    X, Y = data
    np.save(tmp_path / "x.npy", X)
    Xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    out = list(array_batches(Xm, 300, device="cuda"))
    assert all(b.is_cuda for b in out)
    assert np.array_equal(torch.cat(out).cpu().numpy(), X)
    stats = fit_stream(RidgeStats(24, 2, device="cuda"),
                       zip(array_batches(X, 100, device="cuda"), array_batches(Y, 100, device="cuda")))
    torch.testing.assert_close(stats.M.cpu(), plain_fit(X, Y).M, rtol=1e-10, atol=1e-10)
