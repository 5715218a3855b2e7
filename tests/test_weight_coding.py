import pytest
import torch

from lictutor import LictutorError
from lictutor.bitstream import Payload, config_hash, pack, unpack
from lictutor.weight_coding import SECTION_TAG, decode_weights, encode_weights, quantize_weights


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"block.0.weight": torch.randn(16, 8, 3, 3, generator=g) * 0.05,
            "block.0.bias": torch.randn(16, generator=g) * 0.01,
            "scale": torch.ones(1, 16, 1, 1, dtype=torch.float64)}


def test_round_trip_is_exact_and_costs_fewer_bits_with_a_coarser_step():
    w = _weights()
    data = encode_weights(w, 0.01)
    back = decode_weights(data, w)
    expected = quantize_weights(w, 0.01)
    assert list(back) == list(w)
    for name in w:
        assert back[name].shape == w[name].shape and back[name].dtype == w[name].dtype
        assert torch.equal(back[name], expected[name])
        assert (back[name] - w[name]).abs().max() <= 0.005 + 1e-7  # half a step
    values = sum(t.numel() for t in w.values())
    assert 8 * len(data) < 6 * values  # a Laplace fit of small weights: well under a byte each
    assert len(encode_weights(w, 0.04)) < len(data)


def test_a_section_that_does_not_fit_the_decoder_is_rejected():
    w = _weights()
    data = encode_weights(w, 0.01)
    with pytest.raises(LictutorError, match="holds 3 tensors; this decoder has 2"):
        decode_weights(data, dict(list(w.items())[:2]))
    other = {**w, "block.0.bias": torch.zeros(8)}
    with pytest.raises(LictutorError, match="'block.0.bias' has 16 values; this decoder's has 8"):
        decode_weights(data, other)
    for cut in (3, len(data) // 2, len(data) - 1):
        with pytest.raises(LictutorError, match="damaged"):
            decode_weights(data[:cut], w)
    with pytest.raises(LictutorError, match="trailing"):
        decode_weights(data + b"\x00", w)
    for step in (0, -1.0, float("nan"), float("inf"), 1e50, 1e-50, True, "0.1"):
        with pytest.raises(LictutorError, match="quantization step"):
            encode_weights(w, step)
    with pytest.raises(LictutorError, match="not finite"):
        encode_weights({"w": torch.tensor([1.0, float("inf")])}, 0.1)


def test_weights_travel_in_a_lic_section():
    w = _weights(1)
    cfg = config_hash({"student": 1})
    payload = Payload("student", cfg, (64, 64), (4, 4), [[b"latents"]], {SECTION_TAG: encode_weights(w, 0.02)})
    got = unpack(pack(payload), model="student", config=cfg)
    assert torch.equal(decode_weights(got.sections[SECTION_TAG], w)["block.0.weight"],
                       quantize_weights(w, 0.02)["block.0.weight"])
