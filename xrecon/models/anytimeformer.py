"""AnytimeFormer: surface reflectance at any requested day from irregular optical and SAR series.

The network of Tang et al., "AnytimeFormer: Fusing irregular and asynchronous SAR-optical time
series to reconstruct reflectance at any given time", Remote Sensing of Environment (2025),
rewritten for xrecon: any number of optical, SAR and query dates, optional SAR, device taken from
the inputs, normalization kept in the model, and pixel-independent work done once per call.

The network, per pixel (B pixels, T optical dates, Ts SAR dates, Tq query dates, D = d_model)::

    pos(t)   sinusoidal day-of-year code, 1/365^(2i/D) frequencies, days truncated to integers
    h        = embed(optical) + pos(optical days)                   missing optical = 0 (band mean)
    h        = encoder blocks (self-attention, a date never attends to itself), post-norm
    a        = attention(query=pos(optical days), key=pos(SAR days), value=embed(SAR)) + pos(optical days)
    h        = block(low-rank fusion(h, a))                         sum over rank r of ([1,h] W_r) * ([1,a] V_r)
    y        = head(attention(query=pos(query days), key=h, value=h))

The time-align attention's query and key are time codes only, so its weights depend on the dates,
not on the pixel; the decoder's queries likewise. :meth:`AnytimeFormer.prepare` computes them once
per set of dates and folds the linear maps that follow (value -> output projection -> head) into
small matrices, which :meth:`AnytimeFormer.forward_prepared` then applies to every batch. This is
the same function as the textbook form (:meth:`AnytimeFormer.forward_reference`), up to float
rounding, at about 60% of its arithmetic.

Examples
--------
>>> import numpy as np
>>> from xrecon.models import anytimeformer
>>> model = anytimeformer.AnytimeFormer(anytimeformer.AnytimeFormerConfig(d_model=32, d_inner=16))
>>> rng = np.random.default_rng(0)
>>> optical = rng.uniform(0, 0.4, (5, 12, 10)).astype("float32")
>>> valid = rng.random((5, 12)) > 0.3
>>> sar = rng.normal(-15, 3, (5, 30, 2)).astype("float32")
>>> y = model.predict_pixels(optical, valid, np.arange(12) * 30 + 1, sar, np.arange(30) * 12 + 3,
...                          query_doy=[50, 150, 250], device="cpu")
>>> y.shape
(5, 3, 10)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrecon.errors import CheckpointError, XreconError
from xrecon.models.base import XreconModel, register_model
from xrecon.models.batching import predict_in_batches
from xrecon.runtime import resolve_device

__all__ = [
    "OFFICIAL_OPTICAL_BANDS",
    "OFFICIAL_SAR_BANDS",
    "PRESETS",
    "AnytimeFormer",
    "AnytimeFormerConfig",
    "doy_encoding",
]

# from_official (API.md's ``anytimeformer.from_official``) lives in xrecon.models.conversion, with the other
# conversions of foreign checkpoints; xrecon.models binds it here.

#: Sentinel-2 bands of the official Germany model, in the order of its inputs and outputs. The
#: upstream code does not name them: its Google Earth Engine export keeps GEE's native order of the
#: ten 10 m and 20 m bands, which is this one.
OFFICIAL_OPTICAL_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: Sentinel-1 polarisations of the official model (upstream ``X_aux``: VV, VH), backscatter in dB.
OFFICIAL_SAR_BANDS = ("VV", "VH")

TIME_ENCODINGS = ("doy-sinusoid",)


@dataclass(frozen=True)
class AnytimeFormerConfig:
    """Architecture of an AnytimeFormer (training settings live elsewhere).

    The defaults are the official release's (``PRESETS["official"]``).
    """

    n_optical_bands: int = 10
    n_sar_bands: int = 2  # 0 = an optical-only network, without the SAR fusion module
    d_model: int = 128
    d_inner: int = 64  # hidden width of the feed-forward layers
    n_heads: int = 4
    d_k: int = 32  # per-head width of queries and keys
    d_v: int = 32  # per-head width of values
    n_groups: int = 2  # encoder blocks with their own weights ...
    n_group_inner_layers: int = 1  # ... each applied this many times in a row
    fusion_rank: int = 8  # rank of the low-rank tensor fusion
    diagonal_mask: bool = True  # optical self-attention: a date may not attend to itself
    time_encoding: str = "doy-sinusoid"
    time_period: float = 365.0  # the T of the sinusoid: frequencies 1 / T^(2i/d_model)
    max_day: float = 366.0  # days of year outside [0, max_day] are refused
    dropout: float = 0.1  # used in training mode only

    def __post_init__(self) -> None:
        for name in ("n_optical_bands", "d_model", "d_inner", "n_heads", "d_k", "d_v", "n_group_inner_layers",
                     "fusion_rank"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise XreconError(f"AnytimeFormerConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("n_sar_bands", "n_groups"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise XreconError(f"AnytimeFormerConfig.{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.time_encoding not in TIME_ENCODINGS:
            raise XreconError(f"AnytimeFormerConfig.time_encoding must be one of {TIME_ENCODINGS}, "
                              f"got {self.time_encoding!r}")
        if not self.time_period > 0 or not self.max_day > 0:
            raise XreconError("AnytimeFormerConfig.time_period and max_day must be positive")
        if not 0 <= self.dropout < 1:
            raise XreconError(f"AnytimeFormerConfig.dropout must be in [0, 1), got {self.dropout!r}")


#: Named architectures. "official" is the published Germany model.
PRESETS: dict[str, AnytimeFormerConfig] = {
    "official": AnytimeFormerConfig(),
    "optical-only": AnytimeFormerConfig(n_sar_bands=0),
    "small": AnytimeFormerConfig(d_model=64, d_inner=32, d_k=16, d_v=16, fusion_rank=4),
}


def doy_encoding(days: Tensor, d_model: int, period: float = 365.0) -> Tensor:
    """Sinusoidal code of days of year: ``(...,)`` days -> ``(..., d_model)`` float32.

    Column ``j`` is ``sin`` (even ``j``) or ``cos`` (odd ``j``) of ``day / period**(2*(j//2)/d_model)``,
    computed in float64 on the CPU and rounded once to float32, which reproduces the official
    model's 366-row table exactly for days 0..365 and extends it to any day. Fractional days are
    truncated to whole days, as the official model does.

    Examples
    --------
    >>> import torch
    >>> doy_encoding(torch.tensor([0.0, 1.0]), 4)
    tensor([[0.0000, 1.0000, 0.0000, 1.0000],
            [0.8415, 0.5403, 0.0523, 0.9986]])
    """
    day = torch.floor(days.detach().to("cpu", torch.float64))
    j = torch.arange(d_model, dtype=torch.float64)
    angle = day[..., None] / torch.pow(torch.tensor(float(period), dtype=torch.float64), 2 * (j // 2) / d_model)
    code = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return code.to(device=days.device, dtype=torch.float32)


class SelfAttentionBlock(nn.Module):
    """Post-norm transformer block: ``x = LN(x + MHA(x)); x = LN(x + FFN(x))``."""

    def __init__(self, c: AnytimeFormerConfig) -> None:
        super().__init__()
        self.n_heads, self.d_k, self.d_v, self.dropout = c.n_heads, c.d_k, c.d_v, c.dropout
        self.qkv = nn.Linear(c.d_model, c.n_heads * (2 * c.d_k + c.d_v), bias=False)
        self.proj = nn.Linear(c.n_heads * c.d_v, c.d_model, bias=False)
        self.norm1 = nn.LayerNorm(c.d_model)  # eps 1e-5 and ...
        self.ffn_in = nn.Linear(c.d_model, c.d_inner)
        self.ffn_out = nn.Linear(c.d_inner, c.d_model)
        self.norm2 = nn.LayerNorm(c.d_model, eps=1e-6)  # ... 1e-6: as the official weights were trained

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        H, dk, dv = self.n_heads, self.d_k, self.d_v
        p = self.dropout if self.training else 0.0
        q, k, v = self.qkv(x).split([H * dk, H * dk, H * dv], dim=-1)  # (B, T, H*dk) x2, (B, T, H*dv)
        q = q.view(B, T, H, dk).transpose(1, 2)  # (B, H, T, dk)
        k = k.view(B, T, H, dk).transpose(1, 2)  # (B, H, T, dk)
        v = v.view(B, T, H, dv).transpose(1, 2)  # (B, H, T, dv)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)  # (B, H, T, dv)
        a = a.transpose(1, 2).reshape(B, T, H * dv)  # (B, T, H*dv)
        x = self.norm1(x + F.dropout(self.proj(a), p, self.training))  # (B, T, D)
        f = self.ffn_out(F.gelu(self.ffn_in(x)))  # (B, T, D)
        return self.norm2(x + F.dropout(f, p, self.training))  # (B, T, D)


class CrossAttention(nn.Module):
    """Multi-head attention without biases, queries from one sequence, keys and values from another."""

    def __init__(self, c: AnytimeFormerConfig) -> None:
        super().__init__()
        self.n_heads, self.d_k, self.d_v, self.dropout = c.n_heads, c.d_k, c.d_v, c.dropout
        self.q = nn.Linear(c.d_model, c.n_heads * c.d_k, bias=False)
        self.k = nn.Linear(c.d_model, c.n_heads * c.d_k, bias=False)
        self.v = nn.Linear(c.d_model, c.n_heads * c.d_v, bias=False)
        self.proj = nn.Linear(c.n_heads * c.d_v, c.d_model, bias=False)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """The textbook form (used by :meth:`AnytimeFormer.forward_reference`)."""
        B, L, _ = query.shape
        H, dk, dv = self.n_heads, self.d_k, self.d_v
        q = self.q(query).view(B, L, H, dk).transpose(1, 2)  # (B, H, L, dk)
        k = self.k(key).view(B, -1, H, dk).transpose(1, 2)  # (B, H, S, dk)
        v = self.v(value).view(B, -1, H, dv).transpose(1, 2)  # (B, H, S, dv)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, L, dv)
        return self.proj(a.transpose(1, 2).reshape(B, L, H * dv))  # (B, L, D)

    def folded_values(self, after: Tensor) -> Tensor:
        """Per-head maps ``(H, D, E)`` from a value input to ``after(proj(.))`` restricted to each head.

        ``after`` is ``(D, E)``: the linear map applied to the attention output (identity for none).
        Attention output = sum over heads of ``weights_h @ (value @ folded_h)``.
        """
        H, dv = self.n_heads, self.d_v
        wv = self.v.weight.view(H, dv, -1)  # (H, dv, D_in)
        wo = self.proj.weight.view(-1, H, dv)  # (D, H, dv)
        return torch.einsum("hvi,ohv,oe->hie", wv, wo, after)  # (H, D_in, E)


class LowRankFusion(nn.Module):
    """Low-rank multimodal tensor fusion (Liu et al. 2018): ``sum_r ([1, x] W_r) * ([1, y] V_r)``."""

    def __init__(self, d_model: int, rank: int) -> None:
        super().__init__()
        self.w_optical = nn.Parameter(torch.empty(rank, d_model + 1, d_model))
        self.w_sar = nn.Parameter(torch.empty(rank, d_model + 1, d_model))
        nn.init.xavier_normal_(self.w_optical)
        nn.init.xavier_normal_(self.w_sar)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The textbook form: ``(B, T, D)``, ``(B, T, D)`` -> ``(B, T, D)``."""
        ones = x.new_ones(*x.shape[:-1], 1)
        px = torch.cat([ones, x], -1).unsqueeze(-3) @ self.w_optical  # (B, R, T, D)
        py = torch.cat([ones, y], -1).unsqueeze(-3) @ self.w_sar  # (B, R, T, D)
        return (px * py).sum(-3)  # (B, T, D)


class Prepared(NamedTuple):
    """What one set of dates costs, computed once per call and shared by every pixel and batch."""

    pos: Tensor  # (T, D) time code of the optical dates
    mask: Tensor | None  # (T, T) bool, True = may attend; None without the diagonal mask
    align: Tensor | None  # (H, T, Ts) optical-to-SAR time-align attention weights; None without SAR input
    fusion_w: Tensor | None  # (R, D, D) optical side of the fusion, per rank ...
    fusion_b: Tensor | None  # (R, D) ... and its bias (the row that multiplies the appended 1)
    fusion_shared: Tensor | None  # (R, T, D) SAR side of the fusion for SAR at its mean: pixel-independent
    sar_to_fusion: Tensor | None  # (R, H*S, D) time-aligned SAR mix -> SAR side of the fusion
    decoder: Tensor  # (D, H*Tq + H*C) decoder scores (queries folded into keys) and values (folded into the head)
    head_bias: Tensor  # (C,)
    n_query: int  # Tq


@register_model("anytimeformer")
class AnytimeFormer(XreconModel):
    """The AnytimeFormer network, with its normalization statistics and band names.

    Attributes
    ----------
    config : AnytimeFormerConfig
    optical_bands, sar_bands : list of str or None
        Band names in input order (``None`` if unknown).
    optical_mean, optical_std : Tensor (C,)
        Reflectance statistics; the network works in standardized units.
    sar_mean, sar_std : Tensor (S,)
        Backscatter (dB) statistics.
    """

    config_class = AnytimeFormerConfig

    def __init__(self, config: AnytimeFormerConfig | None = None) -> None:
        c = config or AnytimeFormerConfig()
        super().__init__(c)
        C, S, D = c.n_optical_bands, c.n_sar_bands, c.d_model
        self.embed_optical = nn.Linear(C, D, bias=False)
        self.encoder = nn.ModuleList(SelfAttentionBlock(c) for _ in range(c.n_groups))
        if S:
            self.embed_sar = nn.Linear(S, D, bias=False)
            self.align = CrossAttention(c)
            self.fusion = LowRankFusion(D, c.fusion_rank)
            self.fusion_block = SelfAttentionBlock(c)
        self.decoder = CrossAttention(c)
        self.head = nn.Linear(D, C)
        self.register_buffer("optical_mean", torch.zeros(C))
        self.register_buffer("optical_std", torch.ones(C))
        self.register_buffer("sar_mean", torch.zeros(S))
        self.register_buffer("sar_std", torch.ones(S))

    # ----------------------------------------------------------------------------------------------
    # network, in standardized units

    def time_code(self, days: Tensor) -> Tensor:
        """``(...,)`` days of year -> ``(..., D)`` time code (see :func:`doy_encoding`)."""
        return doy_encoding(days, self.config.d_model, self.config.time_period)

    def _diagonal_mask(self, T: int, device: torch.device) -> Tensor | None:
        # With a single date the official model's -1e9 fill leaves that date attending to itself,
        # which is what no mask does; a boolean mask would leave it nothing to attend to (NaN).
        if not self.config.diagonal_mask or T < 2:
            return None
        return ~torch.eye(T, dtype=torch.bool, device=device)  # (T, T)

    def prepare(self, optical_doy: Tensor, query_doy: Tensor, sar_doy: Tensor | None = None) -> Prepared:
        """Everything that depends on the dates and weights only, not on pixel values."""
        c = self.config
        H, dk, D, C = c.n_heads, c.d_k, c.d_model, c.n_optical_bands
        dev = self.head.weight.device
        pos = self.time_code(optical_doy.to(dev))  # (T, D)
        T = pos.shape[0]
        align = fusion_w = fusion_b = fusion_shared = sar_to_fusion = None
        if c.n_sar_bands:
            w_opt, w_sar = self.fusion.w_optical, self.fusion.w_sar  # (R, D+1, D) each
            # [1, x] @ W_r = W_r[0] + x @ W_r[1:]
            fusion_w, fusion_b = w_opt[:, 1:], w_opt[:, 0]  # (R, D, D), (R, D)
            # the SAR side's input is pos + aligned SAR; the pos part is the same for every pixel
            fusion_shared = w_sar[:, :1] + pos @ w_sar[:, 1:]  # (R, T, D)
            if sar_doy is not None and sar_doy.numel():
                pos_sar = self.time_code(sar_doy.to(dev))  # (Ts, D)
                q = self.align.q(pos).view(T, H, dk).transpose(0, 1)  # (H, T, dk)
                k = self.align.k(pos_sar).view(-1, H, dk).transpose(0, 1)  # (H, Ts, dk)
                align = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dk), dim=-1)  # (H, T, Ts)
                # value path SAR -> embed -> v_h -> proj is linear: one (S, D) map per head
                sar_map = self.align.folded_values(torch.eye(D, device=dev))  # (H, D, D)
                sar_map = (self.embed_sar.weight.T @ sar_map).reshape(-1, D)  # (H*S, D)
                sar_to_fusion = sar_map @ w_sar[:, 1:]  # (R, H*S, D)
        # Decoder: its queries are time codes, so q_h . k_h = h @ (W_k,h^T q_h): fold the queries into
        # the key map. Its values go through v_h, proj and head, all linear: fold them into (D, C) per head.
        q = self.decoder.q(self.time_code(query_doy.to(dev))).view(-1, H, dk)  # (Tq, H, dk)
        wk = self.decoder.k.weight.view(H, dk, D)  # (H, dk, D)
        scores = torch.einsum("qhk,hkd->dhq", q, wk).reshape(D, -1) / math.sqrt(dk)  # (D, H*Tq)
        values = self.decoder.folded_values(self.head.weight.T)  # (H, D, C)
        decoder = torch.cat([scores, values.permute(1, 0, 2).reshape(D, H * C)], 1)  # (D, H*Tq + H*C)
        return Prepared(pos, self._diagonal_mask(T, dev), align, fusion_w, fusion_b, fusion_shared, sar_to_fusion,
                        decoder, self.head.bias, q.shape[0])

    def forward_prepared(self, optical: Tensor, prep: Prepared, sar: Tensor | None = None) -> Tensor:
        """The network for one batch given :meth:`prepare`'s output.

        Parameters
        ----------
        optical : Tensor (B, T, C)
            Standardized reflectance, 0 where not observed.
        prep : Prepared
        sar : Tensor (B, Ts, S), optional
            Standardized backscatter, 0 where missing; ignored unless ``prep`` was made with SAR dates.

        Returns
        -------
        Tensor (B, Tq, C)
            Standardized reflectance at the query days.
        """
        c = self.config
        B, T, _ = optical.shape
        H, D, C = c.n_heads, c.d_model, c.n_optical_bands
        h = self.embed_optical(optical) + prep.pos  # (B, T, D)
        for block in self.encoder:
            for _ in range(c.n_group_inner_layers):
                h = block(h, prep.mask)  # (B, T, D)
        if c.n_sar_bands:
            h = self.fusion_block(self._fuse(h, prep, sar))  # (B, T, D)
        Tq = prep.n_query
        sv = (h.reshape(B * T, D) @ prep.decoder).view(B, T, -1)  # (B, T, H*Tq + H*C)
        scores, values = sv.split([H * Tq, H * C], dim=-1)  # (B, T, H*Tq), (B, T, H*C)
        w = torch.softmax(scores, dim=1)  # (B, T, H*Tq): attention over the optical dates
        w = F.dropout(w, c.dropout, self.training)
        out = None
        for i in range(H):
            w_i = w[:, :, i * Tq:(i + 1) * Tq].transpose(1, 2)  # (B, Tq, T)
            v_i = values[:, :, i * C:(i + 1) * C]  # (B, T, C)
            out = torch.bmm(w_i, v_i) if out is None else torch.baddbmm(out, w_i, v_i)  # (B, Tq, C)
        return out + prep.head_bias  # (B, Tq, C)

    def _fuse(self, h: Tensor, prep: Prepared, sar: Tensor | None) -> Tensor:
        """Low-rank fusion of encoded optical ``h`` (B, T, D) with time-aligned SAR, rank by rank.

        Rank by rank keeps the temporaries at (B, T, D) instead of (B, T, R*D).
        """
        B, T, D = h.shape
        mix = None  # (B*T, H*S): per optical date, each head's attention-weighted SAR
        if prep.align is not None and sar is not None:
            a = prep.align  # (H, T, Ts)
            H, _, Ts = a.shape
            S = sar.shape[-1]
            sar = sar.to(a.dtype)
            if self.training and self.config.dropout:
                a = F.dropout(a.expand(B, H, T, Ts), self.config.dropout)  # per-pixel dropout
                mix = (a @ sar.unsqueeze(1)).transpose(1, 2).reshape(B * T, H * S)
            else:
                # one product for the whole batch: (H*T, Ts) @ (Ts, B*S)
                mix = a.reshape(H * T, Ts) @ sar.permute(1, 0, 2).reshape(Ts, B * S)  # (H*T, B*S)
                mix = mix.view(H, T, B, S).permute(2, 1, 0, 3).reshape(B * T, H * S)
        hx = h.reshape(B * T, D)
        fused = None
        for r in range(prep.fusion_w.shape[0]):
            x = torch.addmm(prep.fusion_b[r], hx, prep.fusion_w[r]).view(B, T, D)  # (B, T, D) optical side
            y = prep.fusion_shared[r]  # (T, D) SAR side, SAR at its mean
            if mix is not None:
                y = (mix @ prep.sar_to_fusion[r]).view(B, T, D).add_(y)  # (B, T, D)
            # accumulate in fp32 even under autocast: eight half-precision roundings would add up
            fused = x.float() * y if fused is None else fused.addcmul_(x, y)  # (B, T, D)
        return fused

    def forward(self, optical: Tensor, optical_doy: Tensor, query_doy: Tensor, sar: Tensor | None = None,
                sar_doy: Tensor | None = None) -> Tensor:
        """Standardized reflectance ``(B, T, C)`` (0 = missing) -> ``(B, Tq, C)`` at ``query_doy``.

        Dates are 1-d and shared by the batch (pixels of a chunk share their acquisition dates).
        ``sar`` ``(B, Ts, S)`` is standardized backscatter (0 = missing) at ``sar_doy`` ``(Ts,)``;
        without it a SAR network sees SAR at its mean. No device is assumed: the inputs must be where
        the weights are, and the tensors made from the dates are put there.
        """
        return self.forward_prepared(optical, self.prepare(optical_doy, query_doy, sar_doy), sar)

    def forward_reference(self, optical: Tensor, optical_doy: Tensor, query_doy: Tensor,
                          sar: Tensor | None = None, sar_doy: Tensor | None = None) -> Tensor:
        """The same network in its textbook, per-pixel form: slower, kept to check the fast one."""
        c = self.config
        B, T, _ = optical.shape
        pos = self.time_code(optical_doy).expand(B, T, -1)  # (B, T, D)
        h = self.embed_optical(optical) + pos  # (B, T, D)
        mask = self._diagonal_mask(T, optical.device)
        for block in self.encoder:
            for _ in range(c.n_group_inner_layers):
                h = block(h, mask)  # (B, T, D)
        if c.n_sar_bands:
            if sar is None or sar_doy is None or sar_doy.numel() == 0:
                sar, sar_doy = optical.new_zeros(B, 1, c.n_sar_bands), optical_doy[:1]
            pos_sar = self.time_code(sar_doy).expand(B, -1, -1)  # (B, Ts, D)
            a = self.align(pos, pos_sar, self.embed_sar(sar)) + pos  # (B, T, D)
            h = self.fusion_block(self.fusion(h, a))  # (B, T, D)
        pos_q = self.time_code(query_doy).expand(B, -1, -1)  # (B, Tq, D)
        return self.head(self.decoder(pos_q, h, h))  # (B, Tq, C)

    # ----------------------------------------------------------------------------------------------
    # numpy in, numpy out

    @property
    def normalization(self) -> dict[str, np.ndarray]:
        """The statistics inputs are standardized with, as numpy arrays."""
        return {k: getattr(self, k).detach().cpu().numpy().copy()
                for k in ("optical_mean", "optical_std", "sar_mean", "sar_std")}

    def set_normalization(self, optical_mean: Sequence[float], optical_std: Sequence[float],
                          sar_mean: Sequence[float] | None = None, sar_std: Sequence[float] | None = None) -> None:
        """Set the reflectance and backscatter statistics (checked: finite, std > 0, one per band)."""
        c = self.config
        for name, value, n in (("optical_mean", optical_mean, c.n_optical_bands),
                               ("optical_std", optical_std, c.n_optical_bands),
                               ("sar_mean", sar_mean, c.n_sar_bands), ("sar_std", sar_std, c.n_sar_bands)):
            if value is None:
                if n:
                    raise XreconError(f"{name} is required: the model has {n} SAR band(s)")
                continue
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
            if arr.shape != (n,) or not np.isfinite(arr).all() or (name.endswith("std") and (arr <= 0).any()):
                raise XreconError(f"{name} must be {n} finite value(s){' > 0' if name.endswith('std') else ''}, "
                                  f"one per band; got {np.asarray(value).tolist()!r}")
            buf = getattr(self, name)
            buf.copy_(torch.as_tensor(arr, dtype=buf.dtype, device=buf.device))

    def default_batch_size(self, device: torch.device) -> int:
        """Pixels per batch: enough to keep matrix products efficient, few enough to stay in cache/memory."""
        return 128 if device.type == "cpu" else 8192

    def predict_pixels(
        self,
        optical: np.ndarray,
        valid: np.ndarray,
        optical_doy: np.ndarray,
        sar: np.ndarray | None = None,
        sar_doy: np.ndarray | None = None,
        query_doy: np.ndarray | None = None,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
        *,
        precision: str = "fp32",
        workers: int | None = None,
    ) -> np.ndarray:
        """Reflectance of every pixel at every query day: numpy in, numpy out.

        Parameters
        ----------
        optical : array (N, T, C)
            Surface reflectance (0-1 units) at ``optical_doy``; any value (NaN included) where not valid.
        valid : array (N, T) of bool
            True where the observation is clear. An observation with a non-finite band is treated as
            not valid.
        optical_doy : array (T,)
            Day of year of each optical date (0..366; fractions are truncated, as the official model
            does). Any order; dates may repeat.
        sar : array (N, Ts, S), optional
            Backscatter in dB at ``sar_doy``. NaN (no acquisition, border noise) counts as the band
            mean, i.e. no information. ``None`` (or Ts = 0) runs a SAR model with SAR at its mean
            everywhere, which is the same as all-NaN SAR.
        sar_doy : array (Ts,), optional
            Day of year of each SAR date.
        query_doy : array (Tq,), optional
            Days of year to predict; ``None`` = the optical dates (sequence-to-sequence).
        batch_size : int, optional
            Pixels per batch; ``None`` = :meth:`default_batch_size`.
        device : str or torch.device, optional
            ``None`` = "cuda" if available, else "cpu". The model is moved there if it is elsewhere.
        precision : {"fp32", "bf16", "fp16"}
            Matrix products in this precision (autocast). "bf16" is fast on CPUs with AMX and on GPUs,
            "fp16" is for GPUs; see docs/anytimeformer.md for their measured error.
        workers : int, optional
            CPU only. ``None`` (default): batches run one after another, each op on torch's intra-op
            threads. ``k > 1``: k threads each run whole batches on one torch thread. Same results;
            on CPUs shared with other processes this is up to 2x faster (a busy core then slows one
            worker instead of every op of every batch), but while it runs, threads that start using
            torch inherit one intra-op thread (torch keeps that setting process-wide).

        Returns
        -------
        array (N, Tq, C) float32
            Predicted reflectance. Pixels with no valid observation are NaN (the network would return
            a climatology-like curve from the time codes alone, which is not a reconstruction).

        Raises
        ------
        CheckpointError
            If the number of bands does not match the model.
        XreconError
            For inconsistent shapes or days outside [0, max_day].

        Examples
        --------
        >>> import numpy as np
        >>> from xrecon.models import anytimeformer
        >>> model = anytimeformer.AnytimeFormer(anytimeformer.PRESETS["small"])
        >>> optical = np.full((2, 3, 10), 0.1, "float32")
        >>> valid = np.array([[True, False, True], [False, False, False]])
        >>> y = model.predict_pixels(optical, valid, [10, 20, 30], query_doy=[15, 25], device="cpu")
        >>> y.shape, bool(np.isnan(y[1]).all())
        ((2, 2, 10), True)
        """
        c = self.config
        optical = np.asarray(optical)
        if optical.ndim != 3:
            raise XreconError(f"optical must be (pixel, time, band), got shape {optical.shape}")
        N, T, C = optical.shape
        if C != c.n_optical_bands:
            raise CheckpointError(f"the model takes {c.n_optical_bands} optical bands"
                                  f"{_names(self.optical_bands)}, optical has {C}")
        valid = np.asarray(valid)
        if valid.shape != (N, T):
            raise XreconError(f"valid must be (pixel, time) = {(N, T)}, got shape {valid.shape}")
        opt_days = self._days(optical_doy, "optical_doy", T)
        q_days = opt_days if query_doy is None else self._days(query_doy, "query_doy")
        if sar is not None:
            sar = np.asarray(sar)
            if not c.n_sar_bands:
                raise XreconError("this model takes no SAR (n_sar_bands = 0); pass sar=None")
            if sar.ndim != 3 or sar.shape[0] != N:
                raise XreconError(f"sar must be (pixel, sar_time, sar_band) with {N} pixels, got shape {sar.shape}")
            if sar.shape[2] != c.n_sar_bands:
                raise CheckpointError(f"the model takes {c.n_sar_bands} SAR bands{_names(self.sar_bands)}, "
                                      f"sar has {sar.shape[2]}")
            if sar_doy is None:
                raise XreconError("sar_doy is required with sar")
            s_days = self._days(sar_doy, "sar_doy", sar.shape[1])
            if sar.shape[1] == 0:
                sar = s_days = None
        else:
            s_days = None

        dev = resolve_device(device)
        if batch_size is None:
            batch_size = self.default_batch_size(dev)
        out = np.full((N, len(q_days), C), np.nan, dtype=np.float32)
        valid = valid.astype(bool) & np.isfinite(optical).all(-1)  # (N, T)

        def prepare() -> Prepared:
            return self.prepare(torch.from_numpy(opt_days), torch.from_numpy(q_days),
                                None if s_days is None else torch.from_numpy(s_days))

        def run(prep: Prepared, x: Tensor, v: Tensor, s: Tensor | None) -> Tensor:
            mean, std = self.optical_mean, self.optical_std
            x = torch.where(v.unsqueeze(-1), (x - mean) / std, 0.0)  # (b, T, C)
            if s is not None:
                s = torch.nan_to_num((s - self.sar_mean) / self.sar_std, nan=0.0, posinf=0.0, neginf=0.0)
            y = self.forward_prepared(x, prep, s)  # (b, Tq, C)
            return y.float() * std + mean

        # a pixel without any valid observation stays NaN (see Returns)
        return predict_in_batches(self, run, [optical, valid, sar], out, rows=valid.any(-1), batch_size=batch_size,
                                  device=dev, precision=precision, workers=workers, prepare=prepare)

    def _days(self, days: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
        arr = np.asarray(days)
        if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
            raise XreconError(f"{name} must be 1-d" + (f" with {n} days, one per date" if n is not None else "")
                              + f", got shape {arr.shape}")
        arr = arr.astype(np.float64)
        bad = ~np.isfinite(arr) | (arr < 0) | (arr > self.config.max_day)
        if bad.any():
            raise XreconError(f"{name} must hold days of year in [0, {self.config.max_day:g}], "
                              f"got {arr[bad][:5].tolist()}")
        return arr


def _names(bands: Sequence[str] | None) -> str:
    return f" ({', '.join(bands)})" if bands else ""
