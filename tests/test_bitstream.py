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


def _with_weights():
    p = _payload()
    p.sections = {"WGTS": bytes(range(256)) * 3, "NOTE": b"subset 1"}
    return p


def test_sections_round_trip_and_leave_plain_files_as_they_were():
    assert pack(_payload())[4] == 1  # no sections: version 1, byte for byte as before
    p = _with_weights()
    data = pack(p)
    assert data[4] == 2 and unpack(data, model="factorized", config=CFG) == p
    assert list(unpack(data).sections) == ["WGTS", "NOTE"]  # file order kept
    assert overhead(p) == overhead(_payload()) + 1 + 2 * (4 + 4)  # count, then tag and length each
    assert len(data) == len(pack(_payload())) + 1 + 2 * 8 + 768 + 8


def test_damaged_sections_are_rejected():
    good = pack(_with_weights())
    rng = random.Random(1)
    for _ in range(300):
        data = bytearray(good)
        data[rng.randrange(len(good) - 800, len(good))] ^= 1 << rng.randrange(8)  # in or near the sections
        with pytest.raises(LictutorError):
            unpack(bytes(data))
    body = good[:-4]
    twice = body[:-(8 + 8)] + b"WGTS" + body[-(8 + 8) + 4:]  # the second tag renamed to the first
    with pytest.raises(LictutorError, match="section 'WGTS' twice"):
        unpack(twice + struct.pack(">I", zlib.crc32(twice)))
    for tag in ("WGT", "WGTSX", "wé!s", 7):
        p = _payload()
        p.sections = {tag: b"x"}
        with pytest.raises(LictutorError, match="section tag"):
            pack(p)
