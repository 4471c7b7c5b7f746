"""The attn-tutorial console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attn_tutorial import __version__
from attn_tutorial.cli import main


def test_info_prints_versions_device_and_data_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTN_TUTORIAL_DATA", str(tmp_path))
    assert main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"attn_tutorial {__version__}" in out
    assert torch.__version__ in out
    assert "device        cpu" in out
    assert str(tmp_path.resolve()) in out


def test_info_reports_a_bad_data_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTN_TUTORIAL_DATA", str(tmp_path / "missing"))
    assert main(["info", "--device", "cpu"]) == 2
    assert "ATTN_TUTORIAL_DATA" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_unavailable_device_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["info", "--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_console_script_and_module_entry_points_run() -> None:
    script = Path(sys.executable).parent / "attn-tutorial"
    commands = [[sys.executable, "-m", "attn_tutorial", "--version"]]
    if script.exists() or shutil.which("attn-tutorial"):
        commands.append([str(script if script.exists() else "attn-tutorial"), "--version"])
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60)
        assert done.stdout.strip() == f"attn-tutorial {__version__}"
