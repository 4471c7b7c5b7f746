"""The package as a whole (attn_tutorial/__init__.py): every public name reachable, a light import."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import attn_tutorial as at

HEAVY = ("matplotlib", "ipywidgets", "IPython", "sacrebleu", "tokenizers")
LAZY_MODULES = sorted(set(at._EXPORTS) - set(at.EAGER))


def _modules_after(code: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.splitlines()[-1])


def test_the_export_table_is_every_module_all() -> None:
    for module, names in at._EXPORTS.items():
        assert tuple(importlib.import_module(f"attn_tutorial.{module}").__all__) == names, (
            f"attn_tutorial/__init__.py's _EXPORTS[{module!r}] differs from attn_tutorial.{module}.__all__: update the table"
        )


def test_every_public_module_is_in_the_table() -> None:
    files = {p.stem for p in Path(at.__file__).parent.glob("*.py") if not p.stem.startswith("_")}
    assert files - {"cli"} == set(at._EXPORTS)  # the CLI is a program, not a library of names


def test_every_public_name_is_the_object_of_its_module() -> None:
    for module, names in at._EXPORTS.items():
        mod = importlib.import_module(f"attn_tutorial.{module}")
        for name in names:
            if at._WHERE[name] == module:  # a name two modules export (ChecksumError) comes from the last
                assert getattr(at, name) is getattr(mod, name), f"at.{name}"
    assert len(at.__all__) == len(set(at.__all__))


def test_star_import_and_dir_see_every_name() -> None:
    namespace: dict[str, object] = {}
    exec("from attn_tutorial import *", namespace)
    assert set(at.__all__) <= set(namespace) and set(at.__all__) <= set(dir(at))


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        at.no_such_name  # noqa: B018


def test_import_loads_torch_and_the_model_code_only() -> None:
    loaded = _modules_after("import attn_tutorial")
    assert "torch" in loaded and "attn_tutorial.transformer" in loaded and "attn_tutorial.seq2seq" in loaded
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not [m for m in loaded if m.removeprefix("attn_tutorial.") in LAZY_MODULES]


def test_a_lazy_name_imports_its_module_on_first_use() -> None:
    loaded = _modules_after("import attn_tutorial as at\nat.corpus_bleu")
    assert "attn_tutorial.metrics" in loaded and "sacrebleu" in loaded and "matplotlib" not in loaded


def test_the_command_line_parser_loads_no_plotting_widgets_or_metrics() -> None:
    loaded = _modules_after("from attn_tutorial.cli import build_parser\nbuild_parser()")
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]
    for module in ("plotting", "widgets", "metrics", "run", "kernel_regression", "attention_explorer"):
        assert f"attn_tutorial.{module}" not in loaded
