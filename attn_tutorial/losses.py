"""The training objective: label-smoothed cross-entropy per real target token, and its mean over data.

The objective is the token-level cross-entropy of a sequence-to-sequence model with label
smoothing :cite:p:`vaswani2017` (section 5.4), averaged over the *real* target tokens of a batch:

.. math::

    \\mathcal{L} = \\frac{1}{N} \\sum_{(b, t):\\, m_{bt}} \\Big[(1 - \\varepsilon)\\,(-\\log p_{bt}(y_{bt}))
        + \\frac{\\varepsilon}{V} \\sum_{v=1}^{V} (-\\log p_{bt}(v))\\Big], \\qquad N = \\sum_{b,t} m_{bt},

where ``m`` is the target mask (``True`` = real token, padding is ignored), ``V`` the vocabulary size
and :math:`\\varepsilon` the label smoothing.

:func:`~attn_tutorial.train.fit` minimises it; :func:`evaluate_loss` measures it on held-out batches
without smoothing, so ``exp(evaluate_loss(...))`` is a perplexity.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import describe, is_real
from .runtime import maybe_autocast

__all__ = ["label_smoothed_cross_entropy", "token_cross_entropy", "evaluate_loss"]

#: ``loss_fn(model, batch)``: a scalar loss, or ``(mean loss, number of items it averages)``.
LossFn = Callable[[nn.Module, Any], "Tensor | tuple[Tensor, Tensor | int | float]"]


def label_smoothed_cross_entropy(
    logits: Tensor, target: Tensor, mask: Tensor, smoothing: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy against a label-smoothed target, over the real tokens only.

    For every position where ``mask`` is ``True`` (a real token; ``False`` = padding, ignored):

    .. math::

        \\ell = (1 - \\varepsilon)\\,(-\\log p(y)) + \\frac{\\varepsilon}{V} \\sum_{v=1}^{V} (-\\log p(v)),
        \\qquad p = \\mathrm{softmax}(\\text{logits}),

    i.e. the cross-entropy against the distribution ``(1 - eps) onehot(y) + eps / V``
    (:cite:p:`vaswani2017`, section 5.4; PyTorch's ``cross_entropy(label_smoothing=eps)``).
    ``reduction="mean"`` divides the sum by the number of real tokens (the loss *per token*, not per
    sentence); ``"sum"`` returns the sum. Computed in at least float32 whatever the logits' dtype.

    Shape:
        ``logits`` ``(..., V)``, ``target`` ``(...)`` integer, ``mask`` ``(...)`` bool -> scalar.
    """
    if not isinstance(logits, Tensor) or logits.dim() < 1 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating tensor (..., V), got {describe(logits)}")
    if not isinstance(target, Tensor) or target.shape != logits.shape[:-1] or target.is_floating_point():
        raise ValueError(
            f"target must be an integer tensor of shape {tuple(logits.shape[:-1])} (logits without the "
            f"vocabulary dimension), got {describe(target)}"
        )
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != target.shape:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(target.shape)} (True = real token), got {describe(mask)}"
        )
    if not is_real(smoothing) or not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be a float in [0, 1), got {smoothing!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    log_p = torch.log_softmax(logits, dim=-1)  # (..., V)
    safe_target = target.masked_fill(~mask, 0)  # any valid index at padding; zeroed below
    nll = -log_p.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)  # (...)
    uniform = -log_p.mean(dim=-1)  # (...) = (1/V) sum_v -log p(v)
    per_token = (1.0 - smoothing) * nll + smoothing * uniform
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp(min=1)


def token_cross_entropy(model: nn.Module, batch: Any, smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """The default loss of :func:`~attn_tutorial.train.fit`: label-smoothed cross-entropy per real target token.

    Runs ``model(batch.src, batch.src_mask, batch.tgt_in, batch.tgt_mask)`` (masks: bool, ``True`` =
    real token) and compares the logits with ``batch.tgt_out`` where ``batch.tgt_mask`` is ``True``.
    Returns ``(mean loss per real token, number of real tokens)``.

    Shape:
        logits ``(B, T, V)``, ``batch.tgt_out`` and ``batch.tgt_mask`` ``(B, T)``.
    """
    mask = batch.tgt_mask
    inner = getattr(model, "module", model)  # a DistributedDataParallel wrapper is called, not bypassed
    if getattr(inner, "accepts_logits_mask", False):
        # Output layer at the real positions only: the same loss, about a fifth fewer (N, V) products.
        logits = model(batch.src, batch.src_mask, batch.tgt_in, batch.tgt_mask, logits_mask=mask)  # (N, V)
        target = batch.tgt_out[mask]  # (N,)
        return label_smoothed_cross_entropy(logits, target, torch.ones_like(target, dtype=torch.bool), smoothing), mask.sum()
    logits = model(batch.src, batch.src_mask, batch.tgt_in, batch.tgt_mask)
    if isinstance(logits, (tuple, list)):  # (logits, attention)
        logits = logits[0]
    return label_smoothed_cross_entropy(logits, batch.tgt_out, mask, smoothing), mask.sum()


def to_device(batch: Any, device: torch.device) -> Any:
    to = getattr(batch, "to", None)
    return to(device) if callable(to) else batch


def call_loss(loss_fn: LossFn, model: nn.Module, batch: Any) -> tuple[Tensor, float]:
    out = loss_fn(model, batch)
    if isinstance(out, tuple):
        loss, n = out
        n = float(n.item()) if isinstance(n, Tensor) else float(n)
    else:
        loss, n = out, float(getattr(batch, "num_tokens", 1))
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar tensor (or (scalar, count)), got {describe(loss)}")
    return loss, n


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn | None = None,
    *,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Mean loss per real token over ``batches`` (each batch weighted by its token count).

    With the default ``loss_fn`` this is the plain cross-entropy (no label smoothing), so
    ``exp(evaluate_loss(...))`` is the perplexity. Runs in eval mode (no dropout) without gradients
    and restores the model's previous mode.

    Shape:
        batches as in :func:`~attn_tutorial.train.fit`; returns a Python float.
    """
    loss_fn = loss_fn or functools.partial(token_cross_entropy, smoothing=0.0)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    total, count = loss_sums(model, batches, loss_fn, torch.device(device), amp_dtype)
    if count == 0:
        raise ValueError("batches yielded no tokens to evaluate on")
    return total / count


@torch.no_grad()
def loss_sums(
    model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, device: torch.device, amp_dtype: torch.dtype | None
) -> tuple[float, float]:
    """``(sum of loss x count, sum of counts)`` over ``batches``, in eval mode; the mode is restored."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    try:
        for batch in batches:
            batch = to_device(batch, device)
            with maybe_autocast(device, amp_dtype):
                loss, n = call_loss(loss_fn, model, batch)
            total += float(loss.item()) * n
            count += n
    finally:
        model.train(was_training)
    return total, count
