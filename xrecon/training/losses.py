"""Losses for self-supervised reconstruction training: pure torch functions on batch tensors.

AnytimeFormer's objective (Tang et al.) is the error on the hidden observations (imputation), plus
the error on the kept ones (reconstruction, weight 1), plus, for "anytime" training, 0.01 times the
total variation of the predictions on a dense daily grid. :func:`reconstruction_loss` computes it
from a batch of :func:`xrecon.training.stream.collate_pixels`; the pieces are public too.

Units are the caller's: pass reflectance (as the paper does for its error terms) or normalized values,
the same for prediction and target.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from xrecon.errors import XreconError

__all__ = ["LossTerms", "masked_error", "total_variation", "take_days", "reconstruction_loss"]


def masked_error(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, kind: Literal["l1", "mse"] = "l1"
) -> torch.Tensor:
    """Mean absolute (``"l1"``) or squared (``"mse"``) error over the masked dates, all bands.

    Parameters
    ----------
    pred, target : torch.Tensor
        ``(B, T, C)``.
    mask : torch.Tensor
        ``(B, T)`` bool: the dates that count. No date at all gives 0 (with a gradient).

    Examples
    --------
    >>> pred, target = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    >>> masked_error(pred, target, torch.tensor([[True, False, False]])).item()
    1.0
    """
    if pred.shape != target.shape or pred.shape[:2] != mask.shape:
        raise XreconError(
            f"expected pred and target (B, T, C) and mask (B, T); got {tuple(pred.shape)}, "
            f"{tuple(target.shape)} and {tuple(mask.shape)}"
        )
    diff = pred - target  # (B, T, C)
    err = diff.abs() if kind == "l1" else diff.square() if kind == "mse" else None
    if err is None:
        raise XreconError(f"kind must be 'l1' or 'mse', got {kind!r}")
    # where(), not multiplication: a NaN outside the mask must not turn the sum into NaN.
    w = mask.unsqueeze(-1).expand_as(err)  # (B, T, C)
    total = torch.where(w, err, torch.zeros((), dtype=err.dtype, device=err.device)).sum()
    return total / w.sum().clamp(min=1)


def total_variation(pred: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute difference between consecutive query dates: smoothness of a dense prediction.

    Parameters
    ----------
    pred : torch.Tensor
        ``(B, Tq, C)`` predictions on a regular query grid (AnytimeFormer uses every day of the year).
    mask : torch.Tensor, optional
        ``(B, Tq)`` bool, False at query positions that do not exist (padding); a difference counts
        only when both its ends exist.

    Examples
    --------
    >>> total_variation(torch.tensor([[[0.0], [1.0], [3.0]]])).item()
    1.5
    """
    diff = (pred[:, 1:] - pred[:, :-1]).abs()  # (B, Tq - 1, C)
    if mask is None:
        return diff.mean() if diff.numel() else pred.sum() * 0
    both = (mask[:, 1:] & mask[:, :-1]).unsqueeze(-1).expand_as(diff)  # (B, Tq - 1, C)
    return torch.where(both, diff, torch.zeros((), dtype=diff.dtype, device=diff.device)).sum() / both.sum().clamp(
        min=1
    )


def take_days(dense: torch.Tensor, first_day: int | torch.Tensor, days: torch.Tensor) -> torch.Tensor:
    """Pick, from predictions on a daily grid, those at given days (e.g. the observation dates).

    Parameters
    ----------
    dense : torch.Tensor
        ``(B, Tq, C)`` predictions for days ``first_day, first_day + 1, ...``.
    first_day : int or torch.Tensor
        Day of ``dense[:, 0]``; a ``(B,)`` tensor for a per-sample grid start.
    days : torch.Tensor
        ``(B, T)`` days wanted (float or int; padding positions may hold any day, they are clamped).

    Returns
    -------
    torch.Tensor
        ``(B, T, C)``.

    Examples
    --------
    >>> dense = torch.arange(5.0).view(1, 5, 1)  # days 1..5
    >>> take_days(dense, 1, torch.tensor([[2.0, 5.0]])).flatten().tolist()
    [1.0, 4.0]
    """
    start = torch.as_tensor(first_day, device=days.device).reshape(-1, 1)  # (B or 1, 1)
    idx = (days.round().long() - start.long()).clamp(0, dense.shape[1] - 1)  # (B, T)
    return dense.gather(1, idx.unsqueeze(-1).expand(-1, -1, dense.shape[2]))  # (B, T, C)


class LossTerms(NamedTuple):
    """The total loss to back-propagate and its parts (detach them for logging)."""

    total: torch.Tensor
    imputation: torch.Tensor
    reconstruction: torch.Tensor
    tv: torch.Tensor


def reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    hidden: torch.Tensor,
    kept: torch.Tensor,
    *,
    kind: Literal["l1", "mse"] = "l1",
    reconstruction_weight: float = 1.0,
    dense: torch.Tensor | None = None,
    dense_mask: torch.Tensor | None = None,
    tv_weight: float = 0.01,
) -> LossTerms:
    """AnytimeFormer's training loss: hidden observations + kept ones + optional total variation.

    ``total = imputation + reconstruction_weight * reconstruction + tv_weight * tv``, with the
    defaults of the paper (L1, weights 1 and 0.01). ``tv`` is 0 unless ``dense`` is given.

    Parameters
    ----------
    pred : torch.Tensor
        ``(B, T, C)`` predictions at the observation dates (the batch's ``doy``).
    target : torch.Tensor
        ``(B, T, C)`` the batch's ``target``.
    hidden, kept : torch.Tensor
        ``(B, T)`` bool, the batch's ``hidden`` and ``kept``.
    kind : {"l1", "mse"}
    reconstruction_weight : float
        0 drops the reconstruction term.
    dense : torch.Tensor, optional
        ``(B, Tq, C)`` predictions on a dense query grid (anytime training), for the TV term.
    dense_mask : torch.Tensor, optional
        ``(B, Tq)`` bool, the query positions that exist (see :func:`total_variation`).
    tv_weight : float

    Examples
    --------
    >>> pred, target = torch.zeros(1, 4, 2), torch.ones(1, 4, 2)
    >>> hidden = torch.tensor([[True, False, False, False]])
    >>> kept = torch.tensor([[False, True, True, False]])
    >>> terms = reconstruction_loss(pred, target, hidden, kept, reconstruction_weight=0.5)
    >>> round(terms.total.item(), 3), terms.tv.item()
    (1.5, 0.0)
    """
    imputation = masked_error(pred, target, hidden, kind=kind)
    reconstruction = masked_error(pred, target, kept, kind=kind)
    tv = total_variation(dense, dense_mask) if dense is not None else pred.new_zeros(())
    total = imputation + reconstruction_weight * reconstruction + tv_weight * tv
    return LossTerms(total=total, imputation=imputation, reconstruction=reconstruction, tv=tv)
