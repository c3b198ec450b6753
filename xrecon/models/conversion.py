"""Foreign checkpoints made into xrecon models: the official AnytimeFormer release and upstream RESTORE-DiT.

Each conversion reads a file of the authors' code, maps its parameter names onto the xrecon network's,
checks what the weights cannot tell (shapes, fixed tables) and returns a model with the normalization
given, which ``model.save`` turns into a self-contained xrecon checkpoint. The model files hold the networks
and their configs; ``xrecon.models`` binds these functions under the names API.md spells
(``anytimeformer.from_official``, ``restore_dit.from_upstream``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from xrecon.errors import CheckpointError, MethodError, XreconError
from xrecon.models.anytimeformer import OFFICIAL_OPTICAL_BANDS, OFFICIAL_SAR_BANDS, AnytimeFormer, AnytimeFormerConfig
from xrecon.models.restore_dit import UPSTREAM_SDT_DEFAULTS, RestoreDiT, RestoreDiTConfig, position_embedding
from xrecon.runtime import file_sha256, resolve_device
from xrecon.times import DATE_ORIGIN

__all__ = ["from_official", "from_upstream"]


def _torch_load(path: Path, origin: str, kind: str) -> Any:
    """An authors' file loaded safely on the CPU (``weights_only``); CheckpointError when it is missing or
    unreadable (truncated, foreign or unsafe)."""
    if not path.is_file():
        raise CheckpointError(f"{origin} file not found: {os.fspath(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign or unsafe file
        raise CheckpointError(f"{path.name!r} is not a readable PyTorch {kind} "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err


# --------------------------------------------------------------------------------------------------
# AnytimeFormer: the official release


def _official_key_map(n_groups: int, with_sar: bool) -> dict[str, tuple[str, ...]]:
    """xrecon parameter name -> the upstream parameter(s) it is made of (several are concatenated)."""
    m: dict[str, tuple[str, ...]] = {"embed_optical.weight": ("embedding_X.weight",),
                                     "head.weight": ("reduce_dim.weight",), "head.bias": ("reduce_dim.bias",)}

    def block(ours: str, theirs: str) -> None:
        a = f"{theirs}.slf_attn"
        m[f"{ours}.qkv.weight"] = (f"{a}.w_qs.weight", f"{a}.w_ks.weight", f"{a}.w_vs.weight")
        m[f"{ours}.proj.weight"] = (f"{a}.fc.weight",)
        for p in ("weight", "bias"):
            m[f"{ours}.norm1.{p}"] = (f"{theirs}.layer_norm.{p}",)
            m[f"{ours}.ffn_in.{p}"] = (f"{theirs}.pos_ffn.w_1.{p}",)
            m[f"{ours}.ffn_out.{p}"] = (f"{theirs}.pos_ffn.w_2.{p}",)
            m[f"{ours}.norm2.{p}"] = (f"{theirs}.pos_ffn.layer_norm.{p}",)

    def cross(ours: str, theirs: str) -> None:
        for a, b in (("q", "w_qs"), ("k", "w_ks"), ("v", "w_vs"), ("proj", "fc")):
            m[f"{ours}.{a}.weight"] = (f"{theirs}.{b}.weight",)

    for i in range(n_groups):
        block(f"encoder.{i}", f"encoder.{i}")
    cross("decoder", "decoder.timeindex_attn")
    if with_sar:
        m["embed_sar.weight"] = ("embedding_X_aux.linear.weight",)
        cross("align", "timealign_attention")
        m["fusion.w_optical"] = ("tensorfusion.w_x",)
        m["fusion.w_sar"] = ("tensorfusion.w_x_aux",)
        block("fusion_block", "multimodal_encoder")
    return m


def from_official(
    path: str | os.PathLike,
    optical_mean: Sequence[float],
    optical_std: Sequence[float],
    sar_mean: Sequence[float] | None = None,
    sar_std: Sequence[float] | None = None,
    *,
    optical_bands: Sequence[str] | None = OFFICIAL_OPTICAL_BANDS,
    sar_bands: Sequence[str] | None = OFFICIAL_SAR_BANDS,
    n_heads: int = 4,
    n_group_inner_layers: int = 1,
    diagonal_mask: bool = True,
    device: str | torch.device | None = None,
) -> AnytimeFormer:
    """An :class:`AnytimeFormer` with the weights of an official AnytimeFormer release file.

    The official ``.ckpt`` files are bare PyTorch state dicts without normalization statistics
    (upstream keeps them in its HDF data files), so those are given here and stored in the model;
    ``model.save`` then writes a self-contained xrecon checkpoint.

    Parameters
    ----------
    path
        An upstream checkpoint such as ``best_model_40%.ckpt`` or ``best_model_anytime.ckpt``.
    optical_mean, optical_std
        Per-band reflectance statistics (0-1 units) the model was trained with (upstream
        ``X_mean``, ``X_std``), in the band order of ``optical_bands``.
    sar_mean, sar_std
        Per-band backscatter statistics in dB (upstream ``X_aux_mean``, ``X_aux_std``); required
        for a model with SAR.
    optical_bands, sar_bands
        Band names stored with the model (default: the official model's, see
        :data:`OFFICIAL_OPTICAL_BANDS`); ``None`` if unknown.
    n_heads, n_group_inner_layers, diagonal_mask
        Settings the weights cannot tell; the defaults are the official configuration.
    device
        Where to put the model: None = "cuda" if available, else "cpu".

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable, or not an AnytimeFormer state dict.

    Examples
    --------
    >>> from xrecon.models import anytimeformer
    >>> model = anytimeformer.from_official(  # doctest: +SKIP
    ...     "best_model_40%.ckpt",
    ...     optical_mean=[0.045, 0.072, 0.065, 0.105, 0.205, 0.245, 0.262, 0.275, 0.198, 0.122],
    ...     optical_std=[0.03, 0.032, 0.042, 0.041, 0.068, 0.088, 0.097, 0.099, 0.071, 0.062],
    ...     sar_mean=[-12.0, -18.0], sar_std=[3.0, 3.5])
    >>> model.save("anytimeformer_germany_40pct.xrecon")  # doctest: +SKIP
    """
    path = Path(path)
    sd = _torch_load(path, "official checkpoint", "state dict")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # tolerate a wrapped state dict
    need = ("embedding_X.weight", "reduce_dim.weight", "decoder.timeindex_attn.w_qs.weight")
    if not isinstance(sd, dict) or any(k not in sd for k in need):
        raise CheckpointError(f"{path.name!r} is not an official AnytimeFormer checkpoint "
                              f"(expected a state dict with {', '.join(need)})")
    D, C = sd["embedding_X.weight"].shape
    with_sar = "tensorfusion.w_x" in sd
    n_groups = len({k.split(".")[1] for k in sd if k.startswith("encoder.")})
    hd = sd["decoder.timeindex_attn.w_qs.weight"].shape[0]
    hv = sd["decoder.timeindex_attn.w_vs.weight"].shape[0]
    if hd % n_heads or hv % n_heads:
        raise CheckpointError(f"{path.name!r}: attention width {hd} is not divisible by n_heads={n_heads}")
    try:
        config = AnytimeFormerConfig(
            n_optical_bands=C,
            n_sar_bands=sd["embedding_X_aux.linear.weight"].shape[1] if with_sar else 0,
            d_model=D, d_inner=sd["encoder.0.pos_ffn.w_1.weight"].shape[0] if n_groups else D,
            n_heads=n_heads, d_k=hd // n_heads, d_v=hv // n_heads, n_groups=n_groups,
            n_group_inner_layers=n_group_inner_layers,
            fusion_rank=sd["tensorfusion.w_x"].shape[0] if with_sar else 1,
            diagonal_mask=diagonal_mask,
        )
        model = AnytimeFormer(config)
        ours = {}
        for name, theirs in _official_key_map(n_groups, with_sar).items():
            ours[name] = torch.cat([sd[k] for k in theirs], 0)
    except KeyError as err:
        raise CheckpointError(f"{path.name!r} lacks the AnytimeFormer parameter {err.args[0]!r}") from err
    ours.update({k: v for k, v in model.state_dict().items() if k.endswith(("_mean", "_std"))})
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path.name!r} does not fit the AnytimeFormer architecture: {err}") from err
    if "position_enc.pos_table" in sd:
        # The official model carries its time code as a table: check ours gives the same numbers.
        table = sd["position_enc.pos_table"]
        ref = model.time_code(torch.arange(table.shape[0], dtype=torch.float32))
        if table.shape != ref.shape or not torch.allclose(table, ref, atol=1e-6):
            raise CheckpointError(f"{path.name!r} uses a time encoding xrecon does not reproduce")
    model.set_normalization(optical_mean, optical_std, sar_mean, sar_std)
    for names, n, what in ((optical_bands, C, "optical_bands"), (sar_bands, config.n_sar_bands, "sar_bands")):
        if names is not None and len(names) != n:
            raise XreconError(f"{what} must name {n} band(s), got {list(names)!r}")
    model.optical_bands = None if optical_bands is None else list(optical_bands)
    model.sar_bands = None if (sar_bands is None or not config.n_sar_bands) else list(sar_bands)
    model.metadata = {"source": "official AnytimeFormer release (tangkai-RS/AnytimeFormer, Apache-2.0)",
                      "official_file": path.name, "official_sha256": file_sha256(path)}
    return model.eval().to(resolve_device(device))


# --------------------------------------------------------------------------------------------------
# RESTORE-DiT: upstream SDT checkpoints

def _upstream_names(depth: int, with_sar: bool) -> tuple[dict[str, str], set[str]]:
    """Upstream ``SDT`` state-dict names -> ours, and the upstream names that are read but not used."""
    names: dict[str, str] = {}
    unused = {"pos_embed", "time_embed", "y_embedder.embedding_table.weight"}  # fixed tables; class labels

    def pair(up: str, ours: str, use: bool = True) -> None:
        for kind in ("weight", "bias"):
            if use:
                names[f"{up}.{kind}"] = f"{ours}.{kind}"
            else:
                unused.add(f"{up}.{kind}")

    pair("x_embedder.proj", "x_embed")
    pair("cond_embedder.proj", "sar_embed", with_sar)  # upstream builds it whatever cross_attention says
    pair("t_embedder.mlp.0", "t_embed.0")
    pair("t_embedder.mlp.2", "t_embed.2")
    pair("final_layer.linear", "final_linear")
    pair("final_layer.adaLN_modulation.1", "final_ada")
    for i in range(depth):
        up, ours = f"blocks.{i}", f"blocks.{i}"
        cab = f"{up}.CrossAttentionBlock"
        cross_names = {f"{cab}.norm_x": f"{ours}.cross_norm_x", f"{cab}.norm_SAR": f"{ours}.cross_norm_sar",
                       f"{cab}.adaLN_modulation.1": f"{ours}.cross_ada"}
        for which in ("spatial", "temporal"):
            for proj in ("q", "k", "v"):
                cross_names[f"{cab}.{which}_attn.w{proj}"] = f"{ours}.cross_{which}.{proj}"
            cross_names[f"{cab}.{which}_attn.proj"] = f"{ours}.cross_{which}.proj"
        for u, o in cross_names.items():
            pair(u, o, with_sar)  # upstream builds this block always, and skips it when cross_attention=False
        pair(f"{up}.TemporalBlock.temporal_norm1", f"{ours}.temporal_norm")
        pair(f"{up}.TemporalBlock.temporal_attn.qkv", f"{ours}.temporal_attn.qkv")
        pair(f"{up}.TemporalBlock.temporal_attn.proj", f"{ours}.temporal_attn.proj")
        pair(f"{up}.TemporalBlock.adaLN_modulation.1", f"{ours}.temporal_ada")
        pair(f"{up}.SpatialBlock.attn.qkv", f"{ours}.spatial_attn.qkv")
        pair(f"{up}.SpatialBlock.attn.proj", f"{ours}.spatial_attn.proj")
        pair(f"{up}.SpatialBlock.adaLN_modulation.1", f"{ours}.spatial_ada")
        pair(f"{up}.mlp.fc1", f"{ours}.mlp_fc1")
        pair(f"{up}.mlp.fc2", f"{ours}.mlp_fc2")
        pair(f"{up}.adaLN_modulation.1", f"{ours}.mlp_ada")
    return names, unused


def _short(keys: Sequence[str], n: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def from_upstream(
    path: str | os.PathLike,
    *,
    optical_bands: Sequence[str] | None = None,
    sar_bands: Sequence[str] | None = None,
    optical_offset: float | Sequence[float] = 0.4,
    optical_scale: float | Sequence[float] = 0.4,
    sar_offset: float | Sequence[float] = 0.0,
    sar_scale: float | Sequence[float] = 1.0,
    date_origin: str = DATE_ORIGIN,
    device: str | torch.device | None = None,
    **sdt_kwargs: Any,
) -> RestoreDiT:
    """A :class:`RestoreDiT` with the weights of an upstream RESTORE-DiT (``SDT``) training checkpoint.

    Parameters
    ----------
    path
        A file written by upstream's trainer: ``{"epoch": ..., "model_state_dict": {...}}``, keys prefixed
        with ``module.`` (``DataParallel``); a bare ``SDT`` state dict is taken too.
    **sdt_kwargs
        The arguments upstream's ``SDT(...)`` was built with (``patch_size``, ``in_channels``,
        ``hidden_size``, ``depth``, ``num_heads``, ``mlp_ratio``, ``cond_in_channels``, ``cross_attention``,
        ``learn_sigma``, ``input_size``, ``num_frames``, ...); those not given take ``SDT``'s defaults
        (:data:`UPSTREAM_SDT_DEFAULTS`). ``input_size`` and ``num_frames`` only sized upstream's fixed tables;
        this network computes them for each input.
    optical_bands, sar_bands
        Band names stored with the model; ``None`` if unknown.
    optical_offset, optical_scale, sar_offset, sar_scale
        The normalization (see :class:`RestoreDiT`), per band or one for all; upstream keeps its SAR
        statistics in its data files, so give ``sar_offset=mean`` and ``sar_scale=2 * std``.
    date_origin
        The day the checkpoint's frame dates count from (upstream PASTIS: 2018-09-01).
    device
        Where to put the model: None = "cuda" if available, else "cpu".

    Raises
    ------
    CheckpointError
        If the file is missing or unreadable, holds names this mapping does not know or lacks some it
        needs (both listed), or tensors whose shapes do not fit the ``SDT`` arguments.

    Examples
    --------
    >>> from xrecon.models import restore_dit
    >>> model = restore_dit.from_upstream("checkpoint.pth", input_size=128, patch_size=4,  # doctest: +SKIP
    ...     in_channels=10, hidden_size=256, depth=4, num_heads=4, num_frames=15, cond_in_channels=3)
    >>> model.save("restore_dit.xrecon")  # doctest: +SKIP
    """
    unknown_args = set(sdt_kwargs) - set(UPSTREAM_SDT_DEFAULTS)
    if unknown_args:
        raise MethodError(f"SDT takes no arguments {sorted(unknown_args)}; its arguments are "
                          f"{sorted(UPSTREAM_SDT_DEFAULTS)}")
    a = {**UPSTREAM_SDT_DEFAULTS, **sdt_kwargs}
    path = Path(path)
    payload = _torch_load(path, "upstream checkpoint", "checkpoint")
    sd = payload.get("model_state_dict", payload) if isinstance(payload, Mapping) else None
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path.name!r} is not an upstream RESTORE-DiT checkpoint "
                              "(expected {'model_state_dict': {name: tensor}})")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}

    cond = int(a["cond_in_channels"]) > 0 and bool(a["cross_attention"])
    try:
        config = RestoreDiTConfig(
            n_optical_bands=int(a["in_channels"]), n_sar_bands=int(a["cond_in_channels"]) if cond else 0,
            hidden_size=int(a["hidden_size"]), depth=int(a["depth"]), num_heads=int(a["num_heads"]),
            patch_size=int(a["patch_size"]), mlp_ratio=float(a["mlp_ratio"]), learn_sigma=bool(a["learn_sigma"]),
            date_origin=date_origin)
    except XreconError as err:
        raise CheckpointError(f"SDT arguments do not make a RESTORE-DiT: {err}") from err
    names, unused = _upstream_names(config.depth, cond)
    unknown = set(sd) - set(names) - unused
    missing = set(names) - set(sd)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"names it does not know: {_short(list(unknown))}")
        if missing:
            parts.append(f"missing names: {_short(list(missing))}")
        raise CheckpointError(f"{path.name!r} does not fit SDT(depth={config.depth}, "
                              f"cross_attention={a['cross_attention']}): " + "; ".join(parts))

    model = RestoreDiT(config)
    own = model.state_dict()
    state = {}
    for up, ours in names.items():
        if tuple(sd[up].shape) != tuple(own[ours].shape):
            raise CheckpointError(f"{path.name!r}: {up!r} has shape {tuple(sd[up].shape)}, SDT arguments give "
                                  f"{tuple(own[ours].shape)}; check the SDT arguments")
        state[ours] = sd[up].float()
    if "pos_embed" in sd:
        # upstream's frozen table: checks the grid orientation and size the arguments claim
        n = sd["pos_embed"].shape[1]
        g = math.isqrt(n)
        want = int(a["input_size"]) // config.patch_size
        if g != want or g * g != n:
            raise CheckpointError(f"{path.name!r}: pos_embed has {n} positions, input_size={a['input_size']} and "
                                  f"patch_size={config.patch_size} give {want}x{want}")
        if not torch.allclose(sd["pos_embed"][0].float(), position_embedding(config.hidden_size, g, g), atol=1e-5):
            raise CheckpointError(f"{path.name!r}: pos_embed is not upstream's fixed 2-D sin-cos table")
    units = {"optical_offset": optical_offset, "optical_scale": optical_scale,
             "sar_offset": sar_offset, "sar_scale": sar_scale}
    for name, value in units.items():
        value = torch.as_tensor(value, dtype=torch.float32)
        if value.ndim > 1 or value.numel() not in (1, own[name].numel()):
            raise XreconError(f"{name} must be one value or one per band ({own[name].numel()}), got {value.tolist()}")
        state[name] = value.expand_as(own[name]).clone()
    model.load_state_dict(state, strict=True)
    model.optical_bands = None if optical_bands is None else list(optical_bands)
    model.sar_bands = None if sar_bands is None else list(sar_bands)
    if model.optical_bands is not None and len(model.optical_bands) != config.n_optical_bands:
        raise XreconError(f"optical_bands has {len(model.optical_bands)} names, the model {config.n_optical_bands}")
    if model.sar_bands is not None and len(model.sar_bands) != config.n_sar_bands:
        raise XreconError(f"sar_bands has {len(model.sar_bands)} names, the model {config.n_sar_bands}")
    model.metadata = {"source": "upstream SDT checkpoint", "file": path.name,
                      "sdt_arguments": {k: (v if isinstance(v, str | int | float | bool) else str(v))
                                        for k, v in a.items()}}
    if isinstance(payload, Mapping) and isinstance(payload.get("epoch"), int):
        model.metadata["epoch"] = payload["epoch"]
    return model.eval().to(resolve_device(device))
