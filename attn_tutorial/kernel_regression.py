"""Attention pooling as Nadaraya-Watson kernel regression (chapter "What is attention?").

Given training pairs :math:`(x_i, y_i)` -- the *keys* and *values* -- the Nadaraya-Watson estimator
(Nadaraya, 1964; Watson, 1964) predicts at a *query* :math:`q` a weighted average of the values,

.. math::

    f(q) = \\sum_{i=1}^{n} \\alpha(q, x_i)\\, y_i, \\qquad
    \\alpha(q, x_i) = \\frac{K\\big((q - x_i)/h\\big)}{\\sum_{j=1}^{n} K\\big((q - x_j)/h\\big)},

with a kernel :math:`K \\ge 0` and a bandwidth :math:`h > 0`. The weights are non-negative and sum to
one: this is *attention pooling*, the oldest member of the family of functions this book is about.
For the Gaussian kernel :math:`K(u) = \\exp(-u^2/2)` the weights are a softmax,
:math:`\\alpha(q, x_i) = \\mathrm{softmax}_i\\big(-(q - x_i)^2 / (2h^2)\\big)`, which is how
:func:`nadaraya_watson` computes them (numerically stable for any bandwidth).

Inputs are one-dimensional positions (queries and keys are scalars); values may be scalars or
vectors. Everything is batch first: any leading dimensions broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "KERNELS",
    "gaussian_kernel",
    "boxcar_kernel",
    "epanechnikov_kernel",
    "target_function",
    "make_regression_data",
    "nadaraya_watson",
    "average_pooling",
    "leave_one_out_mask",
    "NadarayaWatson",
    "FitHistory",
    "fit_bandwidth",
]

KernelFn = Callable[[Tensor], Tensor]


def gaussian_kernel(u: Tensor) -> Tensor:
    """The Gaussian kernel :math:`K(u) = \\exp(-u^2/2) / \\sqrt{2\\pi}` (a standard normal density).

    Nadaraya-Watson weights do not depend on the constant factor, which cancels in the
    normalization. Shape: any; returns a tensor of the same shape.
    """
    return torch.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi)


def boxcar_kernel(u: Tensor) -> Tensor:
    """The boxcar (uniform) kernel :math:`K(u) = \\tfrac12\\,[\\,|u| \\le 1\\,]`.

    With it, Nadaraya-Watson averages the values of the keys within one bandwidth of the query
    (a moving average). Shape: any; returns a tensor of the same shape.
    """
    # The second term is 0 but keeps the autograd graph, so the derivative is the true one: 0 almost
    # everywhere (the clamp keeps it finite for infinite u).
    return 0.5 * (u.abs() <= 1.0).to(u.dtype) + 0.0 * u.clamp(-1.0, 1.0)


def epanechnikov_kernel(u: Tensor) -> Tensor:
    """The Epanechnikov kernel :math:`K(u) = \\tfrac34 \\max(0, 1 - u^2)`.

    Compactly supported like the boxcar, but weights fall off smoothly; it minimises the
    asymptotic mean integrated squared error among non-negative kernels (Hastie et al., 2009,
    section 6.1). Shape: any; returns a tensor of the same shape.
    """
    return 0.75 * torch.clamp(1.0 - u * u, min=0.0)


#: The kernels :func:`nadaraya_watson` accepts by name.
KERNELS: dict[str, KernelFn] = {
    "gaussian": gaussian_kernel,
    "boxcar": boxcar_kernel,
    "epanechnikov": epanechnikov_kernel,
}


def target_function(x: Tensor) -> Tensor:
    """The chapter's ground truth :math:`f(x) = 2\\sin(x) + x^{0.8}` (defined for :math:`x \\ge 0`)."""
    return 2.0 * torch.sin(x) + x.clamp(min=0.0).pow(0.8)


def make_regression_data(
    n: int = 50,
    *,
    noise: float = 0.5,
    low: float = 0.0,
    high: float = 5.0,
    seed: int | torch.Generator | None = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """A noisy one-dimensional regression data set: :math:`y = 2\\sin(x) + x^{0.8} + \\varepsilon`.

    The inputs are drawn uniformly from ``[low, high)`` and sorted; the noise is
    :math:`\\varepsilon \\sim \\mathcal N(0, \\texttt{noise}^2)`.

    Args:
        n: number of pairs (at least 1).
        noise: standard deviation of the Gaussian noise (at least 0).
        low, high: the interval the inputs are drawn from, ``0 <= low < high``.
        seed: an ``int`` seed, a ``torch.Generator``, or ``None`` for PyTorch's global generator.
        dtype: floating dtype of the returned tensors.

    Returns:
        ``(x, y)``, the sorted inputs (keys) and the noisy targets (values).

    Shape:
        ``x``: ``(n,)``; ``y``: ``(n,)``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    if not 0 <= low < high:
        raise ValueError(f"need 0 <= low < high (x**0.8 needs x >= 0), got low={low!r}, high={high!r}")
    if isinstance(seed, torch.Generator):
        gen: torch.Generator | None = seed
    elif seed is None:
        gen = None
    else:
        gen = torch.Generator().manual_seed(int(seed))
    x, _ = torch.sort(torch.rand(n, generator=gen, dtype=torch.float64) * (high - low) + low)
    eps = torch.randn(n, generator=gen, dtype=torch.float64) * noise
    y = target_function(x) + eps
    return x.to(dtype), y.to(dtype)


def _check_bandwidth(bandwidth: float | Tensor) -> None:
    if isinstance(bandwidth, Tensor):
        if not torch.is_floating_point(bandwidth):
            raise TypeError(f"bandwidth must be a floating tensor, got dtype {bandwidth.dtype}")
        bad = ~(torch.isfinite(bandwidth) & (bandwidth > 0))
        if bool(bad.any()):
            raise ValueError(
                "bandwidth must be finite and > 0 everywhere, got a tensor of shape "
                f"{tuple(bandwidth.shape)} with {int(bad.sum())} non-positive or non-finite entries"
            )
    else:
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)):
            raise TypeError(f"bandwidth must be a float or a tensor, got {type(bandwidth).__name__}")
        if not (math.isfinite(bandwidth) and bandwidth > 0):
            raise ValueError(f"bandwidth must be finite and > 0, got {bandwidth!r}")


def _resolve_kernel(kernel: str | KernelFn) -> KernelFn | None:
    """``None`` means "the Gaussian, computed as a softmax"."""
    if callable(kernel):
        return kernel
    if kernel == "gaussian":
        return None
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)} or a callable, got {kernel!r}")
    return KERNELS[kernel]


def leave_one_out_mask(n: int, *, device: torch.device | str | None = None) -> Tensor:
    """Boolean mask that lets query ``i`` attend to every key except key ``i``.

    ``True`` = may attend (the book's convention). Used to score a bandwidth by leave-one-out
    cross-validation, where each training point is predicted from the *other* points.

    Shape:
        returns ``(n, n)``, ``False`` on the diagonal.
    """
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (a leave-one-out mask needs another key), got {n!r}")
    return ~torch.eye(n, dtype=torch.bool, device=device)


def nadaraya_watson(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    bandwidth: float | Tensor = 1.0,
    kernel: str | KernelFn = "gaussian",
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Nadaraya-Watson kernel regression, i.e. attention pooling with a fixed kernel.

    .. math::

        \\alpha_{ji} = \\frac{K((q_j - x_i)/h)}{\\sum_{l} K((q_j - x_l)/h)}, \\qquad
        \\hat f(q_j) = \\sum_i \\alpha_{ji}\\, v_i .

    For ``kernel="gaussian"`` the weights are computed in the equivalent softmax form
    :math:`\\alpha_{ji} = \\mathrm{softmax}_i(-(q_j - x_i)^2 / 2h^2)`, after subtracting each
    query's smallest squared distance. That keeps it exact for any bandwidth: as
    :math:`h \\to 0` it becomes nearest-neighbour regression (ties share the weight), as
    :math:`h \\to \\infty` average pooling, and it never divides by an underflowed zero.

    Zero total weight: a query whose row of the mask is all ``False``, or, with a compactly
    supported kernel (boxcar, Epanechnikov), a query with no key within one bandwidth, has all
    its weights set to 0 and its estimate set to 0 (never NaN). Detect such queries with
    ``weights.sum(-1) == 0``.

    Args:
        queries: query positions :math:`q_j`.
        keys: key positions :math:`x_i` (the training inputs).
        values: values :math:`v_i` (the training targets), scalars or vectors.
        bandwidth: :math:`h > 0`; a float or a tensor broadcastable to ``(..., Lq, n)`` (a 0-d
            tensor that requires grad can be learned, see :class:`NadarayaWatson`).
        kernel: ``"gaussian"``, ``"boxcar"``, ``"epanechnikov"``, or a callable ``K(u)`` returning
            non-negative values of the same shape as ``u``.
        mask: optional boolean tensor broadcastable to ``(..., Lq, n)``; ``True`` = the query
            may attend to that key, ``False`` = the key is ignored.

    Returns:
        ``(estimate, weights)``.

    Shape:
        - queries: ``(..., Lq)``; keys: ``(..., n)``
        - values: ``(..., n)`` (scalar values) or ``(..., n, Dv)`` (vector values)
        - estimate: ``(..., Lq)`` or ``(..., Lq, Dv)``, following ``values``
        - weights: ``(..., Lq, n)``, each row sums to 1 (or is all 0, see above)

    References:
        E. A. Nadaraya (1964), On estimating regression; G. S. Watson (1964), Smooth regression
        analysis.
    """
    for name, t in (("queries", queries), ("keys", keys), ("values", values)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not torch.is_floating_point(t):
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
        if t.dim() < 1:
            raise ValueError(f"{name} must have at least 1 dimension, got shape {tuple(t.shape)}")
    n = keys.shape[-1]
    if n == 0:
        raise ValueError("keys must hold at least one key, got shape " f"{tuple(keys.shape)}")
    vector_values = values.dim() == keys.dim() + 1
    if values.dim() not in (keys.dim(), keys.dim() + 1) or values.shape[keys.dim() - 1] != n:
        raise ValueError(
            f"values must have shape (..., n) or (..., n, Dv) with n={n} keys (keys shape "
            f"{tuple(keys.shape)}), got values shape {tuple(values.shape)}"
        )
    _check_bandwidth(bandwidth)
    kernel_fn = _resolve_kernel(kernel)

    diff = queries.unsqueeze(-1) - keys.unsqueeze(-2)  # (..., Lq, n)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}")
        try:
            torch.broadcast_shapes(mask.shape, diff.shape)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the weights' shape "
                f"(..., Lq, n) = {tuple(diff.shape)}"
            ) from None
        mask = mask.to(diff.device)

    if kernel_fn is None:  # Gaussian, as a softmax of scores -(q - x)^2 / (2 h^2)
        sq = diff * diff  # (..., Lq, n)
        # Softmax is shift invariant: subtract each query's smallest allowed squared distance, so
        # the nearest key scores exactly 0 however small the bandwidth (no all -inf rows).
        allowed_sq = sq.detach() if mask is None else sq.detach().masked_fill(~mask, math.inf)
        nearest = allowed_sq.amin(dim=-1, keepdim=True)  # (..., Lq, 1)
        empty = torch.isinf(nearest)  # no key may be attended to
        nearest = nearest.masked_fill(empty, 0.0)
        scores = -((sq - nearest) / (2.0 * bandwidth)) / bandwidth  # h^2 would underflow sooner
        if mask is not None:
            # filling the scores (not the distances) keeps every gradient finite
            scores = scores.masked_fill(~mask, -math.inf)
        scores = scores.masked_fill(empty, 0.0)
        weights = torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)
    else:
        k = kernel_fn(diff / bandwidth)
        if mask is not None:
            k = k.masked_fill(~mask, 0.0)
        total = k.sum(dim=-1, keepdim=True)
        positive = total > 0
        weights = torch.where(positive, k / torch.where(positive, total, torch.ones_like(total)), 0.0)

    if vector_values:
        estimate = weights @ values  # (..., Lq, n) @ (..., n, Dv) -> (..., Lq, Dv)
    else:
        estimate = (weights @ values.unsqueeze(-1)).squeeze(-1)  # (..., Lq)
    return estimate, weights


def average_pooling(queries: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """The simplest attention pooling: every query gets the plain mean of the values.

    :math:`\\hat f(q) = \\frac1n \\sum_i v_i`, all weights :math:`1/n`; the limit of
    :func:`nadaraya_watson` as the bandwidth grows without bound.

    Shape:
        queries: ``(..., Lq)``; values: ``(..., n)``; returns estimate ``(..., Lq)`` and weights
        ``(..., Lq, n)``.
    """
    if values.dim() < 1 or values.shape[-1] == 0:
        raise ValueError(f"values must have shape (..., n) with n >= 1, got {tuple(values.shape)}")
    n = values.shape[-1]
    shape = torch.broadcast_shapes(queries.shape[:-1], values.shape[:-1]) + (queries.shape[-1], n)
    weights = torch.full(shape, 1.0 / n, dtype=values.dtype, device=values.device)
    return (weights @ values.unsqueeze(-1)).squeeze(-1), weights


class NadarayaWatson(nn.Module):
    """Nadaraya-Watson regression with a learnable bandwidth, :math:`h = e^{\\theta}`.

    The bandwidth is stored as its logarithm ``log_bandwidth`` so that gradient steps can never
    make it negative and act on its *scale* (a step from 0.1 to 0.2 is as large as one from 1 to 2).

    Args:
        bandwidth: initial :math:`h > 0`.
        kernel: as in :func:`nadaraya_watson`.
        learnable: whether ``log_bandwidth`` is an ``nn.Parameter`` (else a buffer).

    Shape:
        as :func:`nadaraya_watson`.
    """

    def __init__(self, bandwidth: float = 1.0, kernel: str | KernelFn = "gaussian", learnable: bool = True):
        super().__init__()
        _check_bandwidth(bandwidth)
        _resolve_kernel(kernel)  # validate early
        self.kernel = kernel
        log_h = torch.tensor(math.log(bandwidth), dtype=torch.float32)
        if learnable:
            self.log_bandwidth = nn.Parameter(log_h)
        else:
            self.register_buffer("log_bandwidth", log_h)

    @property
    def bandwidth(self) -> Tensor:
        """The current bandwidth :math:`h = e^{\\theta}`, for reading (a detached 0-d tensor)."""
        return self.log_bandwidth.detach().exp()

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        mask: Tensor | None = None,
        leave_one_out: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Return ``(estimate, weights)``.

        ``leave_one_out=True`` is for the training set itself (``queries`` are the ``keys``,
        ``Lq == n``): query ``i`` may not attend to key ``i``, so a point is never predicted from
        its own value. ``mask``: boolean, ``True`` = may attend; combined with the leave-one-out
        mask by logical and.
        """
        if leave_one_out:
            lq, n = queries.shape[-1], keys.shape[-1]
            if lq != n:
                raise ValueError(
                    "leave_one_out=True needs the queries to be the keys (Lq == n), got queries shape "
                    f"{tuple(queries.shape)} and keys shape {tuple(keys.shape)}"
                )
            loo = leave_one_out_mask(n, device=keys.device)
            mask = loo if mask is None else mask & loo
        h = self.log_bandwidth.exp().to(queries.dtype)  # differentiable in log_bandwidth
        return nadaraya_watson(queries, keys, values, bandwidth=h, kernel=self.kernel, mask=mask)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}, bandwidth={float(self.bandwidth):.4g}"


@dataclass
class FitHistory:
    """What :func:`fit_bandwidth` records, one entry per optimisation step (before the step)."""

    loss: list[float] = field(default_factory=list)
    bandwidth: list[float] = field(default_factory=list)


def fit_bandwidth(
    model: NadarayaWatson,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 100,
    lr: float = 0.1,
    leave_one_out: bool = True,
    optimizer: str = "adam",
) -> FitHistory:
    """Fit ``model``'s bandwidth to ``(x, y)`` by minimising the mean squared error, in place.

    .. math::

        \\mathcal L(h) = \\frac1n \\sum_{i=1}^n \\big(y_i - \\hat f_{-i}(x_i)\\big)^2, \\qquad
        \\hat f_{-i}(x_i) = \\sum_{j \\ne i} \\alpha(x_i, x_j)\\, y_j .

    With ``leave_one_out=True`` (the default) each training point is predicted from the others:
    the leave-one-out cross-validation error. With ``False`` a point may attend to itself, and the
    loss is minimised by :math:`h \\to 0`, where every point predicts exactly its own value:
    the bandwidth then only shrinks (useful as a demonstration of that mistake).

    Args:
        model: the :class:`NadarayaWatson` module to train (its ``log_bandwidth`` must be learnable).
        x, y: training inputs and targets.
        steps: number of full-batch optimisation steps.
        lr: learning rate.
        leave_one_out: exclude each point from its own prediction.
        optimizer: ``"adam"`` or ``"sgd"``.

    Returns:
        The loss and bandwidth at every step.

    Shape:
        x: ``(n,)``; y: ``(n,)``.
    """
    if not isinstance(model.log_bandwidth, nn.Parameter):
        raise ValueError("model.log_bandwidth is a buffer: build the model with learnable=True")
    if x.dim() != 1 or y.shape != x.shape:
        raise ValueError(f"x and y must both have shape (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    params = [model.log_bandwidth]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    history = FitHistory()
    for _ in range(steps):
        opt.zero_grad()
        estimate, _ = model(x, x, y, leave_one_out=leave_one_out)
        loss = torch.mean((estimate - y) ** 2)
        loss.backward()
        history.loss.append(float(loss.detach()))
        history.bandwidth.append(float(model.bandwidth))
        opt.step()
    return history
