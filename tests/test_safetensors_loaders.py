"""Every pilearn loader refuses a missing file and a file that is not safetensors with the same clear errors
(pilearn._safetensors.read_safetensors), before it looks at its own format."""

import pytest
import torch

from pilearn import PILClassifier
from pilearn._safetensors import read_safetensors
from pilearn.generative import PILDiffusion, PILFlowMatching
from pilearn.lm import load_lm
from pilearn.metrics import load_lenet
from pilearn.reparam import load_reparam, load_supsup
from pilearn.solvers import load_checkpoint

LOADERS = {
    "estimator": lambda p: PILClassifier.load(p),
    "flow": lambda p: PILFlowMatching.load(p),
    "diffusion": lambda p: PILDiffusion.load(p),
    "lm": lambda p: load_lm(p),
    "lenet": lambda p: load_lenet(p),
    "reparam": lambda p: load_reparam(p, torch.nn.Linear(2, 2)),
    "supsup": lambda p: load_supsup(p),
    "checkpoint": lambda p: load_checkpoint(p),
}


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_loaders_refuse_missing_and_non_safetensors_files(kind, tmp_path):
    load = LOADERS[kind]
    with pytest.raises(FileNotFoundError, match="no .* at '.*nothing.safetensors'"):
        load(tmp_path / "nothing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match=r"junk.safetensors' is not a readable safetensors file \(.*\); expected a"):
        load(junk)


def test_read_safetensors_returns_metadata_and_tensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "a.safetensors"
    save_file({"w": torch.arange(3.0)}, str(path), metadata={"format": "x"})
    meta, tensors = read_safetensors(path, "test file")
    assert meta == {"format": "x"} and torch.equal(tensors["w"], torch.arange(3.0))
    assert read_safetensors(path, "test file", tensors=False) == ({"format": "x"}, {})
    meta, arrays = read_safetensors(path, "test file", framework="np")
    assert arrays["w"].tolist() == [0.0, 1.0, 2.0]


def test_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, expected a test file"):
        read_safetensors(tmp_path, "test file")


def test_a_pickled_feature_map_computes_the_same_features():
    import pickle

    from pilearn.features import RandomProjection

    fmap = RandomProjection(4, 8, seed=0)
    old = pickle.loads(pickle.dumps(fmap))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(old(x), fmap(x))
