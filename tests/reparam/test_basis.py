import pytest
import torch

from pilearn.reparam import RandomBasis, basis_rows, derive_seed

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
def test_rows_regenerate_bit_identically(distribution):
    a = basis_rows(7, 0, 9, 33, distribution=distribution)
    b = basis_rows(7, 0, 9, 33, distribution=distribution)
    assert torch.equal(a, b)
    assert not torch.equal(a, basis_rows(8, 0, 9, 33, distribution=distribution))


@pytest.mark.parametrize("distribution", ["uniform", "normal"])
def test_chunked_generation_equals_full(distribution):
    full = basis_rows(3, 0, 37, 50, distribution=distribution)
    cuts = [0, 5, 18, 37]
    parts = [basis_rows(3, lo, hi, 50, distribution=distribution) for lo, hi in zip(cuts[:-1], cuts[1:])]
    assert torch.equal(torch.cat(parts), full)
    assert torch.equal(basis_rows(3, 10, 11, 50, distribution=distribution)[0], full[10])


def test_rows_match_their_definition():
    # oracle: row j is its own generator's draw, 2u - 1 for uniform, float64 N(0, 1) rounded for normal
    g = torch.Generator().manual_seed(derive_seed(5, 3))
    assert torch.equal(basis_rows(5, 3, 4, 20)[0], torch.rand(20, generator=g) * 2 - 1)
    g = torch.Generator().manual_seed(derive_seed(5, 3))
    expected = torch.randn(20, generator=g, dtype=torch.float64).float()
    assert torch.equal(basis_rows(5, 3, 4, 20, distribution="normal")[0], expected)
    assert torch.equal(basis_rows(5, 0, 4, 20, dtype=torch.float64), basis_rows(5, 0, 4, 20).double())


def test_thread_count_does_not_change_bits():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        threaded = basis_rows(11, 0, 8, 10_000)  # 80k entries: drawn in threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(threaded, torch.cat([basis_rows(11, j, j + 1, 10_000) for j in range(8)]))


def test_distribution_moments():
    u = basis_rows(0, 0, 20, 1000)
    assert float(u.min()) >= -1.0 and float(u.max()) < 1.0
    assert abs(float(u.mean())) < 0.02 and abs(float(u.var()) - 1 / 3) < 0.01
    z = basis_rows(0, 0, 20, 1000, distribution="normal")
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1.0) < 0.03


@pytest.mark.parametrize("cache", [True, False])
def test_combine_and_project_match_the_explicit_matrix(cache):
    basis = RandomBasis(2, 23, 40, chunk_size=6, cache=cache)
    B = basis_rows(2, 0, 23, 40, dtype=torch.float64)
    alpha = torch.linspace(-1, 1, 23, dtype=torch.float64)
    g = torch.linspace(2, -1, 40, dtype=torch.float64)
    torch.testing.assert_close(basis.combine(alpha), B.T @ alpha, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(basis.project(g), B @ g, rtol=1e-12, atol=1e-12)


def test_cache_and_no_cache_and_chunk_sizes_agree(generator):
    alpha = torch.randn(30, generator=generator)
    g = torch.randn(70, generator=generator)
    results = []
    for cache, chunk in [(True, 7), (False, 7), (False, 30), (True, 1)]:
        basis = RandomBasis(4, 30, 70, chunk_size=chunk, cache=cache)
        assert torch.equal(basis.matrix(), basis_rows(4, 0, 30, 70))  # the basis itself never changes
        results.append((basis.combine(alpha), basis.project(g)))
    for combined, projected in results[1:]:
        torch.testing.assert_close(combined, results[0][0], rtol=1e-5, atol=1e-5)  # float32 sums of 30 and 70 terms
        torch.testing.assert_close(projected, results[0][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache", [True, False])
def test_gradient_of_combine_is_the_projection(cache, generator):
    basis = RandomBasis(9, 17, 25, chunk_size=4, cache=cache)
    alpha = torch.randn(17, generator=generator, dtype=torch.float64, requires_grad=True)
    g = torch.randn(25, generator=generator, dtype=torch.float64)
    (basis.combine(alpha) * g).sum().backward()
    B = basis_rows(9, 0, 17, 25, dtype=torch.float64)
    torch.testing.assert_close(alpha.grad, B @ g, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(basis.combine, (alpha.detach().requires_grad_(),))


def test_cache_is_not_in_state_dict_and_follows_dtype():
    basis = RandomBasis(1, 5, 8)
    basis.combine(torch.zeros(5))
    assert basis.matrix_cache is not None and basis.state_dict() == {}
    out = basis.combine(torch.ones(5, dtype=torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_basis": 0}, "n_basis must be a positive int, got 0"),
        ({"dim": -3}, "dim must be a positive int, got -3"),
        ({"seed": -1}, r"seed must be an int in \[0, 2\*\*63\), got -1"),
        ({"distribution": "gauss"}, "distribution must be one of"),
        ({"chunk_size": 0}, "chunk_size must be a positive int, got 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    args = {"seed": 0, "n_basis": 4, "dim": 6, **kwargs}
    with pytest.raises(ValueError, match=match):
        RandomBasis(args.pop("seed"), args.pop("n_basis"), args.pop("dim"), **args)


def test_bad_vectors_are_refused():
    basis = RandomBasis(0, 4, 6)
    with pytest.raises(ValueError, match=r"alpha must have shape \(4,\).*got \(5,\)"):
        basis.combine(torch.zeros(5))
    with pytest.raises(ValueError, match=r"g must have shape \(6,\).*got \(2, 3\)"):
        basis.project(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="alpha must be a torch.Tensor"):
        basis.combine([0.0] * 4)
    with pytest.raises(ValueError, match="stop must be >= start"):
        basis_rows(0, 3, 2, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rows_on_gpu_are_the_cpu_rows(generator):
    basis = RandomBasis(6, 40, 300, chunk_size=16, cache=False)
    alpha = torch.randn(40, generator=generator)
    assert torch.equal(basis.rows(0, 40, device="cuda").cpu(), basis_rows(6, 0, 40, 300))
    torch.testing.assert_close(basis.combine(alpha.cuda()).cpu(), basis.combine(alpha), rtol=1e-5, atol=1e-5)
