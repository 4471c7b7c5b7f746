"""Make sure a Chromium the browser check can drive is installed; install Debian's if not.

Usage: python scripts/ensure_chromium.py

The check uses Playwright's Python API with the system Chromium (`/usr/bin/chromium`, or the path in
$CHROMIUM), never a browser that Playwright downloads. On Debian/Ubuntu as root, a missing Chromium
is installed with apt-get; elsewhere the script says what to install.
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


def main() -> int:
    path = find()
    if path:
        print(f"chromium: {path}")
        return 0
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium",
                        "fonts-dejavu-core", "fonts-wqy-zenhei"], check=True, env=env)
        path = find()
        if path:
            print(f"chromium installed: {path}")
            return 0
    print("The browser check needs Chromium. Install your distribution's 'chromium' package "
          "(Debian: apt-get install chromium) or set CHROMIUM to a Chrome/Chromium executable.",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
