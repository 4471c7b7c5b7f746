"""Execute chapter notebooks in place, deterministically, and strip volatile metadata.

Usage: python scripts/execute_notebooks.py [NOTEBOOK ...]   (default: every chapters/*.ipynb)

Each notebook runs top to bottom in a fresh kernel of *this* interpreter's environment, with
PYTHONHASHSEED fixed, so that the stored outputs are the
ones nbval later compares against. Widget state is stored in the notebook so the rendered book can
show every explorer's initial state without a kernel.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # per cell; a chapter never trains for minutes

# Keys that change on every run (or every machine) and carry no information for a reader.
VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled")
VOLATILE_NB_METADATA = ("papermill", "vscode", "colab", "toc", "varInspector")


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop volatile metadata; keep tags, widget state and a fixed kernelspec."""
    for key in VOLATILE_NB_METADATA:
        nb.metadata.pop(key, None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    lang = nb.metadata.get("language_info", {})
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3",
                                    "codemirror_mode": {"name": "ipython", "version": 3},
                                    "file_extension": ".py", "mimetype": "text/x-python",
                                    "nbconvert_exporter": "python"} | {k: v for k, v in lang.items() if k == "name"}
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
    return nb


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
        store_widget_state=True,
    )
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.validate(nb)
    nbformat.write(clean(nb), path)
    return elapsed


def main(argv: list[str]) -> int:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")
    paths = [Path(a).resolve() for a in argv] or sorted((ROOT / "chapters").glob("*.ipynb"))
    total = 0.0
    for path in paths:
        elapsed = execute(path)
        total += elapsed
        print(f"executed {path.relative_to(ROOT)} in {elapsed:.1f} s", flush=True)
    print(f"{len(paths)} notebook(s) executed in {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
