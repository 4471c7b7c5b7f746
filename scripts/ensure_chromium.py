"""Make sure a Chromium the browser check can drive is installed, with a CJK font; install Debian's if not.

Usage: python scripts/ensure_chromium.py

The check uses Playwright's Python API with the system Chromium (`/usr/bin/chromium`, or the path in
$CHROMIUM), never a browser that Playwright downloads. The glossary and appendices contain Chinese, and
the check fails a page whose Chinese characters fall back to empty boxes, so a font with CJK glyphs must
be installed too (Debian's `fonts-noto-cjk`; fontconfig must list a font for `:lang=zh`). On
Debian/Ubuntu as root, whatever is missing is installed with apt-get; elsewhere the script says what to
install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def cjk_fonts() -> list[str]:
    """Font families that fontconfig says cover Chinese (empty if none, or no fontconfig)."""
    if not shutil.which("fc-list"):
        # macOS and Windows ship CJK fonts and have no fontconfig; on Linux fontconfig comes with them.
        return [] if sys.platform.startswith("linux") else ["(the system's fonts)"]
    out = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True, check=False)
    return sorted({line.split(",")[0].strip() for line in out.stdout.splitlines() if line.strip()})


def main() -> int:
    packages = []
    if not find():
        packages += ["chromium", "fonts-dejavu-core"]
    if not cjk_fonts():
        packages += ["fonts-noto-cjk", "fontconfig"]
    if packages and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], check=True, env=env)
    path, fonts = find(), cjk_fonts()
    if path:
        print(f"chromium: {path}")
    else:
        print("The browser check needs Chromium. Install your distribution's 'chromium' package "
              "(Debian: apt-get install chromium) or set CHROMIUM to a Chrome/Chromium executable.",
              file=sys.stderr)
    if fonts:
        print(f"CJK fonts: {', '.join(fonts[:4])}{' ...' if len(fonts) > 4 else ''}")
    else:
        print("The browser check needs a font with Chinese glyphs, or the glossary renders as boxes. "
              "Install one (Debian/Ubuntu: apt-get install fonts-noto-cjk; Fedora: google-noto-sans-cjk-fonts; "
              "macOS and Windows ship one).", file=sys.stderr)
    return 0 if path and fonts else 1


if __name__ == "__main__":
    sys.exit(main())
