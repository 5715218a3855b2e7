import random
import struct
import zlib

import pytest

from lictutor import LictutorError
from lictutor.bitstream import MAGIC, Payload, config_hash, overhead, pack, unpack

CFG = config_hash({"N": 128, "M": 192})


def _payload():
    return Payload("factorized", CFG, (512, 768), (32, 48), [[b"\x01\x02\x03" * 50], [b"zz"]])


def test_round_trip():
    p = _payload()
    q = unpack(pack(p), model="factorized", config=CFG)
    assert q == p


def test_overhead_is_small_and_exact():
    p = _payload()
    assert overhead(p) == len(pack(p)) - 152
    assert overhead(p) == 50  # 4 magic + 1 version + 11 model + 8 config + 9 sizes + 13 strings + 4 crc


def test_config_hash_tracks_config():
    assert config_hash({"M": 192, "N": 128}) == CFG  # key order does not matter
    assert config_hash({"N": 128, "M": 320}) != CFG


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"PNG\x00" + b[4:], "magic"),
        (lambda b: b[:4] + bytes([9]) + b[5:], "version 9"),
        (lambda b: b[:-10], "CRC"),
        (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], "CRC"),
        (lambda b: b"", "magic"),
    ],
)
def test_damage_is_named(mutate, message):
    with pytest.raises(LictutorError, match=message):
        unpack(mutate(pack(_payload())))


def test_wrong_model_or_config():
    data = pack(_payload())
    with pytest.raises(LictutorError, match="model 'factorized', not 'hyperprior'"):
        unpack(data, model="hyperprior")
    with pytest.raises(LictutorError, match="configuration"):
        unpack(data, model="factorized", config=config_hash({"N": 1}))


def test_lengths_are_checked_even_with_a_valid_crc():
    """A file whose CRC matches but whose lengths lie is caught as truncated, not an IndexError."""
    body = bytearray(pack(_payload())[:-4])
    body[-2 - 4 - 2] = 200  # claim 51,201 strings in the last group, where there is one
    body = bytes(body)
    with pytest.raises(LictutorError):
        unpack(body + struct.pack(">I", zlib.crc32(body)))


def test_random_damage_always_raises_lictutor_error():
    rng = random.Random(0)
    good = pack(_payload())
    for _ in range(500):
        data = bytearray(good)
        if rng.random() < 0.5:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        with pytest.raises(LictutorError):
            unpack(bytes(data), model="factorized", config=CFG)


def test_refuses_to_write_nonsense():
    with pytest.raises(LictutorError):
        pack(Payload("m", CFG, (0, 10), (1,), [[b""]]))
    assert pack(_payload()).startswith(MAGIC)
