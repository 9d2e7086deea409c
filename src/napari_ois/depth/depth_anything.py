"""Depth Anything V2 (relative depth), written for napari-ois.

A DINOv2-style ViT encoder (patch 14, class token, learned position embedding for a
518 x 518 input, i.e. a 37 x 37 grid + 1, interpolated bicubically to other grids, LayerScale)
followed by a DPT head. Module and parameter names reproduce the layout of the published
checkpoints ``depth_anything_v2_vit{s,b,l}.pth`` (top-level prefixes ``pretrained.`` for the
encoder and ``depth_head.`` for the head), so those files load with ``strict=True``.

Published settings (checked against ``depth_anything_v2/dpt.py`` and ``dinov2.py`` of
DepthAnything/Depth-Anything-V2):

======  =====  =====  =====  ========  =====================  ==============
name    embed  depth  heads  features  out_channels           layers used
======  =====  =====  =====  ========  =====================  ==============
vits    384    12     6      64        48, 96, 192, 384       2, 5, 8, 11
vitb    768    12     12     128       96, 192, 384, 768      2, 5, 8, 11
vitl    1024   24     16     256       256, 512, 1024, 1024   4, 11, 17, 23
======  =====  =====  =====  ========  =====================  ==============

All use MLP ratio 4, qkv/proj/ffn biases, LayerNorm eps 1e-6, LayerScale, no register
tokens, position-embedding interpolation offset 0.1 without antialiasing, and a DPT head
without batch norm and without the class-token readout.

The network maps an ImageNet-normalised ``(B, 3, H, W)`` batch whose sides are multiples of
14 to relative inverse depth ``(B, H, W)`` (non-negative, larger = nearer; the scale and shift
are arbitrary per image).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

PATCH_SIZE = 14
#: the network's input normalisation (ImageNet statistics, as the reference transform)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "imagenet_normalize",
    "DepthAnythingConfig",
    "DEPTH_ANYTHING_PRESETS",
    "DepthAnythingV2",
    "resolve_depth_anything_config",
    "read_state_dict",
    "describe_state_dict",
    "state_dict_mismatch",
    "load_depth_anything_checkpoint",
]


def imagenet_normalize(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] -> ImageNet-normalised: the network's input."""
    mean = rgb.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = rgb.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthAnythingConfig:
    """Hyper-parameters of a Depth Anything V2 network.

    Use :meth:`preset` for the published encoders and :meth:`tiny` for a small random
    network (tests, smoke runs).
    """

    name: str = "vits"
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    patch_size: int = PATCH_SIZE
    img_size: int = 518  # the position embedding covers (img_size // patch_size) ** 2 patches
    features: int = 64
    out_channels: Tuple[int, int, int, int] = (48, 96, 192, 384)
    intermediate_layers: Tuple[int, int, int, int] = (2, 5, 8, 11)
    head_features_2: int = 32
    layerscale_init: float = 1.0
    interpolate_offset: float = 0.1

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if len(self.out_channels) != 4 or len(self.intermediate_layers) != 4:
            raise ValueError("out_channels and intermediate_layers need exactly 4 entries")
        if any(not 0 <= i < self.depth for i in self.intermediate_layers):
            raise ValueError(
                f"intermediate_layers {self.intermediate_layers} out of range for depth "
                f"{self.depth}"
            )
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of {self.patch_size}")

    @property
    def grid(self) -> int:
        """Side of the square patch grid the stored position embedding was trained for."""
        return self.img_size // self.patch_size

    @classmethod
    def preset(cls, encoder: str) -> "DepthAnythingConfig":
        """The published settings of ``"vits"``, ``"vitb"`` or ``"vitl"`` (aliases accepted:
        ``"small"``, ``"depth-anything-v2-base"``, ...)."""
        key = _ENCODER_ALIASES.get(str(encoder).strip().lower())
        if key is None:
            raise ValueError(
                f"unknown Depth Anything V2 encoder {encoder!r}; expected one of "
                f"{sorted(DEPTH_ANYTHING_PRESETS)} (or small/base/large)"
            )
        return DEPTH_ANYTHING_PRESETS[key]

    @classmethod
    def tiny(
        cls,
        embed_dim: int = 32,
        depth: int = 4,
        num_heads: int = 2,
        features: int = 8,
        out_channels: Sequence[int] = (8, 16, 32, 32),
        img_size: int = 98,
    ) -> "DepthAnythingConfig":
        """A small network with the same structure (for tests and smoke runs)."""
        layers = tuple(max(0, (depth * k) // 4 - 1) for k in (1, 2, 3, 4))
        return cls(
            name="tiny",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            img_size=img_size,
            features=features,
            out_channels=tuple(int(c) for c in out_channels),  # type: ignore[arg-type]
            intermediate_layers=layers,  # type: ignore[arg-type]
        )


DEPTH_ANYTHING_PRESETS: Dict[str, DepthAnythingConfig] = {
    "vits": DepthAnythingConfig(
        name="vits", embed_dim=384, depth=12, num_heads=6, features=64,
        out_channels=(48, 96, 192, 384), intermediate_layers=(2, 5, 8, 11),
    ),
    "vitb": DepthAnythingConfig(
        name="vitb", embed_dim=768, depth=12, num_heads=12, features=128,
        out_channels=(96, 192, 384, 768), intermediate_layers=(2, 5, 8, 11),
    ),
    "vitl": DepthAnythingConfig(
        name="vitl", embed_dim=1024, depth=24, num_heads=16, features=256,
        out_channels=(256, 512, 1024, 1024), intermediate_layers=(4, 11, 17, 23),
    ),
}

_ENCODER_ALIASES: Dict[str, str] = {}
for _key, _size in (("vits", "small"), ("vitb", "base"), ("vitl", "large")):
    for _alias in (_key, _size, f"depth-anything-v2-{_size}", f"depth_anything_v2_{_key}",
                   f"depth-anything-v2-{_key}"):
        _ENCODER_ALIASES[_alias] = _key


def resolve_depth_anything_config(
    encoder: Union[str, DepthAnythingConfig, None] = None,
) -> DepthAnythingConfig:
    """``None`` -> vits; a name -> its preset; a config -> itself."""
    if encoder is None:
        return DEPTH_ANYTHING_PRESETS["vits"]
    if isinstance(encoder, DepthAnythingConfig):
        return encoder
    return DepthAnythingConfig.preset(encoder)


# --------------------------------------------------------------------------------------
# encoder (DINOv2 ViT)
# --------------------------------------------------------------------------------------


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, hd)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, ls_init: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, num_heads)
        self.ls1 = _LayerScale(dim, ls_init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = _LayerScale(dim, ls_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2Encoder(nn.Module):
    """The ``pretrained.`` part of the checkpoint."""

    def __init__(self, cfg: DepthAnythingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.patch_embed = _PatchEmbed(cfg.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, dim))
        # Present in the published checkpoints (masked-image pre-training); unused here.
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(
            _Block(dim, cfg.num_heads, cfg.mlp_ratio, cfg.layerscale_init)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_embed(self, h_patches: int, w_patches: int) -> torch.Tensor:
        """Position embedding for an ``h_patches x w_patches`` grid (+ class token).

        Bicubic resampling of the stored square grid with the published recipe: the scale
        factor is ``(n + 0.1) / grid`` (no antialiasing), so that results match the
        reference implementation.
        """
        pos = self.pos_embed
        n_stored = pos.shape[1] - 1
        side = int(math.isqrt(n_stored))
        if h_patches == side and w_patches == side:
            return pos
        dtype = pos.dtype
        pos = pos.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        grid = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        off = self.cfg.interpolate_offset
        scale = ((h_patches + off) / side, (w_patches + off) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
        if grid.shape[-2:] != (h_patches, w_patches):  # guard against rounding surprises
            grid = F.interpolate(
                pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
                size=(h_patches, w_patches), mode="bicubic", align_corners=False,
            )
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h_patches * w_patches, dim)
        return torch.cat([cls_pos, patch_pos], dim=1).to(dtype)

    def intermediate_layers(
        self, x: torch.Tensor, layers: Sequence[int]
    ) -> List[torch.Tensor]:
        """Normalised patch tokens ``(B, N, C)`` after each block in ``layers``."""
        b, _, h, w = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_embed(
            h // self.patch_size, w // self.patch_size
        ).to(tokens.dtype)
        wanted = set(int(i) for i in layers)
        outs: Dict[int, torch.Tensor] = {}
        last = max(wanted)
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i in wanted:
                outs[i] = self.norm(tokens)[:, 1:]
            if i >= last:
                break
        return [outs[int(i)] for i in layers]


# --------------------------------------------------------------------------------------
# DPT head
# --------------------------------------------------------------------------------------


class _ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(x))
        out = self.conv2(F.relu(out))
        return out + x


class _FusionBlock(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)
        self.resConfUnit1 = _ResidualConvUnit(features)
        self.resConfUnit2 = _ResidualConvUnit(features)

    def forward(
        self,
        x: torch.Tensor,
        skip: Optional[torch.Tensor] = None,
        size: Optional[Tuple[int, int]] = None,
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """The ``depth_head.`` part of the checkpoint."""

    def __init__(self, cfg: DepthAnythingConfig) -> None:
        super().__init__()
        dim, f, oc = cfg.embed_dim, cfg.features, cfg.out_channels
        self.patch_size = cfg.patch_size
        self.projects = nn.ModuleList(nn.Conv2d(dim, c, kernel_size=1) for c in oc)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        scratch = nn.Module()
        scratch.layer1_rn = nn.Conv2d(oc[0], f, 3, padding=1, bias=False)
        scratch.layer2_rn = nn.Conv2d(oc[1], f, 3, padding=1, bias=False)
        scratch.layer3_rn = nn.Conv2d(oc[2], f, 3, padding=1, bias=False)
        scratch.layer4_rn = nn.Conv2d(oc[3], f, 3, padding=1, bias=False)
        scratch.refinenet1 = _FusionBlock(f)
        scratch.refinenet2 = _FusionBlock(f)
        scratch.refinenet3 = _FusionBlock(f)
        scratch.refinenet4 = _FusionBlock(f)
        scratch.output_conv1 = nn.Conv2d(f, f // 2, 3, padding=1)
        scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(f // 2, cfg.head_features_2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(cfg.head_features_2, 1, 1),
            nn.ReLU(),
            nn.Identity(),
        )
        self.scratch = scratch

    def forward(self, feats: Sequence[torch.Tensor], ph: int, pw: int) -> torch.Tensor:
        maps = []
        for i, tok in enumerate(feats):
            x = tok.transpose(1, 2).reshape(tok.shape[0], tok.shape[-1], ph, pw)
            maps.append(self.resize_layers[i](self.projects[i](x)))
        s = self.scratch
        l1, l2, l3, l4 = (
            s.layer1_rn(maps[0]), s.layer2_rn(maps[1]), s.layer3_rn(maps[2]), s.layer4_rn(maps[3])
        )
        p4 = s.refinenet4(l4, size=l3.shape[-2:])
        p3 = s.refinenet3(p4, l3, size=l2.shape[-2:])
        p2 = s.refinenet2(p3, l2, size=l1.shape[-2:])
        p1 = s.refinenet1(p2, l1)
        out = s.output_conv1(p1)
        out = F.interpolate(
            out, size=(ph * self.patch_size, pw * self.patch_size), mode="bilinear",
            align_corners=True,
        )
        return s.output_conv2(out)


class DepthAnythingV2(nn.Module):
    """Depth Anything V2: ``forward(x)`` -> relative inverse depth ``(B, H, W)``."""

    def __init__(self, cfg: Union[DepthAnythingConfig, str, None] = None) -> None:
        super().__init__()
        cfg = resolve_depth_anything_config(cfg)
        self.cfg = cfg
        self.pretrained = DinoV2Encoder(cfg)
        self.depth_head = DPTHead(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ImageNet-normalised ``(B, 3, H, W)`` with ``H`` and ``W`` multiples of 14."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"input sides must be multiples of {p}; got {h} x {w}")
        feats = self.pretrained.intermediate_layers(x, self.cfg.intermediate_layers)
        depth = self.depth_head(feats, h // p, w // p)
        return F.relu(depth).squeeze(1)


# --------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read a ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors`` file.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers and strips a
    ``module.`` prefix (DataParallel). Raises ``FileNotFoundError`` or a ``ValueError``
    explaining that the file is unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Depth Anything checkpoint not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    is_safetensors = path.suffix.lower() == ".safetensors" or (
        len(head) > 8 and head[8:9] == b"{" and not head.startswith(b"PK")
    )
    try:
        if is_safetensors:
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader failure means the same thing
        kind = "safetensors" if is_safetensors else "PyTorch .pth"
        raise ValueError(
            f"could not read the Depth Anything checkpoint {path} as a {kind} file "
            f"({type(exc).__name__}: {exc}). The file is probably corrupt or incomplete "
            "(re-download it) or is not a weights file."
        ) from exc
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        for key in ("state_dict", "model", "module", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and _all_tensors(inner):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not _all_tensors(obj):
        raise ValueError(
            f"{path} does not contain a state dict (a mapping of parameter names to tensors); "
            f"found {type(obj).__name__}."
        )
    out: Dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        k = str(k)
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _all_tensors(obj: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in obj.values())


_BLOCK_RE = re.compile(r"^pretrained\.blocks\.(\d+)\.")


def _guess_layout(sd: Mapping[str, torch.Tensor]) -> Optional[Tuple[int, int]]:
    """``(embed_dim, n_blocks)`` of a Depth Anything-style state dict, if it has one."""
    pos = sd.get("pretrained.pos_embed")
    if pos is None or pos.ndim != 3:
        return None
    blocks = {int(m.group(1)) for k in sd for m in [_BLOCK_RE.match(k)] if m}
    return int(pos.shape[-1]), (max(blocks) + 1 if blocks else 0)


def describe_state_dict(
    sd: Mapping[str, torch.Tensor], expected: Optional[str] = None
) -> str:
    """One sentence saying what a state dict looks like (which encoder size, or which other
    layout), for error messages. ``expected``: the encoder name the caller asked for."""
    layout = _guess_layout(sd)
    if layout is not None:
        dim, nblocks = layout
        for name, cfg in DEPTH_ANYTHING_PRESETS.items():
            if cfg.embed_dim == dim and cfg.depth == nblocks:
                if name == expected:
                    return (
                        f"the file has the size of '{name}' (embed dim {dim}, {nblocks} "
                        "blocks) but not all of its parameters: it is incomplete or a "
                        "different model (e.g. a video or fine-tuned variant with other heads)"
                    )
                return (
                    f"it looks like a Depth Anything V2 '{name}' checkpoint (embed dim {dim}, "
                    f"{nblocks} blocks): pass encoder='{name}'"
                )
        return (
            f"it looks like a Depth Anything-style checkpoint with embed dim {dim} and "
            f"{nblocks} blocks, which is none of the published encoders "
            f"({', '.join(f'{n}: {c.embed_dim}/{c.depth}' for n, c in DEPTH_ANYTHING_PRESETS.items())}); "
            "pass a matching DepthAnythingConfig"
        )
    keys = list(sd)
    if any(k.startswith(("backbone.embeddings", "head.", "neck.")) for k in keys):
        return (
            "it looks like a Hugging Face transformers checkpoint (e.g. the '-hf' repositories), "
            "whose parameter names differ: use the original depth_anything_v2_vit*.pth file"
        )
    if any(k.startswith(("blocks.", "patch_embed.")) for k in keys):
        return "it looks like a bare ViT/DINOv2 backbone without the Depth Anything depth head"
    return "it does not look like a Depth Anything V2 checkpoint"


def state_dict_mismatch(
    expected: Mapping[str, Sequence[int]], sd: Mapping[str, torch.Tensor]
) -> Tuple[List[str], List[str], List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]]:
    """``(missing, unexpected, wrong_shape)`` of ``sd`` against ``{name: shape}``."""
    missing = sorted((k for k in expected if k not in sd), key=_natural_key)
    unexpected = sorted((k for k in sd if k not in expected), key=_natural_key)
    wrong = [
        (k, tuple(expected[k]), tuple(sd[k].shape))
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k])
    ]
    return missing, unexpected, wrong


def _natural_key(name: str) -> List[Union[int, str]]:
    """Sort ``blocks.2`` before ``blocks.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _format_list(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _infer_encoder(sd: Mapping[str, torch.Tensor], source: str) -> DepthAnythingConfig:
    layout = _guess_layout(sd)
    if layout is not None:
        dim = layout[0]
        for cfg in DEPTH_ANYTHING_PRESETS.values():
            if cfg.embed_dim == dim:
                return cfg
    raise ValueError(
        f"cannot tell which Depth Anything V2 encoder {source} holds: "
        f"{describe_state_dict(sd)}."
    )


def load_depth_anything_checkpoint(
    path: Union[str, Path],
    encoder: Union[str, DepthAnythingConfig, None] = None,
    device: Union[str, torch.device] = "cpu",
) -> DepthAnythingV2:
    """Build a :class:`DepthAnythingV2` and load ``path`` into it (eval mode, no grad).

    ``encoder``: ``"vits"`` / ``"vitb"`` / ``"vitl"`` (or aliases), a
    :class:`DepthAnythingConfig`, or ``None`` to infer the published encoder from the
    checkpoint's embedding width. Raises ``ValueError`` listing missing, unexpected and
    mis-shaped keys when the file does not fit (and which encoder it looks like).
    """
    sd = read_state_dict(path)
    cfg = _infer_encoder(sd, str(path)) if encoder is None else resolve_depth_anything_config(encoder)
    # Build on the meta device (no memory, no init time), then adopt the file's tensors.
    with torch.device("meta"):
        model = DepthAnythingV2(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected, wrong = state_dict_mismatch(expected, sd)
    if missing or unexpected or wrong:
        lines = [
            f"{path} does not fit Depth Anything V2 '{cfg.name}' (embed dim {cfg.embed_dim}, "
            f"{cfg.depth} blocks): {len(missing)} missing, {len(unexpected)} unexpected and "
            f"{len(wrong)} mis-shaped keys."
        ]
        if missing:
            lines.append(f"  missing: {_format_list(missing)}")
        if unexpected:
            lines.append(f"  unexpected: {_format_list(unexpected)}")
        if wrong:
            lines.append(
                "  wrong shape: "
                + _format_list([f"{k} expected {e} got {g}" for k, e, g in wrong], limit=5)
            )
        lines.append(f"  Hint: {describe_state_dict(sd, expected=cfg.name)}.")
        raise ValueError("\n".join(lines))
    sd = {
        k: (v.to(torch.float32) if v.is_floating_point() else v).contiguous()
        for k, v in sd.items()
    }
    model.load_state_dict(sd, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval().to(device)
