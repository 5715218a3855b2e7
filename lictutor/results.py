"""Rate–distortion results as JSON files in CompressAI's eval schema.

One result is ``{"name": str, "description": str, "results": {"bpp": [...], "psnr-rgb": [...],
"ms-ssim-rgb": [...], ...}}``: one list entry per rate point, all lists the same length. This is
what ``compressai.utils.eval_model`` and :func:`lictutor.codecs.evaluate_codec` write, and what
CompressAI publishes in ``results/image/kodak/``; the published Kodak curves ship with lictutor
(:func:`anchor`).
"""

import json
import math
import numbers
from importlib.resources import files
from pathlib import Path

import numpy as np

from lictutor.errors import LictutorError
from lictutor.metrics import bd_psnr, bd_rate, msssim_db
from lictutor.paths import write_atomic

_ANCHORS = files("lictutor") / "anchors"


def _plain(number):
    """A JSON-friendly Python int or float from any real number (NumPy scalars included)."""
    return int(number) if isinstance(number, numbers.Integral) else float(number)


def _normalize(result, source):
    """Check one result against the schema and return a clean copy with plain-number lists.

    ``null`` becomes NaN; a single number becomes a one-point list (``eval_model`` writes those
    for one checkpoint); a missing ``ms-ssim-rgb`` is derived from ``ms-ssim-db-rgb`` as
    ``1 − 10^(−dB/10)``. Other keys (``"meta"``, ``"per_image"``) pass through unchanged.
    """
    if not isinstance(result, dict) or not isinstance(result.get("name"), str):
        raise LictutorError(f"{source}: a result must be an object with a string 'name'")
    curves = result.get("results")
    if not isinstance(curves, dict) or "bpp" not in curves or "psnr-rgb" not in curves:
        raise LictutorError(f"{source}: result {result['name']!r} needs 'results' with 'bpp' and 'psnr-rgb' lists")
    clean = {}
    for key, values in curves.items():
        if isinstance(values, np.ndarray):
            values = values.tolist()
        elif not isinstance(values, (list, tuple)):
            values = [values]
        if not all(v is None or isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            raise LictutorError(f"{source}: 'results.{key}' of {result['name']!r} must hold numbers")
        clean[key] = [math.nan if v is None else _plain(v) for v in values]
    if "ms-ssim-rgb" not in clean and "ms-ssim-db-rgb" in clean:
        clean["ms-ssim-rgb"] = [1 - 10 ** (-db / 10) for db in clean["ms-ssim-db-rgb"]]
    lengths = {key: len(values) for key, values in clean.items()}
    if len(set(lengths.values())) != 1:
        raise LictutorError(f"{source}: the lists in 'results' of {result['name']!r} differ in length: {lengths}")
    return {**result, "description": result.get("description", ""), "results": clean}


def save_results(results, path):
    """Write one result (a dict) or several (a list of dicts) as JSON; return the path.

    Results are validated first, so a file written here always loads back; it is written
    atomically (:func:`lictutor.paths.write_atomic`). NaN (an MS-SSIM
    that could not be computed) is written as ``NaN``, as Python's ``json`` and CompressAI do.
    """
    path = Path(path)
    if isinstance(results, list):
        data = [_normalize(r, path) for r in results]
    else:
        data = _normalize(results, path)
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def load_results(path):
    """Read a result file written by :func:`save_results` or by CompressAI.

    Returns a dict, or a list of dicts if the file holds a list. Raises
    :class:`~lictutor.LictutorError` naming the file when it is missing, not JSON, or off-schema.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise LictutorError(f"{path}: cannot read results file: {err}") from err
    except json.JSONDecodeError as err:
        raise LictutorError(f"{path}: not valid JSON: {err}") from err
    if isinstance(data, list):
        return [_normalize(r, path) for r in data]
    return _normalize(data, path)


def anchors():
    """Names of the packaged Kodak reference curves, for :func:`anchor`."""
    return sorted(f.name.removesuffix(".json") for f in _ANCHORS.iterdir() if f.name.endswith(".json"))


def anchor(name):
    """A published Kodak rate–distortion curve shipped with lictutor (from CompressAI).

    ``name`` is one of :func:`anchors`, e.g. ``"bpg_444_x265_ycbcr"``, ``"vtm"`` or
    ``"compressai-bmshj2018-hyperprior_mse_cpu"``.
    """
    name = name.removesuffix(".json")
    if name not in anchors():
        raise LictutorError(f"unknown anchor {name!r}; available: {', '.join(anchors())}")
    source = f"anchor {name}.json"
    return _normalize(json.loads((_ANCHORS / f"{name}.json").read_text()), source)


def format_table(results):
    """One result or a list of them as a plain-text table, one row per rate point."""
    results = [results] if isinstance(results, dict) else results
    lines = [f"{'name':<24} {'quality':>8} {'bpp':>7} {'PSNR [dB]':>9} {'MS-SSIM':>8}"]
    for result in results:
        res = result["results"]
        for i, bpp in enumerate(res["bpp"]):
            quality = res["quality"][i] if "quality" in res else "-"
            msssim = f"{res['ms-ssim-rgb'][i]:.4f}" if "ms-ssim-rgb" in res else "-"
            lines.append(f"{result['name']:<24} {quality:>8} {bpp:>7.3f} {res['psnr-rgb'][i]:>9.2f} {msssim:>8}")
    return "\n".join(lines)


def shared_psnr_range(curves):
    """``(lo, hi)``: the PSNR range every one of ``curves`` covers (for ``bd_rows(psnr_range=)``),
    NaN points aside. ``hi <= lo`` means they share none, and an anchor that does not cover the
    range cannot be compared over it; :func:`bd_rows` then gives NaN and says so in its note."""
    if not curves:
        raise LictutorError("shared_psnr_range needs at least one curve")
    psnr = [np.asarray(curve["results"]["psnr-rgb"], dtype=np.float64) for curve in curves]
    return float(max(np.nanmin(p) for p in psnr)), float(min(np.nanmax(p) for p in psnr))


def bd_rows(curves, anchor_curve, method="akima", psnr_range=None):
    """BD numbers of each curve against ``anchor_curve``, one dict per curve:
    ``{"name", "bd_rate": %, "bd_psnr": dB, "bd_rate_msssim": %, "note"}``.

    BD-rate and BD-PSNR use PSNR; ``bd_rate_msssim`` uses MS-SSIM in dB
    (:func:`lictutor.metrics.msssim_db`). A number a pair of curves does not allow (too few
    points, quality not rising with rate, no overlap, ``psnr_range`` outside the overlap) is
    NaN, and ``note`` says why. ``psnr_range=(lo, hi)`` (e.g. :func:`shared_psnr_range`): the
    BD-rate averages over this PSNR range instead of each curve's own overlap with the anchor,
    so that rows are comparable; the other two numbers, which have other axes, are then NaN.
    """
    a = anchor_curve["results"]
    rows = []
    for curve in curves:
        r = curve["results"]
        row = {"name": curve["name"], "bd_rate": math.nan, "bd_psnr": math.nan,
               "bd_rate_msssim": math.nan, "note": ""}
        try:
            row["bd_rate"] = bd_rate(a["bpp"], a["psnr-rgb"], r["bpp"], r["psnr-rgb"], method, psnr_range)
            if psnr_range is None:
                row["bd_psnr"] = bd_psnr(a["bpp"], a["psnr-rgb"], r["bpp"], r["psnr-rgb"], method)
            if psnr_range is None and "ms-ssim-rgb" in a and "ms-ssim-rgb" in r:
                row["bd_rate_msssim"] = bd_rate(a["bpp"], msssim_db(a["ms-ssim-rgb"]),
                                                r["bpp"], msssim_db(r["ms-ssim-rgb"]), method)
        except LictutorError as err:
            row["note"] = str(err)
        rows.append(row)
    return rows


def bd_against(curve, anchor_curves, method="akima"):
    """:func:`bd_rows` of one ``curve`` against each of ``anchor_curves`` in turn, one row per
    anchor, named after it: every row a direct comparison, never two curves' rows against a
    third (whose BD-rates average over different PSNR ranges)."""
    return [{**bd_rows([curve], anchor, method)[0], "name": anchor["name"]} for anchor in anchor_curves]


def format_bd_table(rows, anchor_name):
    """:func:`bd_rows` as a plain-text table (negative BD-rate: fewer bits than the anchor)."""
    lines = [f"against {anchor_name}:",
             f"{'codec':<28}{'BD-rate':>10}{'BD-PSNR':>10}{'BD-rate':>10}",
             f"{'':<28}{'(PSNR)':>10}{'[dB]':>10}{'(MS-SSIM)':>10}"]
    def number(value, fmt, unit, width):
        return f"{'–':>{width}}" if math.isnan(value) else f"{value:{fmt}}{unit}"

    for row in rows:
        lines.append(f"{row['name']:<28}{number(row['bd_rate'], '>+9.1f', '%', 10)}"
                     f"{number(row['bd_psnr'], '>+10.2f', '', 10)}{number(row['bd_rate_msssim'], '>+9.1f', '%', 10)}"
                     + (f"   ({row['note']})" if row["note"] else ""))
    return "\n".join(lines)


def format_bd_ranges(curves, anchor_curve, anchor_name, method="akima"):
    """Each curve's PSNR BD-rate against ``anchor_curve`` over its own overlap with it and over
    the range all ``curves`` share (:func:`shared_psnr_range`), as a plain-text table with each
    curve's PSNR range. When the curves span different ranges, only the second column ranks
    them: over one range the anchor cancels, ``(1 + a) / (1 + b) − 1`` is the BD-rate of one
    curve against the other over that range."""
    shared = shared_psnr_range(curves)
    own = bd_rows(curves, anchor_curve, method)
    common = bd_rows(curves, anchor_curve, method, psnr_range=shared)
    lines = [f"BD-rate against {anchor_name}, over each curve's own PSNR range and over the range all share "
             f"({shared[0]:.2f}–{shared[1]:.2f} dB):",
             f"{'codec':<28}{'own range [dB]':>16}{'BD-rate':>9}{'shared range':>14}"]
    for curve, a, b in zip(curves, own, common):
        psnr = np.asarray(curve["results"]["psnr-rgb"], dtype=np.float64)
        lines.append(f"{curve['name']:<28}{np.nanmin(psnr):>9.2f}–{np.nanmax(psnr):<6.2f}{a['bd_rate']:>+8.1f}%"
                     f"{b['bd_rate']:>+13.1f}%" + (f"   ({b['note']})" if b["note"] else ""))
    return "\n".join(lines)
