"""The rendered book, opened page by page in headless Chromium (run by `make browser-check`).

Needs a built book in ``_build/html`` (``make book`` or ``make book-strict``) and a system Chromium
(``scripts/ensure_chromium.py`` installs Debian's). For every HTML page of the book it fails on

* JavaScript errors, other than the allow-list below (each entry says why it is harmless);
* requests that leave 127.0.0.1 (the book must render offline: no CDN) or that fail;
* images that did not load;
* math that MathJax did not typeset (raw TeX left, or a TeX error);
* widgets stored in a notebook that the widget manager did not render;
* Chinese characters drawn as empty boxes (tofu), because no font with CJK glyphs was found
  (``scripts/ensure_chromium.py`` installs Debian's ``fonts-noto-cjk``);

and it checks that every page of ``_toc.yml`` is in the navigation. A full-page screenshot of each
page is written to ``_build/screenshots/`` for a person to look at.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Per Playwright action on a checked page (load, evaluate, screenshot), and the most a page may take to
# settle. The API page (1.2 MB, 170,000 px tall) takes 7 s to load and 15 s to screenshot on this 2-core
# machine: Playwright's default 30 s leaves no margin on a slower one.
PAGE_TIMEOUT_MS = 120_000

# Console errors known to be harmless, with the reason. Anything else fails the page.
ALLOWED_CONSOLE = [
    # sphinx-thebe's script declares a global that sphinx-book-theme declares too; thebe is only
    # used when a reader clicks "live code", which needs a kernel anyway.
    (r"THEBE_JS_URL", "sphinx-thebe declares THEBE_JS_URL twice"),
    # The ipywidgets HTML manager asks MathJax v2's `Hub.Queue` to typeset widget labels; the book
    # uses MathJax 3, which typesets the page itself.
    (r"Queue", "widget manager calls MathJax v2's Queue"),
    (r"Got invalid theme mode", "pydata-sphinx-theme on a fresh profile without a stored theme"),
    # 404s are reported by the response check below, with their URLs, not by the console text.
    (r"Failed to load resource: the server responded with a status of 404", "checked by URL below"),
]
# Resources allowed to 404, with the reason.
ALLOWED_404 = [
    r"/favicon\.ico$",  # the browser asks for a favicon the book does not have
    # The widget manager's CSS asks for its icon font (Font Awesome) relative to the page, under the
    # npm path it was published at. Only icon buttons would need it; the book's widgets have none.
    r"/@jupyter-widgets/html-manager/dist/[0-9a-f]+\.(woff2?|ttf|eot|svg)$",
]


# Chinese characters without a font are drawn as the primary font's .notdef glyph (an empty box) or not at
# all. The probe draws every distinct CJK character of the page on a canvas, in the font family of the
# element it appears in, and compares the pixels with those of code points no font has (unassigned
# U+0378 and plane-15 private use U+F0000): identical pixels, or no ink at all, mean a box. Canvas text
# uses the same font fallback as the page.
CJK_PROBE = r"""() => {
    const cjk = /[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]/gu;
    const seen = new Map();  // "family|char" -> [family, char]
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const parent = node.parentElement;
        if (!parent || parent.closest('script, style, mjx-container')) continue;
        const chars = node.data.match(cjk);
        if (!chars) continue;
        const family = getComputedStyle(parent).fontFamily;
        for (const ch of chars) if (seen.size < 400) seen.set(family + '|' + ch, [family, ch]);
    }
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = 48;
    const ctx = canvas.getContext('2d', {willReadFrequently: true});
    const draw = (ch, family) => {
        ctx.clearRect(0, 0, 48, 48);
        ctx.font = `32px ${family}`;
        ctx.fillText(ch, 4, 36);
        const alpha = ctx.getImageData(0, 0, 48, 48).data.filter((_, i) => i % 4 === 3);
        return alpha.join(',');
    };
    const blank = draw(' ', 'sans-serif');
    const refs = new Map();
    const tofu = [];
    for (const [family, ch] of seen.values()) {
        if (!refs.has(family)) refs.set(family, [draw('\u0378', family), draw('\u{F0000}', family)]);
        const pixels = draw(ch, family);
        if (pixels === blank || refs.get(family).includes(pixels)) tofu.push(ch);
    }
    const distinct = new Set([...seen.values()].map(([, ch]) => ch)).size;
    return {checked: seen.size, distinct: distinct, tofu: [...new Set(tofu)]};
}"""


def _redirect_target(rel: str) -> str | None:
    """The target of a redirect stub (Jupyter Book writes index.html as one), else None."""
    match = re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"', (HTML / rel).read_text(), re.I)
    return match.group(1) if match else None


def _pages() -> list[str]:
    if not HTML.is_dir():
        return ["<no _build/html: run make book first>"]
    return sorted(
        p.relative_to(HTML).as_posix()
        for p in HTML.rglob("*.html")
        if not p.relative_to(HTML).parts[0].startswith(("_static", "_sources", "_images"))
    )


def _toc_docs() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    docs = [toc["root"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                docs.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(toc.get("parts", []))
    return docs


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    assert os.access(executable, os.X_OK), f"{executable} not found: run scripts/ensure_chromium.py"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def test_book_was_built() -> None:
    assert (HTML / "index.html").is_file(), "no _build/html/index.html: run `make book` first"


def test_every_toc_page_is_built_and_in_the_navigation(server: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(f"{server}/{_toc_docs()[0]}.html", wait_until="load")
    hrefs = page.eval_on_selector_all(
        ".bd-sidebar-primary a.reference.internal, .bd-sidebar-primary a.reference",
        "els => els.map(e => new URL(e.getAttribute('href'), document.baseURI).pathname)",
    )
    page.close()
    linked = {h.lstrip("/") for h in hrefs}
    docs = _toc_docs()
    missing_files = [d for d in docs if not (HTML / f"{d}.html").is_file()]
    assert not missing_files, f"pages of _toc.yml that were not built: {missing_files}"
    not_linked = [d for d in docs[1:] if f"{d}.html" not in linked]
    assert not not_linked, f"pages missing from the navigation: {not_linked}"
    assert len(_pages()) >= len(docs)


@pytest.mark.parametrize("rel", _pages())
def test_page_renders_cleanly(rel: str, server: str, browser: Any) -> None:
    assert HTML.is_dir(), rel
    target = _redirect_target(rel)
    if target is not None:  # a redirect stub: check where it points, render the target instead
        assert (HTML / Path(rel).parent / target).is_file(), f"{rel} redirects to missing {target}"
        return
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    external: list[str] = []
    failed: list[str] = []

    def on_console(msg: Any) -> None:
        if msg.type == "error" and not any(re.search(p, msg.text) for p, _ in ALLOWED_CONSOLE):
            errors.append(f"console: {msg.text}")

    def on_request(request: Any) -> None:
        if not request.url.startswith((server, "data:", "blob:", "about:")):
            external.append(request.url)

    def on_response(response: Any) -> None:
        if response.status >= 400 and not any(re.search(p, response.url) for p in ALLOWED_404):
            failed.append(f"{response.status} {response.url}")

    page.on("console", on_console)
    def on_pageerror(exc: Any) -> None:
        if not any(re.search(p, str(exc)) for p, _ in ALLOWED_CONSOLE):
            errors.append(f"uncaught: {exc}")

    page.on("pageerror", on_pageerror)
    page.on("request", on_request)
    def on_requestfailed(request: Any) -> None:
        allowed = request.url in external or any(re.search(p, request.url) for p in ALLOWED_404)
        if not allowed:
            failed.append(f"failed {request.url}")

    page.on("requestfailed", on_requestfailed)
    page.on("response", on_response)
    in_flight = _track_requests(page)
    # Abort anything that would leave this machine, so the check is the same with or without internet.
    page.route(re.compile(r"^(?!http://127\.0\.0\.1).*"), lambda route: route.abort())

    page.goto(f"{server}/{rel}", wait_until="load")
    # Lazy images load when scrolled into view: scroll through the page once.
    page.evaluate(
        """async () => {
            for (let y = 0; y < document.body.scrollHeight; y += 700) {
                window.scrollTo(0, y); await new Promise(r => setTimeout(r, 30));
            }
            window.scrollTo(0, 0);
        }"""
    )
    page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
    _settle(page, in_flight, rel)

    report = page.evaluate(
        """() => ({
            brokenImages: Array.from(document.images)
                .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.currentSrc || i.src),
            mathNodes: document.querySelectorAll('.math').length,
            untypeset: Array.from(document.querySelectorAll('.math'))
                .filter(e => !e.querySelector('mjx-container') && !e.closest('mjx-container'))
                .map(e => e.textContent.slice(0, 80)),
            texErrors: Array.from(document.querySelectorAll('mjx-merror'))
                .map(e => e.getAttribute('data-mjx-error') || e.textContent),
            widgetViews: document.querySelectorAll(
                'script[type="application/vnd.jupyter.widget-view+json"]').length,
            renderedWidgets: document.querySelectorAll('.jupyter-widgets, .widget-subarea *').length,
            // a Markdown table (a cell's text/markdown output) left as text: its '|---|' row shows
            rawTables: Array.from(document.querySelectorAll('.cell_output p, article p'))
                .filter(e => e.textContent.includes('|---|') || e.textContent.includes('—|—'))
                .map(e => e.textContent.slice(0, 80)),
        })"""
    )
    cjk = page.evaluate(CJK_PROBE)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / (rel.replace("/", "__").removesuffix(".html") + ".png")), full_page=True)
    context.close()

    problems = []
    if errors:
        problems.append(f"JavaScript errors: {errors}")
    if external:
        problems.append(f"requests that leave 127.0.0.1 (the book must render offline): {sorted(set(external))}")
    if failed:
        problems.append(f"failed requests: {failed}")
    if report["brokenImages"]:
        problems.append(f"images that did not load: {report['brokenImages']}")
    if report["untypeset"]:
        problems.append(f"math MathJax did not typeset: {report['untypeset'][:5]}")
    if report["texErrors"]:
        problems.append(f"TeX errors: {report['texErrors'][:5]}")
    if report["rawTables"]:
        problems.append(f"Markdown tables not rendered as tables: {report['rawTables'][:3]}")
    if cjk["tofu"]:
        problems.append(f"Chinese characters drawn as boxes (no CJK font? run scripts/ensure_chromium.py): "
                        f"{''.join(cjk['tofu'][:20])}")
    if report["widgetViews"] and not report["renderedWidgets"]:
        problems.append(f"{report['widgetViews']} stored widget(s) not rendered")
    assert not problems, f"{rel}:\n  " + "\n  ".join(problems)


def _track_requests(page: Any) -> dict[Any, str]:
    """The page's requests still in flight (request -> URL), kept up to date by Playwright's events.

    :func:`_settle` waits on it instead of Playwright's "networkidle" (Chromium's lifecycle event),
    which timed out on the API page on a slower machine without saying what it was waiting for."""
    in_flight: dict[Any, str] = {}
    page.on("request", lambda request: in_flight.__setitem__(request, request.url))
    page.on("requestfinished", lambda request: in_flight.pop(request, None))
    page.on("requestfailed", lambda request: in_flight.pop(request, None))
    return in_flight


def _settle(page: Any, in_flight: dict[Any, str], rel: str, quiet_s: float = 0.5,
            limit_s: float = PAGE_TIMEOUT_MS / 1000) -> None:
    """Wait until no request has been in flight for ``quiet_s`` seconds; fail naming the ones still
    pending after ``limit_s`` seconds."""
    start = time.monotonic()
    quiet_since = start
    while True:
        page.wait_for_timeout(100)  # lets Playwright deliver the request events
        now = time.monotonic()
        if in_flight:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return
        if now - start > limit_s:
            pytest.fail(f"{rel}: requests still pending after {limit_s:.0f} s: {sorted(set(in_flight.values()))[:10]}")


def _cjk_on_glossary(browser: Any, server: str) -> dict[str, Any]:
    page = browser.new_page()
    page.goto(f"{server}/book/glossary.html", wait_until="load")
    page.evaluate("() => document.fonts.ready")
    result = page.evaluate(CJK_PROBE)
    page.close()
    return result


def test_glossary_renders_its_chinese(server: str, browser: Any) -> None:
    result = _cjk_on_glossary(browser, server)
    assert result["distinct"] >= 100, f"the glossary should show its Chinese terms; found {result['distinct']} characters"
    assert not result["tofu"], f"Chinese drawn as boxes on the glossary: {''.join(result['tofu'][:20])}"


def test_chinese_check_fails_without_a_cjk_font(server: str, browser: Any, tmp_path: Path) -> None:
    """The tofu check is not vacuous: with every CJK font hidden from fontconfig, it fails the glossary."""
    import subprocess

    files = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, check=False).stdout
    fonts = sorted({line.split(":")[0].strip() for line in files.splitlines() if line.strip()})
    assert fonts, "fontconfig lists no CJK font: run scripts/ensure_chromium.py"
    rejects = "".join(f"<glob>{f}</glob>" for f in fonts)
    conf = tmp_path / "fonts.conf"
    conf.write_text(
        '<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd"><fontconfig>'
        '<include ignore_missing="yes">/etc/fonts/fonts.conf</include>'
        f"<selectfont><rejectfont>{rejects}</rejectfont></selectfont></fontconfig>"
    )
    hidden = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, check=False,
                            env={**os.environ, "FONTCONFIG_FILE": str(conf)}).stdout
    assert not hidden.strip(), f"the fontconfig file did not hide the CJK fonts: {hidden[:200]}"
    executable = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    # A second Chromium from the same Playwright instance, its fontconfig told to reject every CJK font.
    hidden_browser = browser.browser_type.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True,
                                                 env={**os.environ, "FONTCONFIG_FILE": str(conf)})
    try:
        result = _cjk_on_glossary(hidden_browser, server)
    finally:
        hidden_browser.close()
    assert result["distinct"] >= 100
    assert len(result["tofu"]) >= 0.9 * result["distinct"], (
        f"with the CJK fonts hidden, the check saw only {len(result['tofu'])} of {result['distinct']} "
        "Chinese characters as boxes: it would not catch a missing font"
    )


def test_settle_names_a_request_that_never_ends(server: str, browser: Any) -> None:
    page = browser.new_page()
    in_flight = _track_requests(page)
    held: list[Any] = []
    page.route("**/never-answered.png", lambda route: held.append(route))  # never continued: it hangs
    page.goto(f"{server}/book/glossary.html", wait_until="load")
    _settle(page, in_flight, "glossary")  # the page itself settles
    page.evaluate("() => { const i = new Image(); i.src = 'never-answered.png'; document.body.append(i); }")
    with pytest.raises(pytest.fail.Exception, match="never-answered.png"):
        _settle(page, in_flight, "glossary", limit_s=2.0)
    page.close()
