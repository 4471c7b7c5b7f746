"""Seeds, devices and paths."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from attn_tutorial import DATA_ENV_VAR, autocast_dtype, data_dir, default_device, repo_root, set_seed


def test_set_seed_makes_python_numpy_and_torch_repeat() -> None:
    def draw() -> tuple[float, float, torch.Tensor, torch.Tensor]:
        g = set_seed(123)
        return random.random(), float(np.random.rand()), torch.rand(3), torch.rand(3, generator=g)

    first, second = draw(), draw()
    assert first[0] == second[0] and first[1] == second[1]
    torch.testing.assert_close(first[2], second[2], rtol=0, atol=0)
    torch.testing.assert_close(first[3], second[3], rtol=0, atol=0)
    set_seed(124)
    assert random.random() != first[0]


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_set_seed_rejects_bad_seeds(bad: object) -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        set_seed(bad)  # type: ignore[arg-type]


def test_default_device_prefers_accelerators_and_honours_overrides() -> None:
    device = default_device()
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif torch.backends.mps.is_available():
        assert device.type == "mps"
    else:
        assert device == torch.device("cpu")
    assert default_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_default_device_refuses_missing_cuda() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        default_device("cuda")


def test_autocast_dtype_is_none_on_cpu() -> None:
    assert autocast_dtype("cpu") is None
    if torch.cuda.is_available():
        assert autocast_dtype("cuda") in {torch.bfloat16, torch.float16}


def test_repo_root_is_found_from_the_package_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    root = repo_root()
    assert root is not None and (root / "_toc.yml").is_file() and (root / "chapters").is_dir()


def test_data_dir_uses_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert data_dir() == tmp_path.resolve()


def test_data_dir_rejects_a_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    monkeypatch.setenv(DATA_ENV_VAR, str(missing))
    with pytest.raises(FileNotFoundError, match=f"{DATA_ENV_VAR}=.*does not name a directory"):
        data_dir()


def test_data_dir_falls_back_to_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = data_dir(create=True)
    assert path == tmp_path / "attn_tutorial" and path.is_dir()
