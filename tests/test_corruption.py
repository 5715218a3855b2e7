"""Damaged, truncated and forged ``.lic`` files: every one is a LictutorError, quickly."""

import random
import time

import pytest
import torch

from lictutor import LictutorError, bitstream, data, models
from lictutor.checkpoint import save_checkpoint
from lictutor.config import TrainConfig
from lictutor.cli import main
from lictutor.entropy import MAX_SYMBOL, EntropyBottleneck
from lictutor.evaluate import compress_image, decompress_image

SECONDS_EACH = 5


@pytest.fixture(scope="module")
def model():
    """A tiny model with latents of a few bits each and, as after training, CDF tables that
    cover them: values outside the tables are escape-coded as raw bits, which (like any raw
    data) a forger who also fixes the CRC could change undetected."""
    torch.manual_seed(0)
    net = models.create("factorized", N=8, M=12).eval()
    with torch.no_grad():
        net.g_a[-1].weight.mul_(200)
    net.update(force=True, update_quantiles=True)
    return net


@pytest.fixture(scope="module")
def image():
    return data.builtin_photos()["astronaut"][100:140, 200:250]  # 40×50: a 3×4 latent


@pytest.fixture(scope="module")
def good(model, image):
    blob = compress_image(model, image, "factorized")
    assert decompress_image(model, blob, "factorized").shape == image.shape
    assert len(bitstream.unpack(blob).strings[0][0]) > 50
    return blob


def damaged(blob, rng):
    """A randomly damaged copy of ``blob``: flipped bits, changed, inserted or deleted bytes,
    a truncation, or random bytes."""
    b = bytearray(blob)
    kind = rng.randrange(6)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] = (b[i] + rng.randint(1, 255)) % 256
    elif kind == 2:
        b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
    elif kind == 3:
        del b[rng.randrange(len(b))]
    elif kind == 4:
        b = b[: rng.randrange(len(b))]
    else:
        b = bytearray(rng.randbytes(rng.randrange(200)))
        if rng.random() < 0.5:
            b[:5] = blob[:5]  # past the magic and version checks
    return bytes(b)


def forged(blob, rng):
    """A file with a valid CRC whose fields lie: it must be the decoder that objects."""
    p = bitstream.unpack(blob)
    (s,) = p.strings[0]
    h, w = p.image_size
    kind = rng.randrange(11)
    if kind == 0:  # another image size, same latent shape
        p.image_size = rng.choice([(h + 16, w), (h, w + 16), (1, 1), (h * 4, w * 4)])
    elif kind == 1:  # another latent shape
        p.shape = rng.choice([(3, 5), (4, 4), (0, 4), (3,), (3, 4, 1), (), (65535, 65535)])
    elif kind == 2:  # image and latent larger together, strings as they were
        p.image_size, p.shape = (h + 16, w + 16), (p.shape[0] + 1, p.shape[1] + 1)
    elif kind == 3:
        b = bytearray(s)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        p.strings = [[bytes(b)]]
    elif kind == 4:
        p.strings = [[s[: rng.randrange(len(s))]]]
    elif kind == 5:
        p.strings = [[s + rng.randbytes(rng.randint(1, 8))]]
    elif kind == 6:
        p.strings = [[rng.randbytes(rng.randrange(len(s) * 2))]]
    elif kind == 7:  # string layout
        p.strings = rng.choice([[], [[]], [[s, s]], [[s], [s]], [[s], []]])
    elif kind == 8:  # the last 8 bytes are the coder's final state
        p.strings = [[s[:-8] + rng.randbytes(8)]]
    elif kind == 9:
        p.model = rng.choice(["factorized2017", "hyperprior", "", "f" * 255])
    else:
        p.config = rng.randbytes(8)
    return bitstream.pack(p)


def test_random_damage_and_forgeries_all_raise_quickly(model, good):
    rng = random.Random(1234)
    cases = [damaged(good, rng) for _ in range(600)] + [forged(good, rng) for _ in range(400)]
    assert sum(c == good for c in cases) == 0
    slowest = 0.0
    for blob in cases:
        start = time.perf_counter()
        with pytest.raises(LictutorError):
            decompress_image(model, blob, "factorized")
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < SECONDS_EACH


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: setattr(p, "image_size", (p.image_size[0] + 16, p.image_size[1])), "does not fit"),
        (lambda p: setattr(p, "shape", (3, 5)), "does not fit"),
        (lambda p: setattr(p, "strings", [[p.strings[0][0][:-4]]]), "damaged entropy-coded string"),
        (lambda p: setattr(p, "strings", [[p.strings[0][0], b"x"]]), "one string per latent"),
        (lambda p: setattr(p, "strings", [[b"x"], [b"y"]]), "strings must be"),
        (lambda p: setattr(p, "image_size", (65535, 65535)), "out of range"),
    ],
)
def test_forgeries_are_named(model, good, change, message):
    payload = bitstream.unpack(good)
    change(payload)
    with pytest.raises(LictutorError, match=message):
        decompress_image(model, bitstream.pack(payload), "factorized")


def test_entropy_coder_refuses_damaged_strings():
    """CompressAI's decoder reads past short strings (an empty one crashed the process) and
    its encoder loops forever on huge values; ours raise instead."""
    torch.manual_seed(0)
    eb = EntropyBottleneck(4).eval()
    y = torch.randn(1, 4, 5, 6) * 8
    (s,) = eb.compress(y)
    medians = eb.quantiles[:, 0, 1].detach().view(1, 4, 1, 1)
    assert torch.equal(eb.decompress([s], (5, 6)), torch.round(y - medians) + medians)
    for bad in (b"", b"\x00", s[:4], s[:-1], s + b"\x00", b"\xff" * len(s), bytes(len(s))):
        with pytest.raises(LictutorError, match="damaged"):
            eb.decompress([bad], (5, 6))
    for value in (float("nan"), float("inf"), 2.0 * MAX_SYMBOL):
        with pytest.raises(LictutorError, match="cannot entropy-code"):
            eb.compress(torch.full((1, 4, 2, 2), value))


def test_the_cli_reports_damage_in_one_line(model, good, tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model, TrainConfig(model="factorized", model_args={"N": 8, "M": 12}))
    rng = random.Random(7)
    files = {"flipped": damaged(good, rng), "truncated": good[:30], "empty": b"",
             "forged": forged(good, rng), "png": b"\x89PNG\r\n\x1a\n", "good": good}
    out = tmp_path / "out.png"
    for name, blob in files.items():
        (tmp_path / f"{name}.lic").write_bytes(blob)
        code = main(["decompress", "--checkpoint", str(ckpt), str(tmp_path / f"{name}.lic"), str(out)])
        err = capsys.readouterr().err
        if name == "good":
            assert code == 0 and err == ""
            assert data.load_image(out).shape == (40, 50, 3)
        else:
            assert code == 1 and not out.exists()
            assert err.count("\n") == 1 and err.startswith("lictutor: error: "), err
