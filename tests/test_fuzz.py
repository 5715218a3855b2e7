"""Property-based fuzzing (hypothesis) of the two readers of untrusted bytes: the ``.lic``
bitstream reader and the checkpoint loader. Whatever the bytes, each either gives exactly
what was written or raises :class:`LictutorError`: no other exception, no hang, no garbage.
Derandomized and bounded (a fixed number of examples), so that ``make test`` is repeatable."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lictutor import bitstream, models
from lictutor.checkpoint import load_checkpoint, save_checkpoint
from lictutor.config import TrainConfig
from lictutor.errors import LictutorError
from lictutor.evaluate import compress_image, decompress_image

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def coded():
    """An untrained tiny model, a 40×56 image and its ``.lic`` bytes and decoded image."""
    torch.manual_seed(0)
    model = models.create("factorized", N=8, M=12).eval()
    img = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    blob = compress_image(model, img, "factorized")
    return model, blob, decompress_image(model, blob, "factorized")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The bytes of a tiny model's checkpoint and the state it holds."""
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    config = TrainConfig(model_args={"N": 8, "M": 12}, steps=1, crop=32)
    save_checkpoint(path, models.create("factorized", N=8, M=12), config, step=1, history=[], train_time=0.0)
    return path.read_bytes(), torch.load(path, weights_only=True)


def mutations():
    """Byte flips at any position, a cut, or bytes inserted."""
    flip = st.tuples(st.just("flip"), st.integers(0, 10**9), st.integers(1, 255))
    cut = st.tuples(st.just("cut"), st.integers(0, 10**9), st.just(0))
    insert = st.tuples(st.just("insert"), st.integers(0, 10**9), st.integers(0, 255))
    return st.lists(st.one_of(flip, cut, insert), min_size=1, max_size=4)


def mutate(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for kind, where, value in edits:
        i = where % (len(data) + 1)
        if kind == "flip" and i < len(data):
            data[i] ^= value
        elif kind == "cut":
            del data[i:]
        elif kind == "insert":
            data[i:i] = bytes([value])
    return bytes(data)


@FUZZ
@given(edits=mutations())
def test_a_mutated_lic_file_decodes_exactly_or_is_refused(coded, edits):
    model, blob, image = coded
    damaged = mutate(blob, edits)
    try:
        decoded = decompress_image(model, damaged, "factorized")
    except LictutorError:
        return
    assert np.array_equal(decoded, image)  # only a mutation that changed nothing may decode


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_are_no_lic_file(data):
    with pytest.raises(LictutorError):
        bitstream.unpack(bitstream.MAGIC + data if data[:1] == b"\x00" else data)


@FUZZ
@given(edits=mutations())
def test_a_mutated_checkpoint_loads_exactly_or_is_refused(checkpoint, tmp_path, edits):
    data, stored = checkpoint
    path = tmp_path / "mutated.pt"
    path.write_bytes(mutate(data, edits))
    try:
        model, ckpt = load_checkpoint(path)
    except LictutorError:
        return
    assert ckpt["digest"] == stored["digest"] and ckpt["config"] == stored["config"]
    assert all(torch.equal(v, stored["state_dict"][k]) for k, v in model.state_dict().items())
