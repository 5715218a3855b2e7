import json
import math

import numpy as np
import pytest

from lictutor.errors import LictutorError
from lictutor.results import anchor, anchors, format_table, load_results, save_results

RESULT = {
    "name": "my-model",
    "description": "a test curve",
    "results": {
        "psnr-rgb": [28.1, 30.2, 32.5],
        "ms-ssim-rgb": [0.93, 0.95, 0.97],
        "bpp": [0.15, 0.3, 0.6],
    },
}


def test_save_load_round_trip(tmp_path):
    path = save_results(RESULT, tmp_path / "sub" / "my-model.json")
    assert load_results(path) == RESULT
    both = save_results([RESULT, {**RESULT, "name": "other"}], tmp_path / "both.json")
    assert [r["name"] for r in load_results(both)] == ["my-model", "other"]


def test_load_compressai_style_single_point(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"name": "m", "results": {"psnr-rgb": 30.0, "bpp": 0.4}}))
    assert load_results(path) == {"name": "m", "description": "", "results": {"psnr-rgb": [30.0], "bpp": [0.4]}}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"results": {"bpp": [1], "psnr-rgb": [30]}}), "string 'name'"),
        (json.dumps({"name": "m", "results": {"bpp": [1]}}), "'bpp' and 'psnr-rgb'"),
        (json.dumps({"name": "m", "results": {"bpp": [1, 2], "psnr-rgb": [30]}}), "differ in length"),
        (json.dumps({"name": "m", "results": {"bpp": ["a"], "psnr-rgb": [30]}}), "must hold numbers"),
    ],
)
def test_bad_files_raise_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(LictutorError, match=message) as err:
        load_results(path)
    assert "broken.json" in str(err.value)


def test_missing_file_and_bad_save(tmp_path):
    with pytest.raises(LictutorError, match="missing.json"):
        load_results(tmp_path / "missing.json")
    with pytest.raises(LictutorError, match="out.json"):
        save_results({"name": "m", "results": {"bpp": [1]}}, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_every_packaged_anchor_loads():
    names = anchors()
    assert {"jpeg", "jpeg2000", "webp", "bpg_444_x265_ycbcr", "av1", "hm", "vtm"} <= set(names)
    assert any(n.startswith("compressai-") for n in names) and any(n.startswith("paper-") for n in names)
    for name in names:
        curve = anchor(name)
        res = curve["results"]
        assert len(res["bpp"]) >= 4 and len(res["bpp"]) == len(res["psnr-rgb"])
        assert all(0 < b < 5 for b in res["bpp"]) and all(20 < p < 50 for p in res["psnr-rgb"])


def test_anchor_details():
    bpg = anchor("bpg_444_x265_ycbcr.json")
    assert bpg["name"].startswith("BPG") and len(bpg["results"]["ms-ssim-rgb"]) == len(bpg["results"]["bpp"])
    checkerboard = anchor("paper-cheng2020-checkerboard-6M_mse")  # publishes MS-SSIM in dB only
    db = checkerboard["results"]["ms-ssim-db-rgb"][0]
    assert checkerboard["results"]["ms-ssim-rgb"][0] == pytest.approx(1 - 10 ** (-db / 10))
    assert "ms-ssim-rgb" not in anchor("paper-mbt2018")["results"]
    with pytest.raises(LictutorError, match="available: av1"):
        anchor("jpeg-xl")


def test_nan_round_trips(tmp_path):
    curves = {"bpp": np.array([0.1, 0.2]), "psnr-rgb": [np.float32(30), 32.0], "ms-ssim-rgb": [math.nan, None]}
    loaded = load_results(save_results({"name": "m", "results": curves}, tmp_path / "nan.json"))
    assert loaded["results"]["bpp"] == [0.1, 0.2] and loaded["results"]["psnr-rgb"] == [30.0, 32.0]
    assert all(math.isnan(v) for v in loaded["results"]["ms-ssim-rgb"])


def test_format_table():
    table = format_table([RESULT, anchor("paper-mbt2018")]).splitlines()
    assert table[0].split() == ["name", "quality", "bpp", "PSNR", "[dB]", "MS-SSIM"]
    assert table[1].split() == ["my-model", "-", "0.150", "28.10", "0.9300"]
    assert len(table) == 1 + 3 + len(anchor("paper-mbt2018")["results"]["bpp"])
    assert format_table(RESULT).splitlines()[1:] == table[1:4]


def test_bd_rows_and_table():
    from lictutor.results import bd_rows, format_bd_table

    anchor = {"name": "A", "results": {"bpp": [0.25, 0.5, 1.0, 2.0], "psnr-rgb": [26, 29, 32, 35],
                                       "ms-ssim-rgb": [0.90, 0.95, 0.975, 0.9875]}}
    half = {"name": "B", "results": {"bpp": [0.125, 0.25, 0.5, 1.0], "psnr-rgb": [26, 29, 32, 35],
                                     "ms-ssim-rgb": [0.90, 0.95, 0.975, 0.9875]}}
    broken = {"name": "C", "results": {"bpp": [0.2, 0.4], "psnr-rgb": [30, 28]}}
    rows = bd_rows([half, broken], anchor)
    assert rows[0]["bd_rate"] == pytest.approx(-50.0) and rows[0]["bd_rate_msssim"] == pytest.approx(-50.0)
    assert rows[0]["bd_psnr"] > 0 and rows[0]["note"] == ""
    assert math.isnan(rows[1]["bd_rate"]) and "monotonic" in rows[1]["note"]
    table = format_bd_table(rows, "A")
    assert "-50.0%" in table and "monotonic" in table


def test_bd_rows_over_a_shared_psnr_range():
    from lictutor.metrics import bd_rate
    from lictutor.results import bd_rows, shared_psnr_range

    anchor = {"name": "A", "results": {"bpp": [0.25, 0.5, 1.0, 2.0, 4.0], "psnr-rgb": [26, 29, 32, 35, 38],
                                       "ms-ssim-rgb": [0.9, 0.94, 0.96, 0.98, 0.99]}}
    low = {"name": "low", "results": {"bpp": [0.2, 0.3, 0.8], "psnr-rgb": [27, 30, 33],
                                      "ms-ssim-rgb": [0.92, 0.95, 0.97]}}
    high = {"name": "high", "results": {"bpp": [0.3, 0.5, 0.9], "psnr-rgb": [28, 31, 36],
                                        "ms-ssim-rgb": [0.93, 0.96, 0.98]}}
    assert shared_psnr_range([low, high]) == (28, 33)
    assert shared_psnr_range([low, {"name": "gap", "results": {"psnr-rgb": [float("nan"), 29, 34]}}]) == (29, 33)
    assert not math.isnan(bd_rows([low], anchor)[0]["bd_rate_msssim"])
    rows = bd_rows([low, high], anchor, psnr_range=(28, 33))
    for curve, row in zip((low, high), rows):
        r = curve["results"]
        assert row["bd_rate"] == pytest.approx(bd_rate(anchor["results"]["bpp"], anchor["results"]["psnr-rgb"],
                                                       r["bpp"], r["psnr-rgb"], interval=(28, 33)))
        assert math.isnan(row["bd_psnr"]) and math.isnan(row["bd_rate_msssim"]) and row["note"] == ""
    assert rows[0]["bd_rate"] != pytest.approx(bd_rows([low], anchor)[0]["bd_rate"])  # not its own overlap
    # over one range the anchor cancels: the ratio of two rows is one curve's BD-rate against the other
    direct = bd_rate(high["results"]["bpp"], high["results"]["psnr-rgb"], low["results"]["bpp"],
                     low["results"]["psnr-rgb"], interval=(28, 33))
    assert (100 + rows[0]["bd_rate"]) / (100 + rows[1]["bd_rate"]) * 100 - 100 == pytest.approx(direct)
    assert "not a range inside" in bd_rows([low], anchor, psnr_range=(26, 30))[0]["note"]
    far = {"name": "far", "results": {"bpp": [1, 2], "psnr-rgb": [34, 36]}}
    disjoint = shared_psnr_range([low, far])
    assert disjoint == (34, 33)
    row = bd_rows([low], anchor, psnr_range=disjoint)[0]  # no shared range: NaN, and the note says why
    assert math.isnan(row["bd_rate"]) and "not a range inside" in row["note"]
    with pytest.raises(LictutorError, match="at least one curve"):
        shared_psnr_range([])


def test_format_bd_ranges_ranks_over_the_shared_range():
    from lictutor.results import format_bd_ranges

    anchor = {"name": "A", "results": {"bpp": [0.25, 0.5, 1.0, 2.0, 4.0], "psnr-rgb": [26, 29, 32, 35, 38]}}
    # both curves' lead over the anchor shrinks with PSNR; "low" reaches lower, where the lead
    # is larger, and "high" is the better codec where both are
    low = {"name": "low", "results": {"bpp": [0.1, 0.35, 0.9], "psnr-rgb": [27, 30, 33]}}
    high = {"name": "high", "results": {"bpp": [0.2, 0.35, 0.7, 1.6], "psnr-rgb": [28, 30, 33, 36]}}
    lines = format_bd_ranges([low, high], anchor, "A").splitlines()
    assert "(28.00–33.00 dB)" in lines[0]
    assert [line.split()[:2] for line in lines[2:]] == [["low", "27.00–33.00"], ["high", "28.00–36.00"]]
    (low_own, low_shared), (high_own, high_shared) = ([float(v.rstrip("%")) for v in line.split()[-2:]]
                                                      for line in lines[2:])
    assert low_own < high_own  # over their own ranges "low" looks better ...
    assert high_shared < low_shared  # ... over the shared one, "high" is


def test_bd_against_compares_one_curve_with_each_anchor_directly():
    from lictutor.results import bd_against, bd_rows

    curve = {"name": "mine", "results": {"bpp": [0.125, 0.25, 0.5, 1.0], "psnr-rgb": [26, 29, 32, 35]}}
    same = {"name": "same", "results": {"bpp": [0.125, 0.25, 0.5, 1.0], "psnr-rgb": [26, 29, 32, 35]}}
    double = {"name": "double", "results": {"bpp": [0.25, 0.5, 1.0, 2.0], "psnr-rgb": [26, 29, 32, 35]}}
    rows = bd_against(curve, [same, double])
    assert [r["name"] for r in rows] == ["same", "double"]
    assert rows[0]["bd_rate"] == pytest.approx(0.0, abs=1e-9) and rows[1]["bd_rate"] == pytest.approx(-50.0)
    assert rows[1]["bd_psnr"] == bd_rows([curve], double)[0]["bd_psnr"]
