"""Deterministic plain-text extraction from Debian-installed Sphinx HTML docs.

Used to build the perplexity evaluation text (tests/data/golden/ppl_text.txt).
Only the main article body (<div role="main">) is kept; navigation, sidebars,
footers, code blocks (<pre>), <script>/<style> and Sphinx "¶" header links are
dropped so the result is English prose. Each block-level element becomes one
paragraph; whitespace inside a paragraph is collapsed to single spaces and
paragraphs are separated by a blank line. Everything is pure-stdlib
(html.parser) so the output depends only on the input files.
"""

from __future__ import annotations

import html.parser
import re

# Elements whose boundaries start a new paragraph.
_BLOCK = {
    "p", "div", "section", "li", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3",
    "h4", "h5", "h6", "blockquote", "table", "tr", "td", "th", "br", "hr",
    "figure", "figcaption", "caption",
}
# Elements whose whole subtree is skipped.
_SKIP = {"script", "style", "pre", "nav", "head"}
_VOID = {"br", "hr", "img", "meta", "link", "input", "wbr", "area", "base", "col"}


class _MainTextParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, is_main, skip)
        self._main_depth = 0  # >0 while inside <div role="main">
        self._skip_depth = 0  # >0 while inside a skipped subtree
        self.paragraphs: list[str] = []
        self._cur: list[str] = []

    def _flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self._cur)).strip()
        if text:
            self.paragraphs.append(text)
        self._cur = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        is_main = tag == "div" and a.get("role") == "main"
        cls = (a.get("class") or "").split()
        skip = tag in _SKIP or "headerlink" in cls or "highlight" in " ".join(cls)
        if tag in _VOID:
            if tag in _BLOCK and self._main_depth and not self._skip_depth:
                self._flush()
            return
        self._stack.append((tag, is_main, skip))
        if is_main:
            self._main_depth += 1
        if skip:
            self._skip_depth += 1
        if tag in _BLOCK and self._main_depth and not self._skip_depth:
            self._flush()

    def handle_endtag(self, tag):
        # Pop to the matching open tag (tolerates sloppy HTML deterministically).
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                break
        else:
            return
        while len(self._stack) > i:
            t, is_main, skip = self._stack.pop()
            if t in _BLOCK and self._main_depth and not self._skip_depth:
                self._flush()
            if skip:
                self._skip_depth -= 1
            if is_main:
                self._main_depth -= 1

    def handle_data(self, data):
        if self._main_depth and not self._skip_depth:
            self._cur.append(data)


def html_main_text(path: str) -> str:
    """Returns the prose of one Sphinx HTML page: paragraphs joined by blank lines."""
    with open(path, encoding="utf-8") as f:
        src = f.read()
    p = _MainTextParser()
    p.feed(src)
    p.close()
    p._flush()
    return "\n\n".join(p.paragraphs)
