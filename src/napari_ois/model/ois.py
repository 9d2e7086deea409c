"""The Order-aware Interactive Segmentation (OIS) network.

Per image (``encode``, once): the RGB input in [0, 1] is normalised with the model's own
pixel statistics (``preprocess``: non-persistent ``pixel_mean`` / ``pixel_std`` buffers, as
segment-anything's ``Sam.preprocess``), a timm image encoder gives a stride-16 embedding and
stride-4 high-resolution features; the depth map is pooled to the token grid. The resize +
pad from an image to the square input is ``model.transforms.ResizeTransform``.

Per click (``decode``, cheap):

- order maps from the depth and the clicks (one positive map, one per negative click),
- a dense prompt (previous mask + click disks) embedded by a stride-16 convolution and added
  to the image embedding (and a stride-4 twin added to the mask head's features),
- a sparse prompt: one token per click (positional encoding + type embedding) next to K + 1
  mask tokens and one quality token,
- two-way decoder blocks: token self-attention, object-aware attention (positive tokens see
  the previous mask's foreground, negative ones its background), order-aware attention
  (bias ``-scale * order_map`` of each token's own click group), FFN, pixels attend back,
- a mask head (stride-4 features, one hypernetwork per mask token) and a quality head.

Shapes use ``S`` for the square model input side. Click coordinates are (row, col) in model
input pixels, pixel centres at ``i + 0.5``. Labels: 1 positive, 0 negative, -1 padding.
Nothing here knows about napari, files or image dtypes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import OISConfig

#: the pixel statistics the encoder's input is normalised with (ImageNet's; see
#: ``OISModel.preprocess``)
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)

# token types of the sparse prompt (box corners only with ``box_prompts``)
NEGATIVE, POSITIVE, FIRST, PAD, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 0, 1, 2, 3, 4, 5


class LayerNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "blocks")


class ImageEncoder(nn.Module):
    """timm backbone -> (stride-16 embedding ``(B, E, S/16, S/16)``, stride-4 ``(B, hr, S/4, S/4)``)."""

    def __init__(self, cfg: OISConfig):
        super().__init__()
        if cfg.img_size % 16:
            raise ValueError(f"img_size must be a multiple of 16, got {cfg.img_size}")
        probe = timm.create_model(cfg.backbone, pretrained=False, num_classes=0)
        self.is_vit = _is_vit(probe)
        del probe
        if self.is_vit:
            self.body = timm.create_model(
                cfg.backbone, pretrained=False, img_size=cfg.img_size, num_classes=0,
                global_pool="",
            )
            patch = self.body.patch_embed.patch_size
            patch = patch[0] if isinstance(patch, (tuple, list)) else patch
            if patch != 16:
                raise ValueError(f"ViT backbones need patch size 16, {cfg.backbone} has {patch}")
            c16 = self.body.embed_dim
            self.stem4 = nn.Sequential(
                nn.Conv2d(3, cfg.hr_dim, 3, stride=2, padding=1), LayerNorm2d(cfg.hr_dim),
                nn.GELU(), nn.Conv2d(cfg.hr_dim, cfg.hr_dim, 3, stride=2, padding=1),
            )
            c4 = cfg.hr_dim
            c32 = None
            if cfg.cross_blocks and cfg.fusion != "early":
                raise ValueError("cross_blocks (iCMFormer's cross-modality blocks) need fusion='early'")
            if cfg.fusion == "early":
                # positive disks, negative disks, previous mask -> one token per patch, added
                # to the image's patch tokens. Zero-initialised: an early-fusion model warm-
                # started from late-fusion weights begins with the same outputs.
                self.click_embed = nn.Conv2d(n_maps(cfg), c16, 16, stride=16)
                nn.init.zeros_(self.click_embed.weight)
                nn.init.zeros_(self.click_embed.bias)
                depth = len(self.body.blocks)
                self.cross_split = cfg.cross_split or depth // 2
                if cfg.cross_blocks and not 0 < self.cross_split < depth:
                    raise ValueError(f"cross_split {cfg.cross_split} must lie between 1 and {depth - 1} "
                                     f"(the blocks of {cfg.backbone})")
                heads = self.body.blocks[0].attn.num_heads
                self.cross = nn.ModuleList(CrossModalityBlock(c16, heads) for _ in range(cfg.cross_blocks))
        else:
            if cfg.cross_blocks:
                raise ValueError(f"cross_blocks (iCMFormer's cross-modality blocks) need a plain ViT "
                                 f"backbone; {cfg.backbone} is convolutional")
            # convolutional early fusion (RITM / DIOS style): the click disks and the previous
            # mask are three more input channels, so the whole backbone runs once per click.
            in_chans = 3 + n_maps(cfg) if cfg.fusion == "early" else 3
            body = timm.create_model(cfg.backbone, pretrained=False, features_only=True)
            red = body.feature_info.reduction()
            ch = body.feature_info.channels()
            for need in (4, 16):
                if need not in red:
                    raise ValueError(
                        f"backbone {cfg.backbone} has no stride-{need} feature (strides {red})"
                    )
            idx = [red.index(4), red.index(16)] + ([red.index(32)] if 32 in red else [])
            self.body = timm.create_model(
                cfg.backbone, pretrained=False, features_only=True, out_indices=tuple(idx),
                in_chans=in_chans,
            )
            c4, c16 = ch[idx[0]], ch[idx[1]]
            c32 = ch[idx[2]] if len(idx) > 2 else None
        self.lateral32 = nn.Conv2d(c32, cfg.embed_dim, 1) if c32 else None
        self.neck16 = nn.Sequential(
            nn.Conv2d(c16, cfg.embed_dim, 1), LayerNorm2d(cfg.embed_dim),
        )
        self.neck16_out = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 3, padding=1), LayerNorm2d(cfg.embed_dim)
        )
        self.neck4 = nn.Sequential(nn.Conv2d(c4, cfg.hr_dim, 1), LayerNorm2d(cfg.hr_dim))

    def _neck(self, f16: torch.Tensor, f32: Optional[torch.Tensor] = None) -> torch.Tensor:
        e16 = self.neck16(f16)
        if f32 is not None and self.lateral32 is not None:
            e16 = e16 + F.interpolate(self.lateral32(f32), size=e16.shape[-2:], mode="nearest")
        return self.neck16_out(e16)

    def embed_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Early fusion, the per-image part.

        ViT: patch tokens ``(B, N, C)`` and stride-4 features. Convolutional: the normalised
        image itself and ``None`` (every feature depends on the clicks).
        """
        if not self.is_vit:
            return x, None
        return self.body.patch_embed(x), self.neck4(self.stem4(x))

    def fuse_clicks(
        self, patches: torch.Tensor, click_maps: torch.Tensor
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Early fusion, the per-click part: ``patches`` + ``(B, 3, S, S)`` maps -> (e16, f4).

        ``f4`` is ``None`` for ViTs (their stride-4 features come from ``embed_patches``).
        """
        if cross := getattr(self, "cross", None):
            return self._fuse_cross(patches, click_maps, cross), None
        if not self.is_vit:
            feats = self.body(torch.cat([patches, click_maps], 1))
            f32 = feats[2] if len(feats) > 2 else None
            return self._neck(feats[1], f32), self.neck4(feats[0])
        body = self.body
        x = patches + self.click_embed(click_maps).flatten(2).transpose(1, 2)
        x = body._pos_embed(x)
        x = body.norm_pre(x)
        x = body.blocks(x)
        return self._neck(self._token_map(body.norm(x))), None

    def _fuse_cross(self, patches: torch.Tensor, click_maps: torch.Tensor, cross: nn.ModuleList) -> torch.Tensor:
        """iCMFormer's parallel branches: image tokens X and click tokens Y through the first
        blocks (shared weights, one batch), the cross-modality blocks, X + Y through the rest."""
        body = self.body
        b = patches.shape[0]
        y = self.click_embed(click_maps).flatten(2).transpose(1, 2)
        xy = body.norm_pre(body._pos_embed(torch.cat([patches, y], 0)))
        for blk in body.blocks[:self.cross_split]:
            xy = blk(xy)
        x, y = xy[:b], xy[b:]
        for blk in cross:
            x, y = blk(x, y)
        x = x + y
        for blk in body.blocks[self.cross_split:]:
            x = blk(x)
        return self._neck(self._token_map(body.norm(x)))

    def _token_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """ViT output tokens ``(B, prefix + N, C)`` -> the patch grid ``(B, C, sqrt N, sqrt N)``."""
        tokens = tokens[:, getattr(self.body, "num_prefix_tokens", 1):]
        b, n, c = tokens.shape
        side = int(round(math.sqrt(n)))
        return tokens.transpose(1, 2).reshape(b, c, side, side)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_vit:
            f16 = self._token_map(self.body.forward_features(x))
            f4 = self.stem4(x)
            f32 = None
        else:
            feats = self.body(x)
            f4, f16 = feats[0], feats[1]
            f32 = feats[2] if len(feats) > 2 else None
        return self._neck(f16, f32), self.neck4(f4)


class RandomFourierPE(nn.Module):
    """Positional encoding of normalised (row, col) in [0, 1] by random Fourier features."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        self.register_buffer("gaussian", scale * torch.randn(2, dim // 2), persistent=True)

    def forward(self, coords01: torch.Tensor) -> torch.Tensor:
        proj = (2 * coords01 - 1) @ self.gaussian * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def grid(self, side: int, device=None) -> torch.Tensor:
        c = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side
        rr, cc = torch.meshgrid(c, c, indexing="ij")
        return self.forward(torch.stack([rr, cc], -1).reshape(-1, 2))  # (side*side, dim)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, internal: Optional[int] = None):
        super().__init__()
        internal = internal or dim
        self.heads = heads
        self.q = nn.Linear(dim, internal)
        self.k = nn.Linear(dim, internal)
        self.v = nn.Linear(dim, internal)
        self.out = nn.Linear(internal, dim)

    def forward(self, q, k, v, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, nq, _ = q.shape
        nk = k.shape[1]
        h = self.heads
        q = self.q(q).view(b, nq, h, -1).transpose(1, 2)
        k = self.k(k).view(b, nk, h, -1).transpose(1, 2)
        v = self.v(v).view(b, nk, h, -1).transpose(1, 2)
        if mask is not None:
            mask = mask.unsqueeze(1)  # broadcast over heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).reshape(b, nq, -1))


class MLP(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int, layers: int = 2):
        super().__init__()
        dims = [dim_in] + [hidden] * (layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        return x


class CrossModalityBlock(nn.Module):
    """iCMFormer's cross-modality transformer block (seed 004, sec. 3.2, fig. 3b): the click
    tokens Y attend to themselves, then the image tokens X attend to them (queries from X,
    keys and values from Y), then an FFN on X. Pre-norm residuals, as timm's ViT blocks."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_y = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.norm_x = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = MLP(dim, int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        yn = self.norm_y(y)
        y = y + self.self_attn(yn, yn, yn)
        kv = self.norm_kv(y)
        x = x + self.cross_attn(self.norm_x(x), kv, kv)
        x = x + self.ffn(self.norm_ffn(x))
        return x, y


class DecoderBlock(nn.Module):
    """Self-attention, object-aware attention, order-aware attention, FFN, pixels -> tokens."""

    def __init__(self, cfg: OISConfig):
        super().__init__()
        d, h = cfg.embed_dim, cfg.num_heads
        self.self_attn = Attention(d, h)
        self.object_attn = Attention(d, h, d // 2)
        self.order_attn = Attention(d, h, d // 2)
        self.mlp = MLP(d, cfg.mlp_dim, d)
        self.image_attn = Attention(d, h, d // 2)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(5))

    def forward(self, tokens, token_pe, image, image_pe, object_mask, order_bias):
        q = tokens + token_pe
        tokens = self.norms[0](tokens + self.self_attn(q, q, tokens))
        k = image + image_pe
        tokens = self.norms[1](
            tokens + self.object_attn(tokens + token_pe, k, image, object_mask)
        )
        tokens = self.norms[2](tokens + self.order_attn(tokens + token_pe, k, image, order_bias))
        tokens = self.norms[3](tokens + self.mlp(tokens))
        image = self.norms[4](image + self.image_attn(k, tokens + token_pe, tokens))
        return tokens, image


@dataclass
class ImageEmbedding:
    """What ``OISModel.encode`` computes once per image."""

    feat16: Optional[torch.Tensor]  # (B, E, S/16, S/16); None with early fusion
    feat4: Optional[torch.Tensor]  # (B, hr, S/4, S/4); None with convolutional early fusion
    depth: Optional[torch.Tensor]  # (B, 1, S, S) in [0, 1], or None ("no depth")
    depth_tokens: Optional[torch.Tensor]  # (B, S/16 * S/16)
    #: early fusion, the encoder's per-click input: ViT patch tokens before the blocks
    #: ``(B, N, C)``, or the normalised image ``(B, 3, S, S)`` for a convolutional encoder
    patches: Optional[torch.Tensor] = None

    def _map(self, fn) -> "ImageEmbedding":
        mv = lambda t: None if t is None else fn(t)  # noqa: E731
        return ImageEmbedding(mv(self.feat16), mv(self.feat4), mv(self.depth),
                              mv(self.depth_tokens), mv(self.patches))

    def to(self, device) -> "ImageEmbedding":
        return self._map(lambda t: t.to(device))

    @property
    def batch_size(self) -> int:
        return self.reference.shape[0]

    @property
    def reference(self) -> torch.Tensor:
        """A tensor of the embedding's batch, dtype and device."""
        return self.feat4 if self.feat4 is not None else self.patches

    def expand(self, b: int) -> "ImageEmbedding":
        """A batch-1 embedding repeated (as a view) to batch ``b``."""
        return self._map(lambda t: t.expand(b, *t.shape[1:]))


def n_maps(cfg: OISConfig) -> int:
    """Channels of the prompt maps: positive disks, negative disks, previous mask (+ box)."""
    return 4 if cfg.box_prompts else 3


def prompt_maps(cfg: OISConfig, coords, labels, prev, boxes, layout: str) -> torch.Tensor:
    """The clicks, the previous mask (and the box) as image-shaped maps, in the channel order
    the weights were trained with (``n_maps(cfg)`` channels):

    - ``"early"`` (the early-fusion encoder's input, full model resolution): positive disks,
      negative disks, previous mask[, box];
    - ``"dense"`` (the dense prompt, stride 4: the mask area-pooled, the disks and the box
      drawn on the stride-4 grid): previous mask, positive disks, negative disks[, box].
    """
    s = cfg.img_size
    if layout == "early":
        maps = [click_disks(coords, labels, s, cfg.disk_radius), prev]
        stride = 1
    elif layout == "dense":
        maps = [F.avg_pool2d(prev, 4), click_disks(coords, labels, s, cfg.disk_radius, stride=4)]
        stride = 4
    else:
        raise ValueError(f"layout must be 'early' or 'dense', not {layout!r}")
    if cfg.box_prompts:
        maps.append(box_map(boxes, s, stride=stride))
    return torch.cat(maps, 1)


def box_map(boxes: torch.Tensor, size: int, stride: int = 1) -> torch.Tensor:
    """(B, 4) boxes ``(r0, c0, r1, c1)`` in model pixels -> (B, 1, size/stride, size/stride).

    A cell is inside when its centre is; a box always covers the cell of its centre. Rows
    with ``r1 <= r0`` or ``c1 <= c0`` (no box) give empty maps.
    """
    side = size // stride
    c = (torch.arange(side, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    r0, c0, r1, c1 = (boxes[:, i, None] for i in range(4))
    half = stride / 2
    mid_r, mid_c = (r0 + r1) / 2, (c0 + c1) / 2
    r0, r1 = torch.minimum(r0, mid_r - half), torch.maximum(r1, mid_r + half)
    c0, c1 = torch.minimum(c0, mid_c - half), torch.maximum(c1, mid_c + half)
    rows = (c[None] >= r0) & (c[None] <= r1)  # (B, side)
    cols = (c[None] >= c0) & (c[None] <= c1)
    valid = has_box(boxes)[:, None, None]
    return ((rows[:, :, None] & cols[:, None, :]) & valid)[:, None].to(boxes.dtype)


def has_box(boxes: torch.Tensor) -> torch.Tensor:
    """(B, 4) -> (B,) bool: which rows are boxes (positive height and width)."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def click_disks(coords, labels, size: int, radius: float, stride: int = 1) -> torch.Tensor:
    """(B, N, 2) model coords + (B, N) labels -> (B, 2, size/stride, size/stride) disk maps.

    Channel 0: positive clicks, channel 1: negative clicks. ``radius`` is in model-input
    pixels; on a coarser grid (``stride`` > 1) a disk always covers the click's own cell.
    """
    side = size // stride
    c = (torch.arange(side, device=coords.device, dtype=coords.dtype) + 0.5) * stride
    dr = (c.view(1, 1, side, 1) - coords[..., 0, None, None]) ** 2
    dc = (c.view(1, 1, 1, side) - coords[..., 1, None, None]) ** 2
    r2 = max(radius, stride / 2 * math.sqrt(2)) ** 2
    inside = (dr + dc) <= r2  # (B, N, side, side)
    pos = (inside & (labels == 1)[..., None, None]).any(1)
    neg = (inside & (labels == 0)[..., None, None]).any(1)
    return torch.stack([pos, neg], 1).to(coords.dtype)


def order_maps(depth, depth_tokens, coords, labels) -> torch.Tensor:
    """Order maps at token resolution, one per click token: ``(B, N, T)``.

    Positive tokens share ``|D - mean(D at positive clicks)|``; negative token j gets
    ``|D - D(n_j)|``; padding tokens get zeros. ``D`` is sampled at the click pixel.
    """
    b, _, s, _ = depth.shape
    idx = coords.long().clamp(0, s - 1)
    flat = depth.view(b, -1)
    d_click = torch.gather(flat, 1, idx[..., 0] * s + idx[..., 1])  # (B, N)
    pos = (labels == 1).to(depth.dtype)
    pos_mean = (d_click * pos).sum(1) / pos.sum(1).clamp(min=1)
    ref = torch.where(labels == 1, pos_mean[:, None], d_click)
    maps = (depth_tokens[:, None, :] - ref[..., None]).abs()
    return maps * (labels >= 0)[..., None].to(depth.dtype)


def object_aware_mask(fg_tokens, has_prev, click_labels, n_out: int) -> torch.Tensor:
    """Which pixels each token may attend to in object-aware attention: ``(B, n_out + N, T)``.

    Positive click tokens see only the previous mask's foreground tokens, negative ones only
    its background; output tokens and padding see everything; samples without a previous
    mask (first click) are not masked; a click row with nothing allowed is unmasked.
    """
    b, t = fg_tokens.shape
    n = click_labels.shape[1]
    cl = click_labels[..., None]
    fg = fg_tokens[:, None, :]
    clicks = torch.where(cl == 1, fg, torch.where(cl == 0, ~fg, torch.ones_like(fg)))
    clicks = clicks | ~has_prev.view(b, 1, 1)
    clicks = clicks | ~clicks.any(-1, keepdim=True)
    out = torch.ones(b, n_out, t, dtype=torch.bool, device=fg_tokens.device)
    return torch.cat([out, clicks.expand(b, n, t)], 1)


class ClickPropagation(nn.Module):
    """Sparse click-feature propagation over the stride-4 features (the idea of CSFPN's
    sparse graph network; this design is the project's own).

    Each click samples the features at its position: a key (a projection, L2-normalised) and
    a value (the feature plus an embedding of its label, positive or negative). Every pixel
    gets the values of the clicks whose keys resemble its own, weighted by
    ``sigmoid(scale * cosine + bias)`` (a pixel like no click gets almost nothing) and
    normalised by ``1 + sum of the weights``; a 1x1 projection adds the message to the
    features. The projection starts at zero, so a model warm-started from one without this
    head begins with that model's outputs exactly. Padding clicks (label -1) take no part.
    """

    def __init__(self, channels: int, key_dim: int = 16, scale_init: float = 10.0, bias_init: float = -5.0):
        super().__init__()
        self.key = nn.Conv2d(channels, key_dim, 1)
        self.label_embed = nn.Embedding(2, channels)  # 0 negative, 1 positive
        self.scale_raw = nn.Parameter(torch.tensor(math.log(math.expm1(scale_init))))
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))
        # no bias: a pixel that gets no message (no click, or only padding) keeps its feature
        # exactly, whatever the other samples of the batch hold
        self.out = nn.Conv2d(channels, channels, 1, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, feat: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor, size: int) -> torch.Tensor:
        """``feat`` (B, C, h, w) over a model input of ``size`` px; ``coords`` (B, N, 2)
        (row, col) in model pixels; ``labels`` (B, N). Returns ``feat`` plus the messages."""
        if labels.shape[1] == 0:
            return feat
        valid = labels >= 0
        keys = F.normalize(self.key(feat), dim=1)  # (B, k, h, w)
        # grid_sample's (x, y) in [-1, 1], pixel centres of the model input at +0.5
        grid = torch.stack([coords[..., 1], coords[..., 0]], -1) * (2.0 / size) - 1.0
        grid = grid.to(feat.dtype).unsqueeze(1)  # (B, 1, N, 2)
        click_keys = F.normalize(F.grid_sample(keys, grid, align_corners=False)[:, :, 0], dim=1)  # (B, k, N)
        values = F.grid_sample(feat, grid, align_corners=False)[:, :, 0].transpose(1, 2)  # (B, N, C)
        values = values + self.label_embed(labels.clamp(min=0).long())
        sim = torch.einsum("bkhw,bkn->bnhw", keys, click_keys)
        weight = torch.sigmoid(F.softplus(self.scale_raw) * sim + self.bias)
        weight = weight * valid[:, :, None, None].to(weight.dtype)
        msg = torch.einsum("bnhw,bnc->bchw", weight, values) / (1.0 + weight.sum(1, keepdim=True))
        return feat + self.out(msg)


class MaskQuality(nn.Module):
    """A quality head that looks at each predicted mask (the token head sees only the
    quality token, never the masks; this design is the project's own).

    For every one of the K + 1 masks it pools the stride-4 features inside the mask, on its
    boundary band (``4 p (1 - p)``) and in a ring just outside it (a max-pool dilation
    minus the mask), adds the mask's area, its boundary's share of it and its mean
    confidence, and with the quality token and the mask's token rates the mask with a small
    MLP. The masks and features are detached: this head's loss never moves the masks. Its
    output is added to the token head's score and its last layer starts at zero, so a model
    warm-started from one without it begins with that model's scores exactly.
    """

    def __init__(self, token_dim: int, feat_dim: int, hidden: int = 128, ring: int = 7):
        super().__init__()
        self.ring = int(ring)
        self.mlp = MLP(2 * token_dim + 3 * feat_dim + 3, hidden, 1, 3)
        nn.init.zeros_(self.mlp.layers[-1].weight)
        nn.init.zeros_(self.mlp.layers[-1].bias)

    def forward(self, quality_token: torch.Tensor, mask_tokens: torch.Tensor,
                logits: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """``quality_token`` (B, E), ``mask_tokens`` (B, M, E), ``logits`` (B, M, h, w) and
        ``feat`` (B, C, h, w) of the mask head -> a score per mask (B, M)."""
        x = self.features(quality_token, mask_tokens, logits, feat)
        return self.mlp(x.to(mask_tokens.dtype))[..., 0]

    def features(self, quality_token: torch.Tensor, mask_tokens: torch.Tensor,
                 logits: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """The MLP's input per mask, (B, M, 2 E + 3 C + 3) in float32 (no parameters: a
        head can be fitted on these, cached, without running the network again)."""
        p = torch.sigmoid(logits.detach().float())
        f = feat.detach().float()
        band = 4.0 * p * (1.0 - p)
        ring = (F.max_pool2d(p, self.ring, stride=1, padding=self.ring // 2) - p).clamp(min=0)

        def pooled(w):  # (B, M, C): the features averaged under the weights w
            return torch.einsum("bmhw,bchw->bmc", w, f) / (w.sum((-2, -1))[..., None] + 1.0)

        area = p.mean((-2, -1))
        stats = torch.stack([area.sqrt(), band.mean((-2, -1)) / (area + 1e-3) * 0.1,
                             (p * (2 * p - 1)).sum((-2, -1)) / (p.sum((-2, -1)) + 1.0)], -1)
        m = mask_tokens.shape[1]
        return torch.cat([quality_token[:, None].expand(-1, m, -1).float(), mask_tokens.float(),
                          pooled(p), pooled(band), pooled(ring), stats], -1)


class OISModel(nn.Module):
    def __init__(self, cfg: OISConfig):
        super().__init__()
        self.cfg = cfg
        # the input normalisation belongs to the model (as segment-anything's pixel_mean /
        # pixel_std); not persistent: weight files hold no copy of these constants
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        d = cfg.embed_dim
        self.encoder = ImageEncoder(cfg)
        self.pe = RandomFourierPE(d)
        self.type_embed = nn.Embedding(6 if cfg.box_prompts else 4, d)
        k = cfg.num_proposals
        self.mask_tokens = nn.Embedding(k + 1, d)
        self.iou_token = nn.Embedding(1, d)
        # dense prompt: previous mask probability + positive disks + negative disks
        # (the maps are built at stride 4: mask area-pooled, disks drawn on the stride-4 grid)
        self.dense4 = nn.Sequential(
            nn.Conv2d(n_maps(cfg), cfg.hr_dim, 3, padding=1), LayerNorm2d(cfg.hr_dim), nn.GELU(),
            nn.Conv2d(cfg.hr_dim, cfg.hr_dim, 1),
        )
        self.dense16 = nn.Sequential(
            nn.Conv2d(cfg.hr_dim, 64, 2, stride=2), LayerNorm2d(64), nn.GELU(),
            nn.Conv2d(64, d, 2, stride=2),
        )
        self.no_mask_embed = nn.Parameter(torch.zeros(1, d, 1, 1))
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.decoder_depth))
        # learnable positive scale of the order bias: scale = softplus(raw)
        raw = math.log(math.expm1(cfg.order_scale_init))
        self.order_scale_raw = nn.Parameter(torch.full((cfg.decoder_depth,), raw))
        self.upscale = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, 2, stride=2), LayerNorm2d(d // 4), nn.GELU(),
            nn.ConvTranspose2d(d // 4, cfg.hr_dim, 2, stride=2),
        )
        self.refine4 = nn.Sequential(
            nn.GELU(), nn.Conv2d(cfg.hr_dim, cfg.hr_dim, 3, padding=1), LayerNorm2d(cfg.hr_dim),
            nn.GELU(),
        )
        self.click_propagation = ClickPropagation(cfg.hr_dim) if cfg.click_propagation else None
        self.hyper = nn.ModuleList(MLP(d, d, cfg.hr_dim, 3) for _ in range(k + 1))
        self.iou_head = MLP(d, 256, k + 1, 3)
        self.mask_quality = MaskQuality(d, cfg.hr_dim) if cfg.mask_quality else None

    # ------------------------------------------------------------------ per image
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] -> the encoder's input: ``(image - pixel_mean) /
        pixel_std`` in the image's dtype."""
        mean, std = self.pixel_mean.to(image.dtype), self.pixel_std.to(image.dtype)
        return (image - mean) / std

    def encode(self, image: torch.Tensor, depth: Optional[torch.Tensor] = None) -> ImageEmbedding:
        """``image``: (B, 3, S, S) RGB in [0, 1] (padded); ``depth``: (B, 1, S, S) in [0, 1] or None."""
        s = self.cfg.img_size
        if image.shape[-2:] != (s, s):
            raise ValueError(f"model input must be (B, 3, {s}, {s}); got {tuple(image.shape)}")
        x = self.preprocess(image)
        patches = None
        if self.cfg.fusion == "early":
            f16 = None
            patches, f4 = self.encoder.embed_patches(x)
        else:
            f16, f4 = self.encoder(x)
        dtok = None
        if depth is not None:
            dtok = F.avg_pool2d(depth, 16).flatten(1)
        return ImageEmbedding(f16, f4, depth, dtok, patches)

    # ------------------------------------------------------------------ per click
    def decode(
        self,
        emb: ImageEmbedding,
        coords: torch.Tensor,
        labels: torch.Tensor,
        prev_mask: Optional[torch.Tensor] = None,
        has_prev: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict all K + 1 masks.

        Args:
            coords: (B, N, 2) (row, col) in model-input pixels (N may be 0 with a box).
            labels: (B, N) 1 positive, 0 negative, -1 padding.
            prev_mask: (B, 1, S, S) previous mask probability in [0, 1], or None.
            has_prev: (B,) bool, which samples have a previous mask (default: all when
                ``prev_mask`` is given).
            boxes: (B, 4) ``(r0, c0, r1, c1)`` in model-input pixels (``box_prompts``
                models only); a row with ``r1 <= r0`` is "no box".
        Returns:
            logits (B, K + 1, S/4, S/4) and predicted IoU (B, K + 1). Index 0 is the single
            refined mask; 1..K the first-click proposals.
        """
        cfg = self.cfg
        s = cfg.img_size
        b = emb.batch_size
        if coords.shape[0] != b and b == 1:
            emb = emb.expand(coords.shape[0])
            b = coords.shape[0]
        ref = emb.reference
        feat4 = emb.feat4
        labels = labels.long()
        coords = coords.to(ref.dtype)
        if boxes is not None and not cfg.box_prompts:
            raise ValueError(f"{cfg.name} has no box prompts (box_prompts=False)")
        if cfg.box_prompts:
            boxes = ref.new_zeros(b, 4) if boxes is None else boxes.to(ref.dtype)
            box_ok = has_box(boxes)
        if prev_mask is None:
            prev = ref.new_zeros(b, 1, s, s)
            has_prev = torch.zeros(b, dtype=torch.bool, device=ref.device)
        else:
            prev = prev_mask.to(ref.dtype)
            if has_prev is None:
                has_prev = torch.ones(b, dtype=torch.bool, device=ref.device)
            prev = prev * has_prev.view(b, 1, 1, 1).to(prev.dtype)

        if cfg.fusion == "early":
            maps = prompt_maps(cfg, coords, labels, prev, boxes, "early")
            feat, click_feat4 = self.encoder.fuse_clicks(emb.patches, maps)
            if click_feat4 is not None:
                feat4 = click_feat4
        else:
            feat = emb.feat16
        _, d, hh, ww = feat.shape
        if cfg.use_dense:
            d4 = self.dense4(prompt_maps(cfg, coords, labels, prev, boxes, "dense"))
            feat = feat + self.dense16(d4)
            feat4 = feat4 + d4
        else:
            feat = feat + self.no_mask_embed

        # tokens: K+1 mask tokens, the quality token, then one token per click
        out_tokens = torch.cat([self.mask_tokens.weight, self.iou_token.weight], 0)
        out_tokens = out_tokens.unsqueeze(0).expand(b, -1, -1)
        n_out = out_tokens.shape[1]
        if cfg.use_sparse:
            types = labels.clone()
            types[labels < 0] = PAD
            first_pos = (labels[:, :1] == 1)
            if cfg.box_prompts:  # after a box, the first click is a correction
                first_pos = first_pos & ~box_ok[:, None]
            types[:, :1] = torch.where(first_pos, torch.full_like(types[:, :1], FIRST), types[:, :1])
            click_pe = self.pe(coords / s) * (labels >= 0)[..., None].to(feat.dtype)
            click_tokens = click_pe + self.type_embed(types)
            click_labels, token_coords = labels, coords
            if cfg.box_prompts:
                click_tokens = torch.cat([click_tokens, self.embed_boxes(boxes, box_ok)], 1)
                # the corner tokens attend everywhere and carry no order map (like padding)
                click_labels = torch.cat([labels, labels.new_full((b, 2), -1)], 1)
                token_coords = torch.cat([coords, coords.new_zeros(b, 2, 2)], 1)
            tokens = torch.cat([out_tokens, click_tokens], 1)
        else:
            tokens = out_tokens
            click_labels, token_coords = labels[:, :0], coords[:, :0]
        token_pe = tokens
        n_tok = tokens.shape[1]
        t = hh * ww

        image = feat.flatten(2).transpose(1, 2)  # (B, T, E)
        image_pe = self.pe.grid(hh, device=feat.device).to(feat.dtype).unsqueeze(0)

        object_mask = None
        if cfg.use_object_aware and click_labels.shape[1] > 0:
            fg = F.avg_pool2d(prev, 16).flatten(1) > 0.5  # (B, T)
            object_mask = object_aware_mask(fg, has_prev, click_labels, n_out)

        omaps = None
        if cfg.use_order_aware and emb.depth is not None and click_labels.shape[1] > 0:
            omaps = order_maps(emb.depth, emb.depth_tokens, token_coords, click_labels)  # (B, N, T)

        for i, block in enumerate(self.blocks):
            bias = None
            if omaps is not None:
                scale = F.softplus(self.order_scale_raw[i])
                bias = feat.new_zeros(b, n_tok, t)
                bias[:, n_out:] = -scale * omaps
            tokens, image = block(tokens, token_pe, image, image_pe, object_mask, bias)

        k1 = cfg.num_proposals + 1
        mask_tok = tokens[:, :k1]
        iou = self.iou_head(tokens[:, k1])
        up = self.upscale(image.transpose(1, 2).reshape(b, d, hh, ww))
        up = self.refine4(up + feat4)
        if self.click_propagation is not None:
            up = self.click_propagation(up, coords, labels, s)
        weights = torch.stack([h(mask_tok[:, i]) for i, h in enumerate(self.hyper)], 1)
        logits = torch.einsum("bkc,bchw->bkhw", weights, up)
        if self.mask_quality is not None:
            iou = iou + self.mask_quality(tokens[:, k1], mask_tok, logits, up)
        return logits, iou

    def embed_boxes(self, boxes: torch.Tensor, box_ok: torch.Tensor) -> torch.Tensor:
        """(B, 4) boxes -> (B, 2, E) corner tokens; rows without a box are padding tokens."""
        s = self.cfg.img_size
        corners = boxes.view(-1, 2, 2)  # (top-left, bottom-right) x (row, col)
        ok = box_ok.view(-1, 1, 1).to(boxes.dtype)
        types = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], device=boxes.device)
        types = torch.where(box_ok[:, None], types[None], torch.full_like(types[None], PAD))
        return self.pe(corners / s) * ok + self.type_embed(types)

    def forward(self, image, depth, coords, labels, prev_mask=None, has_prev=None, boxes=None):
        return self.decode(self.encode(image, depth), coords, labels, prev_mask, has_prev, boxes)
