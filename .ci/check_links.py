"""Report internal links in a built HTML site that point at files which do not exist.

Usage: python .ci/check_links.py _build/html   (exit status 1 if any link is broken)
"""

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src") and value:
                self.targets.append(value)


def broken_links(root: Path):
    """Yield (page, target) for each broken link. Pages under ``_static`` are the theme's
    Jinja templates, copied verbatim, not pages of the book: they are skipped."""
    for page in sorted(root.rglob("*.html")):
        if "_static" in page.relative_to(root).parts:
            continue
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for target in parser.targets:
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or not parts.path:  # external, or same-page anchor
                continue
            path = (page.parent / unquote(parts.path)).resolve()
            if not path.exists():
                yield page.relative_to(root), target


def main(argv):
    root = Path(argv[1] if len(argv) > 1 else "_build/html")
    if not root.is_dir():
        sys.exit(f"no built site at {root}; run `make book` first")
    broken = list(broken_links(root))
    for page, target in broken:
        print(f"{page}: broken link {target}")
    print(f"{len(broken)} broken internal links in {root}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
