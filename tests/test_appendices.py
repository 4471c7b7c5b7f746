"""The appendices' structure: the misconceptions notebook, the glossary, the FAQ and the running guide."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
APPENDIX_NOTEBOOKS = sorted((ROOT / "appendices").glob("*.ipynb"))
MISCONCEPTIONS = ROOT / "appendices" / "a_misconceptions.ipynb"
GLOSSARY = ROOT / "book" / "glossary.md"
FAQ = ROOT / "book" / "faq.md"
RUNNING = ROOT / "book" / "running.md"
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _src(cell: dict) -> str:
    return "".join(cell["source"])


def _toc_files() -> list[str]:
    files: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load((ROOT / "_toc.yml").read_text())["parts"])
    return files


def _labels() -> set[str]:
    """Every MyST label `(name)=` in the chapters, the appendices and the book pages."""
    found: set[str] = set()
    paths = [*ROOT.glob("chapters/*.ipynb"), *APPENDIX_NOTEBOOKS, *ROOT.glob("book/*.md")]
    for path in paths:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ipynb":
            text = "\n".join(_src(c) for c in json.loads(text)["cells"] if c["cell_type"] == "markdown")
        found |= set(re.findall(r"^\(([\w:.-]+)\)=\s*$", text, re.M))
    return found


def test_appendices_are_in_the_toc_in_their_own_part() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    parts = {part.get("caption"): [c["file"] for c in part.get("chapters", [])] for part in toc["parts"]}
    assert "Appendices" in parts, "_toc.yml has no 'Appendices' part"
    appendices = parts["Appendices"]
    for needed in ("appendices/a_misconceptions", "book/glossary", "book/faq", "book/running"):
        assert needed in appendices, f"{needed} is not in the Appendices part: {appendices}"
    assert {f"appendices/{p.stem}" for p in APPENDIX_NOTEBOOKS} <= set(_toc_files())
    for file in appendices:
        assert any((ROOT / f"{file}{ext}").is_file() for ext in (".md", ".ipynb")), f"{file} is in the toc but missing"


@pytest.mark.parametrize("path", APPENDIX_NOTEBOOKS, ids=lambda p: p.name)
def test_appendix_notebook_opens_seeds_and_is_executed(path: Path) -> None:
    cells = _cells(path)
    first_md = next(c for c in cells if c["cell_type"] == "markdown")
    assert _src(first_md).startswith("# ") and "What you will learn" in _src(first_md)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "at.set_seed(0)" in _src(code[0]), "the first code cell must call at.set_seed(0)"
    for cell in code:
        assert cell.get("execution_count") is not None, f"not executed:\n{_src(cell)[:200]}"
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"stored error output in:\n{_src(cell)[:200]}"


@pytest.mark.parametrize("path", APPENDIX_NOTEBOOKS, ids=lambda p: p.name)
def test_every_code_cell_after_the_first_asserts(path: Path) -> None:
    code = [_src(c) for c in _cells(path) if c["cell_type"] == "code"]
    silent = [src[:120] for src in code[1:] if "assert" not in src and "raise AssertionError" not in src]
    assert not silent, f"code cells that assert nothing: {silent}"


def _misconception_sections() -> list[tuple[str, str, list[str]]]:
    """(label, markdown of the section, code cells up to the next section) for every ### section."""
    sections: list[tuple[str, str, list[str]]] = []
    for cell in _cells(MISCONCEPTIONS):
        src = _src(cell)
        if cell["cell_type"] == "markdown" and re.search(r"^### ", src, re.M):
            label = re.search(r"^\((misc-[\w-]+)\)=\s*\n(?:.*\n)*?### ", src, re.M)
            sections.append((label.group(1) if label else "", src, []))
        elif cell["cell_type"] == "markdown" and re.search(r"^## ", src, re.M) and sections:
            sections.append(("", "", []))  # a new theme ends the previous section
        elif cell["cell_type"] == "code" and sections:
            sections[-1][2].append(src)
    return [s for s in sections if s[1]]


def test_every_misconception_has_claim_reason_correction_and_a_checking_cell() -> None:
    sections = _misconception_sections()
    assert len(sections) >= 20, f"only {len(sections)} misconception sections"
    labels = [label for label, _, _ in sections]
    assert all(labels), "every misconception section needs a (misc-...)= label"
    assert len(labels) == len(set(labels)), "duplicate labels"
    for label, text, code in sections:
        for part in ("**The claim.**", "**Why it is wrong.**", "**The correct statement.**"):
            assert part in text, f"{label}: missing {part}"
        assert any("assert" in c for c in code), f"{label}: no code cell that asserts the correction"


def test_the_required_misconceptions_are_covered() -> None:
    labels = {label for label, _, _ in _misconception_sections()}
    required = {
        "misc-backward-attention", "misc-gradient-clipping", "misc-saves-computation", "misc-any-length",
        "misc-heads-parameters", "misc-attention-rnn", "misc-origin", "misc-worked-examples",
        "misc-pe-concatenated", "misc-keras-arguments", "misc-keras-call", "misc-keras-vs-package", "misc-tabular",
    }
    assert required <= labels, f"missing: {sorted(required - labels)}"


def test_keras_backend_is_chosen_before_keras_is_imported() -> None:
    code = [_src(c) for c in _cells(MISCONCEPTIONS) if c["cell_type"] == "code"]
    assert 'os.environ["KERAS_BACKEND"] = "torch"' in code[0]
    first_import = next(i for i, src in enumerate(code) if re.search(r"^import keras|^from keras", src, re.M))
    assert first_import > 0


def _glossary_entries() -> list[tuple[list[str], str]]:
    text = GLOSSARY.read_text(encoding="utf-8")
    block = re.search(r"^```\{glossary\}\n(.*?)^```", text, re.S | re.M)
    assert block, "book/glossary.md has no {glossary} block"
    entries: list[tuple[list[str], str]] = []
    terms: list[str] = []
    for line in block.group(1).splitlines():
        if not line.strip() or line.startswith(":"):
            continue
        if line[0].isspace():
            if terms:
                entries.append((terms, line.strip()))
                terms = []
            else:
                entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
        else:
            terms.append(line.strip())
    return entries


def test_glossary_has_sixty_bilingual_entries_each_with_its_chapter() -> None:
    entries = _glossary_entries()
    assert len(entries) >= 60, f"only {len(entries)} glossary entries"
    all_terms = [t.lower() for terms, _ in entries for t in terms]
    assert len(all_terms) == len(set(all_terms)), "a term is defined twice"
    for terms, definition in entries:
        assert CJK.search(definition), f"{terms}: no Chinese term"
        docs = re.findall(r"\{doc\}`([^`<]+)`", definition)
        assert docs, f"{terms}: no chapter link"
        for doc in docs:
            target = (GLOSSARY.parent / doc).resolve()
            assert any(target.with_suffix(ext).is_file() for ext in (".md", ".ipynb")), f"{terms}: {doc} does not exist"


def test_glossary_covers_the_terms_the_audit_found_missing() -> None:
    defined = {t.lower() for terms, _ in _glossary_entries() for t in terms}
    for term in ("scaled dot-product attention", "context vector", "attention head", "transformer",
                 "position-wise feed-forward network", "residual connection", "layer normalization",
                 "global attention", "local attention", "interpretability", "permutation equivariance",
                 "gradient clipping", "mixed precision", "flashattention", "sinusoidal positional encoding",
                 "rotary position embedding", "alibi", "forward pass", "backpropagation"):
        assert term in defined, f"glossary lacks {term!r}"


def test_faq_answers_link_to_chapters() -> None:
    text = FAQ.read_text(encoding="utf-8")
    questions = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(questions) >= 8
    for q in questions:
        assert re.search(r"\{(doc|ref)\}`", q), f"FAQ answer without a link: {q.splitlines()[0]}"
    for topic in ("sqrt{d_k}", "several heads", "positions", "How long", "interpretable", "RNN", "FlashAttention",
                  "library layers"):
        assert topic in text, f"FAQ lacks the question about {topic!r}"


@pytest.mark.parametrize("page", [FAQ, GLOSSARY, RUNNING], ids=lambda p: p.name)
def test_refs_in_appendix_pages_name_existing_labels(page: Path) -> None:
    refs = set(re.findall(r"\{ref\}`(?:[^`<]*<)?([\w:.-]+)>?`", page.read_text(encoding="utf-8")))
    missing = refs - _labels()
    assert not missing, f"{page.name}: {{ref}} to unknown labels {sorted(missing)}"


def test_running_guide_has_the_gpu_estimate_label_and_the_real_offline_message() -> None:
    text = RUNNING.read_text(encoding="utf-8")
    assert "(gpu-cost-estimate)=" in text
    import attn_tutorial as at

    # The command line prints "attn-tutorial: error: " and the message of the data_dir() error.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTN_TUTORIAL_DATA", "/nonexistent")
        with pytest.raises(FileNotFoundError) as err:
            at.data_dir()
    message = f"attn-tutorial: error: {err.value}"
    assert message in text, f"book/running.md should quote the package's message:\n{message}"
