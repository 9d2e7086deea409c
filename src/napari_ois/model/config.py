"""Configuration of the OIS network and its named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class OISConfig:
    """Everything that defines an OIS network's shape.

    The four ``use_*`` switches and ``num_proposals`` exist for ablations: each one changes
    the computation (see ``tests/test_model.py``).
    """

    name: str = "ois-tiny"
    #: timm model name of the image encoder. Convolutional backbones are used with
    #: ``features_only``; plain ViTs (timm models with a ``patch_embed``) through their
    #: token grid.
    backbone: str = "vit_tiny_patch16_224"
    #: side of the square model input; images are resized (longest side) and padded to it.
    img_size: int = 192
    #: channels of the stride-16 embedding and of the decoder tokens.
    embed_dim: int = 128
    #: channels of the stride-4 high-resolution features used by the mask head.
    hr_dim: int = 32
    decoder_depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 512
    #: K, the number of first-click proposals (DISNet). The network has K + 1 mask tokens.
    num_proposals: int = 3
    use_order_aware: bool = True
    use_object_aware: bool = True
    use_dense: bool = True
    use_sparse: bool = True
    #: where the clicks meet the image. ``"late"``: the image encoder runs once per image and
    #: the prompts are fused after it (the OIS layout, cheapest per click). ``"early"``
    #: (plain ViT backbones): the click disks and the previous mask get their own patch
    #: embedding, added to the image's patch tokens before the transformer blocks, so the
    #: whole encoder sees the clicks (SimpleClick / iCMFormer style); the patch embedding and
    #: the stride-4 stem are computed once per image, the blocks once per click. With a
    #: convolutional backbone, ``"early"`` feeds the maps as three more input channels
    #: (RITM / DIOS style) and the whole backbone runs once per click.
    fusion: str = "late"
    #: iCMFormer's cross-modality blocks (seed 004, sec. 3.1-3.2; early fusion with a plain
    #: ViT only): 0 adds the click maps' patch embedding to the image's patch tokens (the
    #: simplification above). N > 0 runs the click tokens as a parallel branch: image and
    #: click tokens both go through the first ``cross_split`` blocks (shared weights; 0: half
    #: of them), then N cross-modality blocks (self-attention on the click tokens, the image
    #: tokens attend to them, an FFN), then their sum through the remaining blocks.
    cross_blocks: int = 0
    cross_split: int = 0
    #: boxes as a second prompt kind: two corner tokens in the sparse prompt (their own
    #: type embeddings) and a filled box map in the dense prompt and the early-fusion maps.
    box_prompts: bool = False
    #: a refinement head that propagates the clicks' stride-4 features to the pixels that
    #: resemble them (CSFPN's sparse click-feature propagation, design d of the fusion study;
    #: ``ois.ClickPropagation``). It starts as the identity, so it can be added to a trained
    #: model by a warm start.
    click_propagation: bool = False
    #: a second quality head that sees each mask (features pooled inside it, on its boundary
    #: and just outside it, its area; ``ois.MaskQuality``), added to the quality token's
    #: score. It starts at zero, so it can be added to a trained model by a warm start.
    mask_quality: bool = False
    #: radius (pixels at model resolution) of the click disks of the dense prompt.
    disk_radius: float = 5.0
    #: initial value of the positive order-bias scale (softplus-parameterised).
    order_scale_init: float = 10.0
    #: free-form notes (training budget, provenance) stored with shipped weights.
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OISConfig":
        if not isinstance(data, dict):
            raise ValueError(f"an OIS config is a mapping of keys to values, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown OIS config keys: {sorted(map(str, unknown))}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Every field has the type its default has (an int may stand for a float), and
        ``fusion`` is a known layout."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            want = type(default)
            ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                ok = True
            if not ok:
                raise ValueError(f"{f.name} must be {want.__name__}, got {v!r}")
        if self.fusion not in ("late", "early"):
            raise ValueError(f"fusion must be 'late' or 'early', not {self.fusion!r}")
        if self.cross_blocks < 0 or self.cross_split < 0:
            raise ValueError("cross_blocks and cross_split must be >= 0")
        if self.cross_blocks and self.fusion != "early":
            raise ValueError("cross_blocks (iCMFormer's cross-modality blocks) need fusion='early'")

    def replace(self, **changes: Any) -> "OISConfig":
        return dataclasses.replace(self, **changes)


#: Named architectures. ``ois-tiny`` is the CPU default (the shipped model's layout: a plain
#: ViT-Ti/16 won the same-budget comparison against ResNet-18-D, see docs/training.md);
#: ``ois-base`` is the paper's layout (a ViT-B/16 encoder at 1024 px).
PRESETS: dict[str, OISConfig] = {
    "ois-tiny": OISConfig(
        name="ois-tiny", backbone="vit_tiny_patch16_224", img_size=192, embed_dim=128
    ),
    "ois-tiny-cnn": OISConfig(name="ois-tiny-cnn", backbone="resnet18d", img_size=192),
    "ois-tiny-ef": OISConfig(
        name="ois-tiny-ef", backbone="vit_tiny_patch16_224", img_size=192, embed_dim=128,
        fusion="early",
    ),
    "ois-tiny-cef": OISConfig(
        name="ois-tiny-cef", backbone="resnet10t", img_size=192, embed_dim=128, fusion="early",
        box_prompts=True,
    ),
    "ois-tiny-cef-sp": OISConfig(
        name="ois-tiny-cef-sp", backbone="resnet10t", img_size=192, embed_dim=128, fusion="early",
        box_prompts=True, click_propagation=True,
    ),
    # iCMFormer's layout at ViT-Ti/16 (seed 004: ViT-B with 3 cross-modality blocks between
    # two groups of 6 blocks), as a registered variant of the early-fusion ViT
    "ois-tiny-icm": OISConfig(
        name="ois-tiny-icm", backbone="vit_tiny_patch16_224", img_size=192, embed_dim=128,
        fusion="early", box_prompts=True, cross_blocks=3,
    ),
    "ois-small": OISConfig(
        name="ois-small", backbone="resnet50d", img_size=512, embed_dim=256, hr_dim=48,
        num_heads=8, mlp_dim=1024,
    ),
    "ois-base": OISConfig(
        name="ois-base", backbone="vit_base_patch16_224", img_size=1024, embed_dim=256,
        hr_dim=64, num_heads=8, mlp_dim=2048,
    ),
}


def get_config(name: str, **overrides: Any) -> OISConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown OIS architecture {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
