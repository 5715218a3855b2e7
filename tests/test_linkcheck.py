import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "check_links.py"


def _site(tmp_path, link):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "a.html").write_text(
        f'<a href="b.html#x">ok</a> <img src="../_images/p.png"> <a href="https://x.org/y">ext</a> {link}'
    )
    (tmp_path / "book" / "b.html").write_text('<a href="#top">self</a>')
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "p.png").write_bytes(b"png")
    (tmp_path / "_static").mkdir()  # theme templates: not pages, never checked
    (tmp_path / "_static" / "macros.html").write_text("<a href=\"{{ pathto('x.css', 1) }}\">t</a>")
    return tmp_path


def _run(root):
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True)


def test_clean_site_passes(tmp_path):
    out = _run(_site(tmp_path, ""))
    assert out.returncode == 0, out.stdout
    assert "0 broken" in out.stdout


def test_broken_internal_link_fails(tmp_path):
    out = _run(_site(tmp_path, '<a href="missing.html">gone</a>'))
    assert out.returncode == 1
    assert "book/a.html: broken link missing.html" in out.stdout
