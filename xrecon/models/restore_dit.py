"""RESTORE-DiT: a diffusion transformer over space-time patches of an optical sequence, conditioned on SAR.

After Shu et al., "RESTORE-DiT: Reliable satellite image time series reconstruction by multimodal
sequential diffusion transformer", Remote Sensing of Environment 328, 114872 (2025), whose public code
(SQD1/RESTORE-DiT, ``lib/models/SDT.py``, class ``SDT``) this module computes exactly, rewritten for
xrecon: any number of frames, any tile size that is a multiple of the patch, optional SAR, a padding
mask for short sequences, one diffusion timestep per sequence of the batch, device taken from the input.

The network (B sequences, T frames, N = H W / p^2 patches per frame, D = hidden size)::

    tokens  = per-frame p x p patch embedding + 2-D sin-cos position (for the actual grid)
              + sinusoid of the frame's date (T = 10000, no parameters), added to every token of the frame
    sar     = the same for the SAR frame aligned to each optical frame (its own patch embedding)
    c       = MLP(sinusoid(diffusion timestep))                 one vector per sequence, (B, D)
    block   = SAR cross-attention (within the frame, then across frames; no residual in between)
              -> temporal self-attention -> spatial self-attention -> MLP,
              each sub-block pre-normed, modulated by c (shift, scale) and gated by c (adaLN-Zero)
    x0      = final adaLN + linear + unpatchify                 the network predicts the clean sequence

Model units are upstream's: reflectance and backscatter mapped to [-1, 1] by the affine maps of the
normalization buffers (see :meth:`RestoreDiT.to_model_units`). Frame dates are days since
``config.date_origin`` (upstream: days since 2018-09-01, its PASTIS reference day).

The sampling loop :func:`sample` (re-exported here) lives with the samplers and the noise schedule in
:mod:`xrecon.diffusion`.

Examples
--------
>>> import torch
>>> from xrecon.models import restore_dit
>>> model = restore_dit.RestoreDiT(restore_dit.PRESETS["tiny"]).eval()
>>> x = torch.zeros(1, 3, 4, 8, 12)                 # (B, T, C, H, W), model units
>>> sar = torch.zeros(1, 3, 2, 8, 12)               # (B, T, S, H, W)
>>> t, dates = torch.tensor([500]), torch.tensor([[0.0, 10.0, 30.0]])
>>> model.denoise(x, t, dates, sar).shape
torch.Size([1, 3, 4, 8, 12])
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrecon.diffusion.sampling import UNITS, sample
from xrecon.errors import MethodError, XreconError
from xrecon.models.base import XreconModel, register_model
from xrecon.times import DATE_ORIGIN, days_since

# from_upstream (API.md's ``restore_dit.from_upstream``) lives in xrecon.models.conversion, with the other
# conversions of foreign checkpoints; xrecon.models binds it here.
__all__ = [
    "PRESETS",
    "UPSTREAM_SDT_DEFAULTS",
    "RestoreDiT",
    "RestoreDiTConfig",
    "TileSizeError",
    "date_embedding",
    "days_since_origin",
    "position_embedding",
    "sample",
    "timestep_embedding",
    "UNITS",
]


#: The normalization buffers: the affine maps to model units (see :attr:`RestoreDiT.normalization`).
_UNIT_BUFFERS = ("optical_offset", "optical_scale", "sar_offset", "sar_scale")


class TileSizeError(MethodError):
    """A tile whose height or width is not a multiple of the network's patch size."""


@dataclass(frozen=True)
class RestoreDiTConfig:
    """Architecture of a RESTORE-DiT network and its date convention (training settings live elsewhere).

    The defaults are the authors' size (``PRESETS["authors"]``).
    """

    n_optical_bands: int = 10  # upstream in_channels
    n_sar_bands: int = 3  # upstream cond_in_channels; 0 = optical only (no SAR embedding, no cross-attention)
    hidden_size: int = 256
    depth: int = 4
    num_heads: int = 4
    patch_size: int = 4
    mlp_ratio: float = 4.0
    learn_sigma: bool = False  # upstream option: 2 C outputs, of which the first C are x0
    frequency_embedding_size: int = 256  # width of the diffusion-timestep sinusoid
    date_period: float = 10000.0  # the T of the date sinusoid: frequencies 1 / T^(2i/D)
    date_origin: str = DATE_ORIGIN  # frame dates are days since this day (ISO date; xrecon.times.DATE_ORIGIN)
    num_train_timesteps: int = 1000  # the diffusion schedule the network was trained for

    def __post_init__(self) -> None:
        for name in ("n_optical_bands", "hidden_size", "depth", "num_heads", "patch_size",
                     "frequency_embedding_size", "num_train_timesteps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise XreconError(f"RestoreDiTConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.n_sar_bands, bool) or not isinstance(self.n_sar_bands, int) or self.n_sar_bands < 0:
            raise XreconError(f"RestoreDiTConfig.n_sar_bands must be an integer >= 0, got {self.n_sar_bands!r}")
        if self.hidden_size % self.num_heads:
            raise XreconError(f"RestoreDiTConfig.hidden_size ({self.hidden_size}) must be a multiple of "
                              f"num_heads ({self.num_heads})")
        if self.hidden_size % 4:
            # the 2-D position code gives each axis half the width, as sines and cosines
            raise XreconError(f"RestoreDiTConfig.hidden_size must be a multiple of 4, got {self.hidden_size}")
        if self.frequency_embedding_size % 2:
            raise XreconError("RestoreDiTConfig.frequency_embedding_size must be even")
        if not self.mlp_ratio > 0 or not self.date_period > 0:
            raise XreconError("RestoreDiTConfig.mlp_ratio and date_period must be positive")
        try:
            _dt.date.fromisoformat(self.date_origin)
        except (TypeError, ValueError) as err:
            raise XreconError(f"RestoreDiTConfig.date_origin must be an ISO date 'YYYY-MM-DD', "
                              f"got {self.date_origin!r}") from err

    @property
    def out_channels(self) -> int:
        return 2 * self.n_optical_bands if self.learn_sigma else self.n_optical_bands


#: Named architectures. "authors" is the size of the paper (PASTIS-R: 10 S2 bands, 3 S1 channels).
PRESETS: dict[str, RestoreDiTConfig] = {
    "authors": RestoreDiTConfig(),
    "authors-optical": RestoreDiTConfig(n_sar_bands=0),
    "small": RestoreDiTConfig(hidden_size=64, depth=2, num_heads=4),
    "tiny": RestoreDiTConfig(n_optical_bands=4, n_sar_bands=2, hidden_size=32, depth=1, num_heads=2),
}

#: Defaults of upstream ``SDT.__init__`` (what ``from_upstream`` assumes for an argument not given).
UPSTREAM_SDT_DEFAULTS: dict[str, Any] = {
    "input_size": 32, "patch_size": 2, "in_channels": 4, "hidden_size": 1152, "depth": 3, "num_heads": 16,
    "mlp_ratio": 4.0, "class_dropout_prob": 0.1, "num_classes": 1000, "learn_sigma": False, "num_frames": 16,
    "cond_in_channels": 3, "cross_attention": True,
}


# --------------------------------------------------------------------------------------------------
# fixed embeddings (no parameters)

def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``(B,)`` diffusion timesteps -> ``(B, dim)`` sinusoid ``[cos(t f_i), sin(t f_i)]``, f_i = P^(-i/(dim/2)).

    Examples
    --------
    >>> timestep_embedding(torch.tensor([0]), 4)
    tensor([[1., 1., 0., 0.]])
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def date_embedding(days: Tensor, dim: int, period: float = 10000.0) -> Tensor:
    """``(..., )`` days -> ``(..., dim)`` interleaved sinusoid: sin at even, cos at odd positions.

    Position ``j`` has angle ``days / period^(2 floor(j/2) / dim)`` (upstream ``DateEmbedder``; U-TAE's).
    Computed in float64, so dates many years from the origin keep their precision, then cast to float32.

    Examples
    --------
    >>> date_embedding(torch.tensor([0.0]), 4)
    tensor([[0., 1., 0., 1.]])
    """
    wide = torch.float32 if days.device.type == "mps" else torch.float64  # MPS has no float64
    j = torch.arange(dim, device=days.device, dtype=wide)
    denom = period ** (2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (dim,)
    angle = days.to(wide)[..., None] / denom  # (..., dim)
    even = (torch.arange(dim, device=days.device) % 2 == 0)
    return torch.where(even, torch.sin(angle), torch.cos(angle)).float()


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """``(M,)`` float64 positions -> ``(M, dim)`` ``[sin(pos w_i), cos(pos w_i)]``, w_i = 10000^(-i/(dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def position_embedding(dim: int, rows: int, cols: int) -> Tensor:
    """``(rows * cols, dim)`` float32 2-D sin-cos code of a patch grid, row-major like the tokens.

    The first half encodes the column, the second the row (upstream ``get_2d_sincos_pos_embed``, which
    is MAE's, for a square grid; here for any ``rows x cols``). Always computed on the CPU in float64.

    Examples
    --------
    >>> position_embedding(8, 2, 3).shape
    torch.Size([6, 8])
    """
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    return torch.cat([_sincos_1d(dim // 2, c.reshape(-1)), _sincos_1d(dim // 2, r.reshape(-1))], dim=1).float()


def days_since_origin(times: Any, origin: str = DATE_ORIGIN) -> np.ndarray:
    """Dates (anything ``numpy.datetime64`` takes) -> float64 days since ``origin``, the network's date units
    (:func:`xrecon.times.days_since`).

    Examples
    --------
    >>> days_since_origin(["2018-09-01", "2019-09-01T12:00"])
    array([  0. , 365.5])
    """
    return days_since(times, origin)


# --------------------------------------------------------------------------------------------------
# layers

def _heads(x: Tensor, n: int) -> Tensor:
    """``(..., L, D)`` -> ``(..., n, L, D / n)``."""
    return x.unflatten(-1, (n, -1)).transpose(-3, -2)


def _merge(x: Tensor) -> Tensor:
    """``(..., n, L, d)`` -> ``(..., L, n d)``."""
    return x.transpose(-3, -2).flatten(-2)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the second-to-last axis (timm ``Attention`` with qkv bias)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (Z, L, D)
        a = F.scaled_dot_product_attention(_heads(q, self.num_heads), _heads(k, self.num_heads),
                                           _heads(v, self.num_heads), attn_mask=key_mask)  # (Z, h, L, D/h)
        return self.proj(_merge(a))  # (Z, L, D)


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` queries on ``kv`` keys and values (upstream ``CrossAttention``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, kv: Tensor, key_mask: Tensor | None = None) -> Tensor:
        h = self.num_heads
        a = F.scaled_dot_product_attention(_heads(self.q(x), h), _heads(self.k(kv), h), _heads(self.v(kv), h),
                                           attn_mask=key_mask)  # (Z, h, L, D/h)
        return self.proj(_merge(a))  # (Z, L, D)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``(B, T, N, D)`` tokens, ``(B, D)`` shift and scale: one per sequence, for all its frames and patches."""
    return x * (1 + scale[:, None, None]) + shift[:, None, None]


def _over_time(x: Tensor) -> Tensor:
    """``(B, T, N, D)`` -> ``(B N, T, D)``: a sequence per patch position."""
    B, T, N, D = x.shape
    return x.transpose(1, 2).reshape(B * N, T, D)


def _back_from_time(x: Tensor, B: int) -> Tensor:
    """``(B N, T, D)`` -> ``(B, T, N, D)``."""
    BN, T, D = x.shape
    return x.reshape(B, BN // B, T, D).transpose(1, 2)


class Block(nn.Module):
    """SAR cross-attention (optional), temporal and spatial self-attention, MLP; each adaLN-Zero."""

    def __init__(self, c: RestoreDiTConfig) -> None:
        super().__init__()
        D, H = c.hidden_size, c.num_heads
        self.with_sar = c.n_sar_bands > 0
        if self.with_sar:
            self.cross_norm_x = nn.LayerNorm(D)
            self.cross_norm_sar = nn.LayerNorm(D)
            self.cross_spatial = CrossAttention(D, H)
            self.cross_temporal = CrossAttention(D, H)
            self.cross_ada = nn.Linear(D, 3 * D)
        self.temporal_norm = nn.LayerNorm(D)
        self.temporal_attn = SelfAttention(D, H)
        self.temporal_ada = nn.Linear(D, 3 * D)
        self.spatial_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.spatial_attn = SelfAttention(D, H)
        self.spatial_ada = nn.Linear(D, 3 * D)
        self.mlp_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp_fc1 = nn.Linear(D, int(D * c.mlp_ratio))
        self.mlp_fc2 = nn.Linear(int(D * c.mlp_ratio), D)
        self.mlp_ada = nn.Linear(D, 3 * D)

    def forward(self, x: Tensor, c: Tensor, sar: Tensor | None, key_mask: Tensor | None) -> Tensor:
        B, T, N, D = x.shape  # x: (B, T, N, D) tokens; c: (B, D) = silu(timestep code); sar like x or None
        if self.with_sar and sar is not None:
            shift, scale, gate = self.cross_ada(c).chunk(3, dim=1)  # 3 x (B, D)
            q = _modulate(self.cross_norm_x(x), shift, scale)  # (B, T, N, D)
            s = self.cross_norm_sar(sar)  # (B, T, N, D)
            r = self.cross_spatial(q.reshape(B * T, N, D), s.reshape(B * T, N, D))  # (B T, N, D) within frames
            r = self.cross_temporal(_over_time(r.view(B, T, N, D)), _over_time(s), key_mask)  # (B N, T, D)
            x = x + gate[:, None, None] * _back_from_time(r, B)  # (B, T, N, D)
        shift, scale, gate = self.temporal_ada(c).chunk(3, dim=1)  # 3 x (B, D)
        a = self.temporal_attn(_over_time(_modulate(self.temporal_norm(x), shift, scale)), key_mask)  # (B N, T, D)
        x = x + gate[:, None, None] * _back_from_time(a, B)  # (B, T, N, D)
        shift, scale, gate = self.spatial_ada(c).chunk(3, dim=1)
        a = self.spatial_attn(_modulate(self.spatial_norm(x), shift, scale).reshape(B * T, N, D))  # (B T, N, D)
        x = x + gate[:, None, None] * a.view(B, T, N, D)  # (B, T, N, D)
        shift, scale, gate = self.mlp_ada(c).chunk(3, dim=1)
        m = _modulate(self.mlp_norm(x), shift, scale)  # (B, T, N, D)
        m = self.mlp_fc2(F.gelu(self.mlp_fc1(m), approximate="tanh"))  # (B, T, N, D)
        return x + gate[:, None, None] * m  # (B, T, N, D)


# --------------------------------------------------------------------------------------------------
# the network

@register_model("restore-dit")
class RestoreDiT(XreconModel):
    """The RESTORE-DiT denoiser, with its normalization buffers, band names and date convention.

    Attributes
    ----------
    config : RestoreDiTConfig
    optical_bands, sar_bands : list of str or None
        Band names in input order (``None`` if unknown).
    optical_offset, optical_scale : Tensor (C,)
        Model units = clamp((reflectance - offset) / scale, -1, 1); upstream: 0.4 and 0.4, which is its
        ``clamp(DN, 0, 8000) / 8000`` rescaled to [-1, 1] for reflectance in 0-1 units.
    sar_offset, sar_scale : Tensor (S,)
        Model units = clamp((backscatter - offset) / scale, -1, 1); upstream: its per-band mean and twice its
        standard deviation (``clamp((s - mean) / std, -2, 2) / 2``).
    normalization : dict of str to numpy.ndarray
        Copies of these four buffers (read-only property; :meth:`set_normalization` sets them).
    """

    config_class = RestoreDiTConfig

    def __init__(self, config: RestoreDiTConfig | None = None) -> None:
        c = config or RestoreDiTConfig()
        super().__init__(c)
        C, S, D, p = c.n_optical_bands, c.n_sar_bands, c.hidden_size, c.patch_size
        self.x_embed = nn.Conv2d(C, D, kernel_size=p, stride=p)
        if S:
            self.sar_embed = nn.Conv2d(S, D, kernel_size=p, stride=p)
        self.t_embed = nn.Sequential(nn.Linear(c.frequency_embedding_size, D), nn.SiLU(), nn.Linear(D, D))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.final_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(D, 2 * D)
        self.final_linear = nn.Linear(D, p * p * c.out_channels)
        self.register_buffer("optical_offset", torch.full((C,), 0.4))
        self.register_buffer("optical_scale", torch.full((C,), 0.4))
        self.register_buffer("sar_offset", torch.zeros(S))
        self.register_buffer("sar_scale", torch.ones(S))
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT's: xavier linears, zeroed adaLN and output layers (adaLN-Zero: a new network is the identity
        # of its blocks and predicts 0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for conv in (self.x_embed, getattr(self, "sar_embed", None)):
            if conv is not None:
                nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
                nn.init.zeros_(conv.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        for name, m in self.named_modules():
            if name.endswith("_ada") or name == "final_linear":
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------------------------
    # units

    @property
    def normalization(self) -> dict[str, np.ndarray]:
        """The affine maps to model units, as float32 numpy copies of the buffers.

        Keys ``optical_offset``, ``optical_scale`` (C,) and ``sar_offset``, ``sar_scale`` (S,) (empty for
        an optical-only network); see :meth:`to_model_units`. The trainer records them in a checkpoint's
        provenance; change them with :meth:`set_normalization`.

        Examples
        --------
        >>> model = RestoreDiT(PRESETS["tiny"])
        >>> {k: v.astype(float).round(3).tolist() for k, v in model.normalization.items()}
        ... # doctest: +NORMALIZE_WHITESPACE
        {'optical_offset': [0.4, 0.4, 0.4, 0.4], 'optical_scale': [0.4, 0.4, 0.4, 0.4],
         'sar_offset': [0.0, 0.0], 'sar_scale': [1.0, 1.0]}
        """
        return {k: getattr(self, k).detach().cpu().numpy().copy() for k in _UNIT_BUFFERS}

    def set_normalization(self, optical_offset: float | Sequence[float], optical_scale: float | Sequence[float],
                          sar_offset: float | Sequence[float] | None = None,
                          sar_scale: float | Sequence[float] | None = None) -> None:
        """Set the affine maps to model units: one value for every band or one per band.

        Parameters
        ----------
        optical_offset, optical_scale : float or sequence of float
            Model units = clamp((reflectance - offset) / scale, -1, 1); (C,) or one value.
        sar_offset, sar_scale : float or sequence of float, optional
            The same for backscatter in dB, (S,) or one value; None leaves them as they are.

        Raises
        ------
        XreconError
            For values that are not finite, scales that are not positive, or a number of values that
            is neither 1 nor the number of bands.

        Examples
        --------
        >>> model = RestoreDiT(PRESETS["tiny"])
        >>> model.set_normalization([0.125, 0.125, 0.25, 0.5], 0.375, sar_offset=-12.0, sar_scale=[8.0, 6.0])
        >>> model.normalization["optical_offset"].tolist(), model.sar_scale.tolist()
        ([0.125, 0.125, 0.25, 0.5], [8.0, 6.0])
        """
        values = {"optical_offset": optical_offset, "optical_scale": optical_scale,
                  "sar_offset": sar_offset, "sar_scale": sar_scale}
        checked = {}
        for name, value in values.items():
            if value is None:
                if name.startswith("optical"):
                    raise XreconError(f"{name} is required")
                continue
            buf = getattr(self, name)
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
            if arr.size not in (1, buf.numel()) or not np.isfinite(arr).all() \
                    or (name.endswith("scale") and (arr <= 0).any()):
                what = " > 0" if name.endswith("scale") else ""
                raise XreconError(f"{name} must be one finite value{what} or one per band ({buf.numel()}), "
                                  f"got {np.asarray(value).tolist()!r}")
            checked[name] = np.broadcast_to(arr, buf.shape).copy()
        with torch.no_grad():
            for name, arr in checked.items():
                buf = getattr(self, name)
                buf.copy_(torch.as_tensor(arr, dtype=buf.dtype, device=buf.device))

    def to_model_units(self, optical: Tensor) -> Tensor:
        """``(..., C, H, W)`` reflectance -> model units in [-1, 1]."""
        o, s = self.optical_offset[:, None, None], self.optical_scale[:, None, None]
        return ((optical - o) / s).clamp(-1, 1)

    def from_model_units(self, y: Tensor) -> Tensor:
        """``(..., C, H, W)`` model units -> reflectance."""
        return y * self.optical_scale[:, None, None] + self.optical_offset[:, None, None]

    def sar_to_model_units(self, sar: Tensor) -> Tensor:
        """``(..., S, H, W)`` backscatter -> model units in [-1, 1]."""
        o, s = self.sar_offset[:, None, None], self.sar_scale[:, None, None]
        return ((sar - o) / s).clamp(-1, 1)

    # ----------------------------------------------------------------------------------------------
    # network, in model units

    def _embed(self, conv: nn.Conv2d, x: Tensor, pos: Tensor, frame: Tensor) -> Tensor:
        B, T, C, H, W = x.shape
        tok = conv(x.reshape(B * T, C, H, W)).flatten(2).transpose(1, 2)  # (B T, N, D), row-major patches
        return tok.view(B, T, -1, tok.shape[-1]) + pos + frame[:, :, None]  # (B, T, N, D)

    def forward(self, x: Tensor, t: Tensor, dates: Tensor | None = None, sar: Tensor | None = None,
                valid: Tensor | None = None) -> Tensor:
        """Noisy sequence ``(B, T, C, H, W)`` -> the network's output ``(B, T, out_channels, H, W)``.

        ``t`` (B,) diffusion timesteps, ``dates`` (B, T) days since ``config.date_origin`` (None: the frame
        index, as upstream without dates), ``sar`` (B, T, S, H, W) or None (the blocks then skip the
        cross-attention), ``valid`` (B, T) bool or None: frames marked False take no part in temporal
        attention (as keys), so a padded frame changes nothing in the others. Inputs are not checked here;
        :meth:`denoise` checks them.
        """
        c = self.config
        B, T, C, H, W = x.shape
        p, D = c.patch_size, c.hidden_size
        h, w = H // p, W // p
        pos = position_embedding(D, h, w).to(device=x.device, dtype=x.dtype)  # (N, D)
        if dates is None:
            frame = _sincos_1d(D, torch.arange(T, dtype=torch.float64)).to(x.device, x.dtype).expand(B, T, D)
        else:
            frame = date_embedding(dates, D, c.date_period).to(x.dtype)  # (B, T, D)
        tokens = self._embed(self.x_embed, x, pos, frame)  # (B, T, N, D)
        sar_tokens = None
        if sar is not None and c.n_sar_bands:
            sar_tokens = self._embed(self.sar_embed, sar, pos, frame)  # (B, T, N, D)
        cond = F.silu(self.t_embed(timestep_embedding(t, c.frequency_embedding_size).to(x.dtype)))  # (B, D)
        key_mask = None
        if valid is not None:  # no test of its values here: that would wait for the GPU
            key_mask = valid.to(device=x.device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, T)
            key_mask = key_mask.expand(B, h * w, 1, T).reshape(B * h * w, 1, 1, T)  # (B N, 1, 1, T)
        for block in self.blocks:
            tokens = block(tokens, cond, sar_tokens, key_mask)  # (B, T, N, D)
        shift, scale = self.final_ada(cond).chunk(2, dim=1)  # 2 x (B, D)
        out = self.final_linear(_modulate(self.final_norm(tokens), shift, scale))  # (B, T, N, p p Co)
        out = out.view(B, T, h, w, p, p, c.out_channels)  # (B, T, h, w, p, p, Co)
        return out.permute(0, 1, 6, 2, 4, 3, 5).reshape(B, T, c.out_channels, H, W)  # (B, T, Co, H, W)

    def check_inputs(self, x: Tensor, t: Tensor | int, dates: Tensor | None, sar: Tensor | None,
                     valid: Tensor | None = None) -> Tensor:
        """Check the shapes of :meth:`denoise`'s inputs; returns ``t`` as a (B,) tensor on ``x``'s device."""
        c = self.config
        if x.ndim != 5 or x.shape[2] != c.n_optical_bands:
            raise XreconError(f"x must be (B, T, {c.n_optical_bands}, H, W), got {tuple(x.shape)}")
        B, T, _, H, W = x.shape
        if H % c.patch_size or W % c.patch_size or H == 0 or W == 0:
            raise TileSizeError(f"tile height and width must be positive multiples of the patch size "
                                f"{c.patch_size}, got {H} x {W}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise XreconError(f"t must be a scalar or of shape (B,) = ({B},), got {tuple(t.shape)}")
        if dates is not None and tuple(dates.shape) != (B, T):
            raise XreconError(f"dates must be (B, T) = ({B}, {T}), got {tuple(dates.shape)}")
        if sar is not None:
            if not c.n_sar_bands:
                raise XreconError("this RESTORE-DiT has no SAR branch (n_sar_bands=0); pass sar=None")
            if tuple(sar.shape) != (B, T, c.n_sar_bands, H, W):
                raise XreconError(f"sar must be (B, T, S, H, W) = {(B, T, c.n_sar_bands, H, W)}, "
                                  f"got {tuple(sar.shape)}")
        if valid is not None:
            if tuple(valid.shape) != (B, T):
                raise XreconError(f"valid must be (B, T) = ({B}, {T}), got {tuple(valid.shape)}")
            if not bool(valid.bool().any(dim=1).all()):
                raise XreconError("every sequence needs at least one valid frame")
        return t

    def denoise(self, x: Tensor, t: Tensor | int, dates: Tensor | None = None, sar: Tensor | None = None, *,
                valid: Tensor | None = None) -> Tensor:
        """The network's clean-sequence (x0) prediction, in model units.

        Parameters
        ----------
        x
            ``(B, T, C, H, W)`` model input (upstream: noisy where reconstructed, clean where observed);
            H and W multiples of ``config.patch_size``.
        t
            ``(B,)`` diffusion timesteps (or one for the whole batch).
        dates
            ``(B, T)`` days since ``config.date_origin``, or None (frame index, as upstream without dates).
        sar
            ``(B, T, S, H, W)`` SAR aligned to the frames, model units, or None.
        valid
            ``(B, T)`` bool, False for padding frames, which then take no part in temporal attention.

        Returns
        -------
        Tensor
            ``(B, T, C, H, W)``, on ``x``'s device.

        Raises
        ------
        TileSizeError
            If H or W is not a multiple of the patch size.
        XreconError
            For other shapes that do not fit.
        """
        t = self.check_inputs(x, t, dates, sar, valid)
        return self(x, t, dates, sar, valid)[:, :, : self.config.n_optical_bands]
