"""The project's own consistency: dependencies, table of contents, notebooks as committed."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
# conda-forge names that differ from PyPI's
CONDA_NAMES = {"torch": "pytorch"}
REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*([^;#]*?)\s*(?:;.*)?(?:#.*)?$")


def _parse(requirement: str) -> tuple[str, str]:
    match = REQ.match(requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    name, spec = match.groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        wanted += extra
    expected = {}
    for req in wanted:
        name, spec = _parse(req)
        expected[CONDA_NAMES.get(name, name)] = spec
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            name, spec = _parse(dep)
            if name not in {"python", "pip"}:
                conda[name] = spec
    assert conda == expected, (
        "environment.yml and pyproject.toml disagree:\n"
        f"  only in pyproject: {sorted(set(expected) - set(conda))}\n"
        f"  only in environment.yml: {sorted(set(conda) - set(expected))}\n"
        f"  different versions: {sorted(k for k in set(conda) & set(expected) if conda[k] != expected[k])}"
    )
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == [f"python{project['requires-python']}"]


def _toc_files(node: object) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        if "file" in node:
            found.append(node["file"])
        for value in node.values():
            found += _toc_files(value)
    elif isinstance(node, list):
        for value in node:
            found += _toc_files(value)
    return found


def test_toc_lists_every_chapter_and_only_existing_files() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
    files = [toc["root"], *_toc_files(toc.get("parts", []))]
    for entry in files:
        candidates = [ROOT / f"{entry}{ext}" for ext in ("", ".md", ".ipynb")]
        assert any(c.is_file() for c in candidates), f"_toc.yml names {entry!r}, which does not exist"
    listed = {f for f in files if f.startswith("chapters/")}
    on_disk = {f"chapters/{p.stem}" for p in CHAPTERS}
    assert listed == on_disk, f"chapters not in the toc: {on_disk - listed}; missing files: {listed - on_disk}"
    assert len(files) == len(set(files)), "a file is listed twice in _toc.yml"


def test_chapter_file_names_are_numbered_in_order() -> None:
    numbers = [int(p.name.split("_", 1)[0]) for p in CHAPTERS]
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", p.name) for p in CHAPTERS)
    assert numbers == list(range(1, len(CHAPTERS) + 1))


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_notebook_is_committed_executed_and_clean(path: Path) -> None:
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, "a chapter without code"
    # Executed top to bottom in one fresh kernel, as `make notebooks` does.
    counts = [c["execution_count"] for c in code if c["source"]]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: not executed in order: {counts}"
    assert any(c["outputs"] for c in code), f"{path.name} is committed without outputs (run make notebooks)"
    errors = [o for c in code for o in c["outputs"] if o.get("output_type") == "error"]
    assert not errors, f"{path.name} stores an error output"
    # No volatile metadata.
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in cells:
        assert "execution" not in cell.get("metadata", {}), f"{path.name}: timing metadata left in"
    # Structure the style guide asks for.
    first_md = "".join(next(c for c in cells if c["cell_type"] == "markdown")["source"])
    title = re.sub(r"^\s*\([\w-]+\)=\s*\n", "", first_md)  # a MyST label may precede the title
    assert title.lstrip().startswith("# "), f"{path.name}: the first markdown cell must hold the title"
    assert "What you will learn" in first_md or "What you will learn" in "".join(
        "".join(c["source"]) for c in cells[:3] if c["cell_type"] == "markdown"
    )
    assert "set_seed(" in "".join(code[0]["source"]), f"{path.name}: the first code cell must seed everything"
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert re.search(r"^#+ .*Exercises", markdown, re.M), f"{path.name}: no Exercises section"
    assert "{dropdown}" in markdown or ":class: dropdown" in markdown, f"{path.name}: solutions not hidden"
    # A cell that displays a widget cannot be compared by nbval outside a browser: it is tagged.
    widget_mime = "application/vnd.jupyter.widget-view+json"
    for cell in code:
        if any(widget_mime in o.get("data", {}) for o in cell["outputs"]):
            assert "nbval-ignore-output" in cell["metadata"].get("tags", []), (
                f"{path.name}: widget cell without the nbval-ignore-output tag:\n{''.join(cell['source'])[:200]}"
            )
    has_widget = any(widget_mime in o.get("data", {}) for c in code for o in c["outputs"])
    has_figure = any("image/png" in o.get("data", {}) for c in code for o in c["outputs"])
    assert has_figure, f"{path.name} has no figure"
    if has_widget:
        assert "application/vnd.jupyter.widget-state+json" in nb["metadata"].get("widgets", {}), (
            f"{path.name}: widget state not stored; the rendered book would show an empty box"
        )


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_notebook_citations_exist_in_bibliography(path: Path) -> None:
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    text = path.read_text()
    cited = set()
    for group in re.findall(r"\{cite(?::[tp])?\}`([^`]+)`", text):
        cited |= {k.strip() for k in group.split(",")}
    assert cited <= keys, f"{path.name} cites unknown keys: {sorted(cited - keys)}"


# Chapters whose exercises are graded and executed (issue 12): 3-6 exercises, each marked ★, ★★ or ★★★,
# and every solution that computes something is a code cell tagged `solution` and `hide-input` after the
# Exercises heading (nbval runs it; the rendered book folds it). Extend this as chapters are converted.
GRADED_CHAPTERS = frozenset(int(p.name[:2]) for p in CHAPTERS)  # every chapter, 1-13 and Part IV (issue 12)
EXERCISE_START = re.compile(r"^(?:\*\*)?(\d+)\.\s")  # "1. ..." or "**1. Title** ..."
DIFFICULTY = re.compile(r"(?<!★)★{1,3}(?!★)")


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def exercise_problems(nb: dict) -> list[str]:
    """What keeps a notebook's Exercises section from being graded and executed (empty: nothing)."""
    cells = nb["cells"]
    headings = [
        i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and re.search(r"^#+ .*Exercises", _source(c), re.M)
    ]
    if len(headings) != 1:
        return [f"expected one Exercises heading, found {len(headings)}"]
    start = headings[0]
    problems: list[str] = []
    numbers, python_blocks = [], 0
    for cell in cells[start:]:
        if cell["cell_type"] != "markdown":
            continue
        in_directive = False
        for line in _source(cell).splitlines():
            if line.startswith(":::{"):
                in_directive = True
            elif line.strip() == ":::":
                in_directive = False
            elif not in_directive and (m := EXERCISE_START.match(line)):
                numbers.append(int(m.group(1)))
                if not DIFFICULTY.search(line):
                    problems.append(f"exercise {m.group(1)} has no difficulty mark (★, ★★ or ★★★): {line[:60]!r}")
            if line.lstrip().startswith("```python"):
                python_blocks += 1
    if not 3 <= len(numbers) <= 6:
        problems.append(f"{len(numbers)} exercises, expected 3 to 6")
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"exercises numbered {numbers}, expected 1, 2, ...")
    if python_blocks:
        problems.append(f"{python_blocks} solution(s) written as ```python in Markdown: make them tagged code cells")
    solutions = [i for i, c in enumerate(cells) if "solution" in c.get("metadata", {}).get("tags", [])]
    if not solutions:
        problems.append("no code cell tagged `solution`")
    for i in solutions:
        cell = cells[i]
        if cell["cell_type"] != "code":
            problems.append(f"cell {i} is tagged `solution` but is not a code cell")
        if "hide-input" not in cell["metadata"].get("tags", []):
            problems.append(f"solution cell {i} lacks the `hide-input` tag (the book would show the answer)")
        if i < start:
            problems.append(f"solution cell {i} comes before the Exercises heading (cell {start})")
    return problems


GRADED = [p for p in CHAPTERS if int(p.name[:2]) in GRADED_CHAPTERS]


def test_graded_chapters_exist() -> None:
    assert {int(p.name[:2]) for p in GRADED} == set(GRADED_CHAPTERS)


@pytest.mark.parametrize("path", GRADED, ids=[p.stem for p in GRADED])
def test_exercises_are_graded_and_solutions_are_executed_cells(path: Path) -> None:
    problems = exercise_problems(json.loads(path.read_text()))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_exercise_check_fails_on_unconverted_exercises() -> None:
    # The check must be able to fail: break a converted chapter in each way it guards against.
    nb = json.loads(GRADED[0].read_text())
    solution_cells = [c for c in nb["cells"] if "solution" in c.get("metadata", {}).get("tags", [])]
    unmarked = json.loads(json.dumps(nb))
    for cell in unmarked["cells"]:
        cell["source"] = _source(cell).replace("★", "")
    assert any("difficulty" in p for p in exercise_problems(unmarked))
    unfolded = json.loads(json.dumps(nb))
    for cell in unfolded["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "solution" in tags:
            tags.remove("hide-input")
    assert solution_cells and any("hide-input" in p for p in exercise_problems(unfolded))
    early = json.loads(json.dumps(nb))
    early["cells"].insert(1, json.loads(json.dumps(solution_cells[0])))
    assert any("before the Exercises heading" in p for p in exercise_problems(early))
    # ... and the pre-issue-12 style (unmarked exercises, code solutions inside a dropdown) fails.
    old_style = {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "## Exercises\n\n1. Do this.\n\n2. And that.\n"},
        {"cell_type": "markdown", "metadata": {}, "source": ":::{dropdown} Solution\n```python\nx = 1\n```\n:::\n"},
    ]}
    assert len(exercise_problems(old_style)) >= 4


def test_exercise_check_fails_on_a_real_unconverted_chapter() -> None:
    # Chapter 1 as committed before issue 12: ungraded exercises, solutions as ```python in dropdowns.
    import subprocess

    old = subprocess.run(
        ["git", "show", "cc3c586:chapters/01_what_is_attention.ipynb"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )
    if old.returncode != 0:
        pytest.skip("needs the git history")
    problems = exercise_problems(json.loads(old.stdout))
    assert any("difficulty" in p for p in problems) and any("```python" in p for p in problems), problems


def test_no_data_or_third_party_javascript_is_tracked() -> None:
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    data = [f for f in tracked if re.search(r"(train|val|test_20\d\d_\w+)\.(de|en|fr)(\.gz)?$", f)]
    js = [f for f in tracked if f.endswith(".js")]
    assert not data, f"Multi30K files are tracked: {data}"
    assert not js, f"third-party JavaScript is tracked: {js}"


def test_api_page_documents_every_public_module() -> None:
    import attn_tutorial

    package = ROOT / "attn_tutorial"
    modules = sorted(p.stem for p in package.glob("*.py") if not p.stem.startswith("_"))
    api = (ROOT / "book" / "api.md").read_text()
    # eval-rst: autodoc's output is reStructuredText and must be parsed as such, not as MyST.
    documented = set(re.findall(r"```\{eval-rst\}\n\.\. automodule:: attn_tutorial\.(\w+)\n```", api))
    assert documented == set(modules), (
        f"book/api.md misses {sorted(set(modules) - documented)}; lists unknown {sorted(documented - set(modules))}"
    )
    # Every public name of every module is re-exported at the top level (the CLI's entry points
    # are not library API and stay in attn_tutorial.cli).
    for name in modules:
        if name == "cli":
            continue
        module = getattr(attn_tutorial, name)
        exported = getattr(module, "__all__", [])
        missing = [n for n in exported if getattr(attn_tutorial, n, None) is not getattr(module, n)]
        assert not missing, f"attn_tutorial.{name} names not re-exported from attn_tutorial: {missing}"


def test_docstring_citations_use_rest_roles_and_exist() -> None:
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    for path in sorted((ROOT / "attn_tutorial").glob("*.py")):
        text = path.read_text()
        # Docstrings are reStructuredText under autodoc: MyST's {cite} would render as literal text.
        assert "{cite" not in text, f"{path.name}: use :cite:p:`key` in docstrings, not MyST's {{cite}}"
        cited = {k.strip() for g in re.findall(r":cite:[tp]:`([^`]+)`", text) for k in g.split(",")}
        assert cited <= keys, f"{path.name} cites unknown keys: {sorted(cited - keys)}"
