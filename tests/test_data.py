import hashlib
import http.server
import io
import socket
import struct
import threading
import warnings
import zipfile
import zlib
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from lictutor import LictutorError, LictutorWarning, codecs, data
from lictutor.budget import get_budget
from lictutor.config import budget_config


def _write_png16_rgb(path, rgb16):
    """A 16-bit RGB PNG written by hand: Pillow cannot write one."""

    def chunk(kind, payload):
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _png_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# --- load_image ------------------------------------------------------------------------------


def _check_rgb(img, h=4, w=5):
    assert img.dtype == np.uint8 and img.shape == (h, w, 3)


def test_load_grayscale_and_1bit(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    Image.fromarray(gray).save(tmp_path / "l.png")
    img = data.load_image(tmp_path / "l.png")
    _check_rgb(img)
    assert (img == gray[:, :, None]).all()

    Image.fromarray(gray > 100).convert("1").save(tmp_path / "bw.png")
    img = data.load_image(tmp_path / "bw.png")
    _check_rgb(img)
    assert set(np.unique(img)) == {0, 255}


def test_load_palette(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[:2] = (200, 10, 30)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    img = data.load_image(tmp_path / "p.png")
    _check_rgb(img)
    assert (img[0, 0] == (200, 10, 30)).all() and (img[3, 4] == 0).all()


def test_transparency_composited_onto_white(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 255  # red...
    rgba[:2, :, 3] = 255  # ...opaque in the top half, transparent below
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    img = data.load_image(tmp_path / "rgba.png")
    _check_rgb(img)
    assert (img[0, 0] == (255, 0, 0)).all()
    assert (img[3, 0] == (255, 255, 255)).all()

    la = np.zeros((4, 5, 2), np.uint8)
    la[:, :, 1] = 128  # black, half transparent → mid gray
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    img = data.load_image(tmp_path / "la.png")
    _check_rgb(img)
    assert np.abs(img.astype(int) - 127).max() <= 1


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    img = data.load_image(tmp_path / "g16.png")
    _check_rgb(img, 1, 4)
    assert img[0, :, 0].tolist() == [0, 1, 128, 255]

    Image.fromarray(values.astype(">u2")).save(tmp_path / "g16b.tif")  # I;16B
    assert data.load_image(tmp_path / "g16b.tif")[0, :, 1].tolist() == [0, 1, 128, 255]
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "i32.tif")  # mode I
    assert data.load_image(tmp_path / "i32.tif")[0, :, 2].tolist() == [0, 1, 128, 255]


def test_16bit_rgb(tmp_path):
    rgb16 = np.array([[[65535, 32896, 0], [0, 0, 65535]]], dtype=np.uint16)
    _write_png16_rgb(tmp_path / "rgb16.png", rgb16)
    img = data.load_image(tmp_path / "rgb16.png")
    _check_rgb(img, 1, 2)
    assert img.tolist() == [[[255, 128, 0], [0, 0, 255]]]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (5, 4), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # cyan
    img = data.load_image(tmp_path / "cmyk.jpg")
    _check_rgb(img)
    r, g, b = img[2, 2].astype(int)
    assert r < 40 and g > 215 and b > 215


def test_exif_orientation_applied(tmp_path):
    im = Image.fromarray(np.zeros((4, 6, 3), np.uint8))  # 6 wide, 4 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert data.load_image(tmp_path / "rot.jpg").shape == (6, 4, 3)


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "text", "missing", "folder"])
def test_unreadable_files_raise_with_the_name(tmp_path, kind):
    path = tmp_path / f"bad_{kind}.png"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif kind == "truncated":
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        full = _png_bytes(noise)
        path.write_bytes(full[: len(full) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not an image\n")
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(LictutorError, match=path.name):
        data.load_image(path)


# --- save / tensors --------------------------------------------------------------------------


def test_tensor_round_trip_and_save(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    t = data.to_tensor(img)
    assert t.shape == (3, 6, 7) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    assert (data.to_uint8(t) == img).all()
    clamped = data.to_uint8(torch.tensor([-0.2, 0.25, 1.3]).view(1, 3, 1, 1))
    assert clamped.shape == (1, 1, 3) and clamped.tolist() == [[[0, 64, 255]]]

    data.save_image(t[None], tmp_path / "sub" / "a.png")
    data.save_image(img, tmp_path / "b.png")
    assert (data.load_image(tmp_path / "sub" / "a.png") == img).all()
    assert (data.load_image(tmp_path / "b.png") == img).all()

    with pytest.raises(LictutorError):
        data.to_tensor(img.astype(np.float32))
    with pytest.raises(LictutorError):
        data.to_uint8(torch.zeros(2, 3, 4, 4))
    with pytest.raises(LictutorError):
        data.to_uint8(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_to_tensor_of_a_read_only_array_copies_it_without_a_warning():
    img = np.asarray(Image.fromarray(np.full((4, 6, 3), 51, np.uint8)))
    assert not img.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = data.to_tensor(img)
    t += 1  # the tensor owns its memory
    assert (img == 51).all() and torch.allclose(t, torch.full((3, 4, 6), 1.2))


# --- built-in photos and folders -------------------------------------------------------------


def test_builtin_photos_and_split():
    photos = data.builtin_photos()
    assert len(photos) >= 4
    for img in photos.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    train, evaluation, unseen = data.builtin_split()
    assert data.builtin_split() == (train, evaluation, unseen)
    assert train and evaluation and unseen
    assert not set(train) & set(evaluation) and not set(unseen) & set(train + evaluation)
    assert sorted(train + evaluation + unseen) == sorted(photos)
    assert all(min(photos[n].shape[:2]) >= 256 for n in evaluation + unseen)
    assert [name for name, _ in data.eval_images()] == evaluation
    assert [name for name, _ in data.train_images()] == train
    assert [name for name, _ in data.unseen_images()] == unseen
    # the unseen photos come from packages that no training photo comes from
    package = {name: pkg for name, pkg, _ in data._BUILTIN}
    assert {package[n] for n in unseen} == set(data.UNSEEN_PACKAGES)
    assert not {package[n] for n in train} & set(data.UNSEEN_PACKAGES)
    assert [img.shape for _, img in data.unseen_images(count=2, size=128)] == [(128, 128, 3)] * 2


def test_evaluation_photos_stored_as_jpeg_are_moved_off_their_block_grid():
    """JPEG at the quality a photo was stored with, on its own 8×8 grid, finds the stored
    coefficients again and jumps in PSNR; off the grid its curve rises smoothly."""
    photos, paths = data.builtin_photos(), data._builtin_paths()
    k = data.OFF_GRID
    assert k % 8 and k % 16  # off both the luma and the chroma grid
    for name, img in data.unseen_images():
        assert paths[name].suffix == ".jpg"
        np.testing.assert_array_equal(img, photos[name][k:, k:])
    for name, img in data.eval_images() + data.train_images():  # PNG, or training photos: as stored
        np.testing.assert_array_equal(img, photos[name])
    img = dict(data.unseen_images())["grace_hopper"]  # stored at about quality 80
    on, off = (codecs.evaluate_codec("jpeg", [("grace_hopper", x)], qualities=[70, 75, 80, 85],
                                     progress=False)["results"]["psnr-rgb"]
               for x in (np.ascontiguousarray(photos["grace_hopper"]), img))
    assert on[2] > on[3] + 5  # on the grid: 50.8 dB at quality 80, more than quality 85 gives
    assert np.all(np.diff(off) > 0) and off[2] < on[2] - 10  # off it: a smooth curve


def test_folder_images(tmp_path):
    img = np.full((4, 5, 3), 7, np.uint8)
    for name in ["b.PNG", "a.jpg", ".hidden.png"]:
        Image.fromarray(img).save(tmp_path / name, format="PNG" if "png" in name.lower() else "JPEG")
    (tmp_path / "readme.txt").write_text("hello")
    images = data.folder_images(tmp_path)
    assert [name for name, _ in images] == ["a.jpg", "b.PNG"]
    assert data.eval_images(tmp_path)[1][0] == "b.PNG"

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LictutorError, match="no images"):
        data.folder_images(empty)
    with pytest.raises(LictutorError, match="does not exist"):
        data.folder_images(tmp_path / "nowhere")


# --- RandomCrops -----------------------------------------------------------------------------


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_random_crops_shapes_and_determinism():
    images = [("big", _noise(80, 100)), ("wide", _noise(40, 200, 1))]
    ds = data.RandomCrops(images, crop=32, length=50, seed=3)
    assert len(ds) == 50
    crops = [ds[i] for i in range(len(ds))]
    for c in crops:
        assert c.shape == (3, 32, 32) and c.dtype == torch.float32
        assert 0 <= c.min() and c.max() <= 1
    again = data.RandomCrops(images, crop=32, length=50, seed=3)
    assert all(torch.equal(again[i], crops[i]) for i in (0, 17, 49))
    other = data.RandomCrops(images, crop=32, length=50, seed=4)
    assert not all(torch.equal(other[i], crops[i]) for i in range(5))
    assert len({c.sum().item() for c in crops}) > 40  # crops differ from one another
    assert torch.equal(ds[10**6], again[10**6])  # indices past length are valid too
    assert len(list(ds)) == 50  # iterating gives one epoch
    with pytest.raises(IndexError):
        ds[-1]
    # every crop is a (possibly flipped) window of one of the images
    windows = [torch.from_numpy(img).permute(2, 0, 1).float() / 255 for _, img in images]
    c = crops[0]
    found = any(
        torch.equal(w[:, y:y + 32, x:x + 32], cand)
        for w in windows for cand in (c, c.flip(-1))
        for y in range(w.shape[1] - 31) for x in range(w.shape[2] - 31)
    )
    assert found


def test_random_crops_default_length_and_dataloader():
    ds = data.RandomCrops([_noise(40, 40), _noise(50, 40, 1), _noise(40, 60, 2)], crop=16)
    assert len(ds) == 3
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch.shape == (3, 3, 16, 16)


def test_small_images_padded_or_skipped():
    small = _noise(10, 20)
    ds = data.RandomCrops([small], crop=32)
    assert ds[0].shape == (3, 32, 32)

    with pytest.warns(UserWarning, match="tiny"):
        ds = data.RandomCrops([("tiny", small), ("ok", _noise(40, 40))], crop=32, pad=None)
    assert len(ds.images) == 1

    with pytest.warns(UserWarning), pytest.raises(LictutorError, match="32"):
        data.RandomCrops([("tiny", small)], crop=32, pad=None)


def test_training_set_from_folder(tmp_path):
    for i in range(2):
        Image.fromarray(_noise(48, 48, i)).save(tmp_path / f"{i}.png")
    ds = data.training_set(tmp_path, crop=32, length=7, augment=())
    assert len(ds) == 7 and ds[6].shape == (3, 32, 32) and len(ds.images) == 2


# --- augmentations ---------------------------------------------------------------------------


def test_training_photos_add_halved_copies_and_dead_leaves(tmp_path):
    big = _noise(200, 130)
    Image.fromarray(big).save(tmp_path / "big.png")
    photos = dict(data.training_photos(tmp_path, crop=32, augment=("scales",)))
    assert [img.shape for img in photos.values()] == [(200, 130, 3), (100, 65, 3), (50, 33, 3)]
    # a halved copy is the mean of 2×2 blocks (rounded)
    blocks = big[:100 * 2, :65 * 2].reshape(100, 2, 65, 2, 3).mean(axis=(1, 3))
    assert np.abs(photos["big.png/2"] - blocks).max() <= 1
    assert len(data.training_photos(tmp_path, crop=64, augment=("scales",))) == 2  # 50 < 64: no quarter
    leaves = data.training_photos(tmp_path, crop=32, augment=("leaves",))[1:]
    assert len(leaves) == data.LEAVES and all(img.shape == (256, 256, 3) for _, img in leaves)
    with pytest.raises(LictutorError, match="unknown augmentation 'blur'"):
        data.training_set(tmp_path, crop=32, augment=("blur",))
    with pytest.raises(LictutorError, match="sequence of names"):
        data.check_augment("scales")


def test_dihedral_crops_take_all_eight_symmetries():
    img = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)  # no symmetry of its own
    window = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    symmetries = [torch.rot90(w, k, dims=(1, 2)) for w in (window, window.flip(-1)) for k in range(4)]
    for dihedral, expected in ((False, 2), (True, 8)):
        ds = data.RandomCrops([img], crop=16, seed=1, dihedral=dihedral)
        seen = {next(i for i, s in enumerate(symmetries) if torch.equal(ds[n], s)) for n in range(200)}
        assert len(seen) == expected


def test_turn_hue_keeps_luminance_and_undoes_itself():
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.4  # no clipping
    assert torch.allclose(data.turn_hue(x, 0.0), x, atol=1e-6)
    turned = data.turn_hue(x, 1.0, 1.2)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    assert torch.allclose((turned * luma).sum(0), (x * luma).sum(0), atol=1e-5)
    assert not torch.allclose(turned, x, atol=1e-2)
    grey = x[:1].expand(3, -1, -1)
    assert torch.allclose(data.turn_hue(grey, 2.0, 1.5), grey, atol=1e-6)  # no chroma to turn
    assert torch.allclose(data.turn_hue(data.turn_hue(x, 0.7, 1.25), -0.7, 0.8), x, atol=1e-5)
    ds = data.RandomCrops([_noise(32, 32)], crop=32, seed=0, colour=True)
    plain = data.RandomCrops([_noise(32, 32)], crop=32, seed=0)
    changed = [not torch.equal(ds[i], plain[i]) for i in range(40)]
    assert 10 < sum(changed) < 30  # half the crops


# --- downloads -------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over a folder; ``requests`` lists the paths it was asked for."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _sha256(blob):
    return hashlib.sha256(blob).hexdigest()


def test_fetch_verifies_and_is_idempotent(server, tmp_path):
    www, url, requests = server
    blob = _png_bytes(_noise(8, 8))
    (www / "a.png").write_bytes(blob)
    dest = tmp_path / "out" / "a.png"

    assert data.fetch(f"{url}/a.png", dest, _sha256(blob), progress=False) == dest
    assert dest.read_bytes() == blob and requests == ["/a.png"]
    data.fetch(f"{url}/a.png", dest, _sha256(blob), progress=False)
    assert requests == ["/a.png"]  # already there and verified: no request
    assert list(dest.parent.iterdir()) == [dest]


def test_fetch_wrong_checksum_leaves_nothing(server, tmp_path):
    www, url, _ = server
    (www / "a.png").write_bytes(b"some bytes")
    dest = tmp_path / "out" / "a.png"
    with pytest.raises(LictutorError, match="checksum"):
        data.fetch(f"{url}/a.png", dest, "0" * 64, progress=False)
    assert not any(dest.parent.iterdir())


def test_fetch_404_and_unreachable_name_the_url(server, tmp_path):
    _, url, _ = server
    with pytest.raises(LictutorError, match=f"{url}/missing.png"):
        data.fetch(f"{url}/missing.png", tmp_path / "m.png", progress=False)
    assert not list(tmp_path.glob("m.png*"))
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/x.png"
    with pytest.raises(LictutorError, match=dead):
        data.fetch(dead, tmp_path / "x.png", progress=False)


def _register(monkeypatch, name, spec):
    monkeypatch.setitem(data.DATASETS, name, spec)


def test_download_files_and_zip(server, tmp_path, monkeypatch):
    www, url, requests = server
    pngs = {f"im{i}.png": _png_bytes(_noise(8, 8, i)) for i in range(4)}
    for name in ("im0.png", "im1.png"):
        (www / name).write_bytes(pngs[name])
    with zipfile.ZipFile(www / "set.zip", "w") as zf:
        zf.writestr("set/im2.png", pngs["im2.png"])
        zf.writestr("set/deeper/im3.png", pngs["im3.png"])
        zf.writestr("set/README.txt", "not an image")
        zf.writestr("__MACOSX/set/._im2.png", b"resource fork")
    files = (
        data.RemoteFile(f"{url}/im0.png", _sha256(pngs["im0.png"])),
        data.RemoteFile(f"{url}/im1.png", _sha256(pngs["im1.png"])),
        data.RemoteFile(f"{url}/set.zip", _sha256((www / "set.zip").read_bytes())),
    )
    _register(monkeypatch, "toy", data.DatasetSpec("a toy set", files))
    monkeypatch.setenv("LICTUTOR_HOME", str(tmp_path / "home"))

    folder = data.download("toy", progress=False)
    assert folder == tmp_path / "home" / "datasets" / "toy"
    images = data.folder_images(folder)
    assert [name for name, _ in images] == ["im0.png", "im1.png", "im2.png", "im3.png"]
    assert all((folder / name).read_bytes() == blob for name, blob in pngs.items())
    assert not (folder / "set.zip").exists()  # unpacked, then removed
    assert len(requests) == 3

    assert data.download("toy", progress=False) == folder
    assert len(requests) == 3  # second call: no network


def test_download_wrong_checksum(server, tmp_path, monkeypatch):
    www, url, _ = server
    (www / "a.png").write_bytes(_png_bytes(_noise(8, 8)))
    _register(monkeypatch, "bad", data.DatasetSpec("wrong sum", (data.RemoteFile(f"{url}/a.png", "f" * 64),)))
    with pytest.raises(LictutorError, match="checksum"):
        data.download("bad", root=tmp_path / "bad", progress=False)
    assert not any((tmp_path / "bad").iterdir())


def test_download_without_checksum_warns_with_the_sha256(server, tmp_path, monkeypatch):
    www, url, _ = server
    blob = _png_bytes(_noise(8, 8))
    (www / "a.png").write_bytes(blob)
    _register(monkeypatch, "unverified", data.DatasetSpec("no sums", (data.RemoteFile(f"{url}/a.png"),)))
    with pytest.warns(UserWarning, match=_sha256(blob)):
        data.download("unverified", root=tmp_path / "u", progress=False)
    assert (tmp_path / "u" / "a.png").read_bytes() == blob


def test_download_combined_sha1(server, tmp_path, monkeypatch):
    www, url, requests = server
    blobs = [_png_bytes(_noise(8, 8, i)) for i in range(2)]
    for i, blob in enumerate(blobs):
        (www / f"{i}.png").write_bytes(blob)
    files = tuple(data.RemoteFile(f"{url}/{i}.png") for i in range(2))
    good = hashlib.sha1(b"".join(blobs)).hexdigest()
    _register(monkeypatch, "combined", data.DatasetSpec("kodak-like", files, sha1_all=good))
    folder = data.download("combined", root=tmp_path / "c", progress=False)
    assert [p.read_bytes() for p in sorted(folder.glob("*.png"))] == blobs
    data.download("combined", root=tmp_path / "c", progress=False)
    assert len(requests) == 2  # checked again, not fetched again

    _register(monkeypatch, "combined", data.DatasetSpec("kodak-like", files, sha1_all="0" * 40))
    with pytest.raises(LictutorError, match="checksum"):
        data.download("combined", root=tmp_path / "c", progress=False)
    assert not list((tmp_path / "c").glob("*.png"))


def test_download_refuses_path_traversal(server, tmp_path, monkeypatch):
    www, url, _ = server
    with zipfile.ZipFile(www / "evil.zip", "w") as zf:
        zf.writestr("../evil.png", b"x")
    sha = _sha256((www / "evil.zip").read_bytes())
    spec = data.DatasetSpec("evil", (data.RemoteFile(f"{url}/evil.zip", sha),))
    _register(monkeypatch, "evil", spec)
    with pytest.raises(LictutorError, match="unsafe"):
        data.download("evil", root=tmp_path / "e" / "inner", progress=False)
    assert not (tmp_path / "e" / "evil.png").exists()


def test_download_unknown_name():
    with pytest.raises(LictutorError, match="kodak"):
        data.download("imagenet-22k")


def test_registry_is_well_formed():
    assert len(data.DATASETS["kodak"].files) == 24
    for spec in data.DATASETS.values():
        for remote in spec.files:
            assert remote.url.startswith(("http://", "https://"))
            assert remote.sha256 is None or len(remote.sha256) == 64


def test_eval_images_count_and_centre_crop():
    full = data.eval_images()
    few = data.eval_images(count=2, size=128)
    assert [n for n, _ in few] == [n for n, _ in full[:2]]
    name, img = few[0]
    h, w = full[0][1].shape[:2]
    top, left = (h - 128) // 2, (w - 128) // 2
    np.testing.assert_array_equal(img, full[0][1][top : top + 128, left : left + 128])
    # a side shorter than the crop is kept whole
    tall = np.zeros((100, 300, 3), np.uint8)
    assert data.center_crop(tall, 200).shape == (100, 200, 3)


def test_float_images_are_scaled_by_their_range_or_refused(tmp_path):
    ramp = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    Image.fromarray(ramp, mode="F").save(tmp_path / "unit.tif")
    img = data.load_image(tmp_path / "unit.tif")
    assert np.array_equal(img[..., 0], np.rint(ramp * 255).astype(np.uint8)) and img[..., 0].max() == 255
    Image.fromarray(ramp * 255, mode="F").save(tmp_path / "byte.tif")
    assert np.array_equal(data.load_image(tmp_path / "byte.tif"), img)
    for name, values in (("wide", ramp * 1000), ("negative", ramp - 0.5), ("nan", ramp * np.nan)):
        Image.fromarray(values.astype(np.float32), mode="F").save(tmp_path / f"{name}.tif")
        with pytest.raises(LictutorError, match=rf"cannot read image '.*{name}.tif': a floating-point image"):
            data.load_image(tmp_path / f"{name}.tif")


def test_multi_frame_images_use_the_first_frame_and_say_so(tmp_path):
    frames = [Image.new("RGB", (5, 4), color) for color in ((200, 0, 0), (0, 200, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(LictutorWarning, match="'anim.gif' holds 2 frames; only the first is used"):
        img = data.load_image(tmp_path / "anim.gif")
    assert img[0, 0, 0] > 150 and img[0, 0, 1] < 50


def test_read_images_skips_what_it_cannot_read(tmp_path):
    data.save_image(np.zeros((4, 5, 3), np.uint8), tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"broken")
    images, failures = data.read_images(tmp_path)
    assert [name for name, _ in images] == ["a.png"] and len(failures) == 1 and "b.png" in failures[0]
    with pytest.raises(LictutorError, match="b.png"):
        data.folder_images(tmp_path)
    assert [name for name, _ in data.read_images(tmp_path, limit=1)[0]] == ["a.png"]
    with pytest.raises(LictutorError, match="at least 1 image"):
        data.read_images(tmp_path, limit=0)


def test_save_image_writes_png_only_and_atomically(tmp_path):
    with pytest.raises(LictutorError, match="name the file 'x.png', not 'x.jpg'"):
        data.save_image(np.zeros((4, 5, 3), np.uint8), tmp_path / "x.jpg")
    data.save_image(np.zeros((4, 5, 3), np.uint8), tmp_path / "x.PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["x.PNG"]


def test_online_readers_train_and_evaluate_on_public_sets_by_name(server, tmp_path, monkeypatch):
    """LICTUTOR_ONLINE=1: the book's configurations name the training set (a name, not a path,
    so cache keys hold on any machine), which is downloaded once and read from disk after."""
    www, url, requests = server
    blobs = {name: _png_bytes(_noise(40, 48, i)) for i, name in enumerate(("t0.png", "t1.png", "e0.png"))}
    for name, blob in blobs.items():
        (www / name).write_bytes(blob)
    for name, files in (("toy-train", ("t0.png", "t1.png")), ("toy-eval", ("e0.png",))):
        _register(monkeypatch, name, data.DatasetSpec(f"{name}: a toy set (1 kB)",
                                                      tuple(data.RemoteFile(f"{url}/{f}", _sha256(blobs[f])) for f in files)))
    monkeypatch.setattr(data, "ONLINE_TRAINING", "toy-train")
    monkeypatch.setattr(data, "ONLINE_EVAL", "toy-eval")
    monkeypatch.setenv("LICTUTOR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LICTUTOR_ONLINE", raising=False)
    offline = budget_config(get_budget("smoke"), 0.01)
    assert offline.images is None and data.describe_data().startswith("offline")
    assert [n for n, _ in data.eval_images()] == data.builtin_split()[1]

    monkeypatch.setenv("LICTUTOR_ONLINE", "1")
    config = budget_config(get_budget("smoke"), 0.01)
    assert config.images == "toy-train" and config.key() != offline.key()
    assert data.describe_data() == ("online: trained on toy-train: a toy set; evaluated on toy-eval: a toy set, "
                                    "and on the unseen built-in photos")
    photos = data.training_photos(config.images, crop=32, augment=())
    assert [n for n, _ in photos] == ["t0.png", "t1.png"] and sorted(requests) == ["/t0.png", "/t1.png"]
    assert [n for n, _ in data.eval_images()] == ["e0.png"]
    requests.clear()
    assert len(data.training_set(config.images, crop=32, augment=())) == 2 and requests == []  # from disk now
    assert data.image_folder("./toy-train") == data.Path("toy-train")  # a path, not the set
