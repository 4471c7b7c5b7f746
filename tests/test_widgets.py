"""Explorers (attn_tutorial.widgets) build without a browser and recompute when a control moves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attn_tutorial.kernel_regression import make_regression_data, nadaraya_watson  # noqa: E402
from attn_tutorial.widgets import Explorer, kernel_regression_explorer  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-12)  # the explorer computes in float64


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_explorer_builds_and_updates():
    x, y = make_regression_data(20, seed=0)
    ex = kernel_regression_explorer(x, y, query=2.0, bandwidth=0.5)
    assert isinstance(ex, widgets.Widget) and isinstance(ex, Explorer)
    assert set(ex.controls) == {"query", "bandwidth", "kernel"}
    assert ex.output in ex.children and ex.readout in ex.children
    assert len(plt.get_fignums()) == 0  # figures are closed after display

    def expected(q, h, kernel="gaussian"):
        est, _ = nadaraya_watson(torch.tensor([q], dtype=torch.float64), x.double(), y.double(), h, kernel)
        return float(est[0])

    torch.testing.assert_close(ex.state["estimate"], expected(2.0, 0.5), **TOL)
    first_readout = ex.readout.value
    ex.controls["query"].value = 4.0
    assert ex.state["query"] == 4.0
    torch.testing.assert_close(ex.state["estimate"], expected(4.0, 0.5), **TOL)
    assert ex.readout.value != first_readout and f"{ex.state['estimate']:.3f}" in ex.readout.value
    ex.controls["bandwidth"].value = 2.0
    torch.testing.assert_close(ex.state["estimate"], expected(4.0, 2.0), **TOL)
    ex.controls["kernel"].value = "epanechnikov"
    torch.testing.assert_close(ex.state["estimate"], expected(4.0, 2.0, "epanechnikov"), **TOL)
    torch.testing.assert_close(float(ex.state["weights"].sum()), 1.0, **TOL)
    assert ex.state["curve"].shape == ex.state["grid"].shape


def test_explorer_reports_zero_weight_without_nan():
    x = torch.tensor([0.0, 1.0, 4.0])
    y = torch.tensor([1.0, 2.0, 3.0])
    ex = kernel_regression_explorer(x, y, query=2.5, bandwidth=0.5, kernel="boxcar", truth=None)
    assert ex.state["total_weight"] == 0 and ex.state["estimate"] == 0.0
    assert "no key" in ex.readout.value
    assert torch.isfinite(ex.state["curve"]).all()


def test_explorer_default_data_and_errors():
    ex = kernel_regression_explorer()
    assert ex.state["weights"].shape == (50,)
    with pytest.raises(ValueError, match="keys and values"):
        kernel_regression_explorer(torch.zeros(3), None)
    with pytest.raises(ValueError, match="shape"):
        kernel_regression_explorer(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="kernel"):
        kernel_regression_explorer(kernel="triangle")
    with pytest.raises(ValueError, match="query"):
        kernel_regression_explorer(query=100.0)
    with pytest.raises(ValueError, match="bandwidth"):
        kernel_regression_explorer(bandwidth=0.0)
