"""What is known about backbone names without loading anything: the offline architecture tables (the
official DINOv2 / DINOv3 releases, ``tiny``, our flexible encoders) and which of them have published
weights. The rules that turn a model section into a resolved one live in resolve.py and read only this.
"""
from __future__ import annotations

from typing import NamedTuple

# name -> (family, config kwargs). Values follow the official releases' config.json files.
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "tiny": ("dinov2", dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, mlp_ratio=4)),
    "facebook/dinov2-small": ("dinov2", dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6)),
    "facebook/dinov2-base": ("dinov2", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)),
    "facebook/dinov2-large": ("dinov2", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16)),
    "facebook/dinov2-giant": ("dinov2", dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24,
                                             use_swiglu_ffn=True)),
    "facebook/dinov2-with-registers-small": ("dinov2_reg", dict(hidden_size=384, num_hidden_layers=12,
                                                                num_attention_heads=6)),
    "facebook/dinov2-with-registers-base": ("dinov2_reg", dict(hidden_size=768, num_hidden_layers=12,
                                                               num_attention_heads=12)),
    "facebook/dinov2-with-registers-large": ("dinov2_reg", dict(hidden_size=1024, num_hidden_layers=24,
                                                                num_attention_heads=16)),
    "facebook/dinov2-with-registers-giant": ("dinov2_reg", dict(hidden_size=1536, num_hidden_layers=40,
                                                                num_attention_heads=24, use_swiglu_ffn=True)),
    "facebook/dinov3-vits16-pretrain-lvd1689m": ("dinov3", dict(hidden_size=384, num_hidden_layers=12,
                                                                num_attention_heads=6, intermediate_size=1536)),
    "facebook/dinov3-vits16plus-pretrain-lvd1689m": ("dinov3", dict(hidden_size=384, num_hidden_layers=12,
                                                                    num_attention_heads=6, intermediate_size=1536,
                                                                    use_gated_mlp=True, hidden_act="silu")),
    "facebook/dinov3-vitb16-pretrain-lvd1689m": ("dinov3", dict(hidden_size=768, num_hidden_layers=12,
                                                                num_attention_heads=12, intermediate_size=3072)),
    "facebook/dinov3-vitl16-pretrain-lvd1689m": ("dinov3", dict(hidden_size=1024, num_hidden_layers=24,
                                                                num_attention_heads=16, intermediate_size=4096)),
    "facebook/dinov3-vith16plus-pretrain-lvd1689m": ("dinov3", dict(hidden_size=1280, num_hidden_layers=32,
                                                                    num_attention_heads=20, intermediate_size=5120,
                                                                    use_gated_mlp=True, hidden_act="silu")),
    "facebook/dinov3-vit7b16-pretrain-lvd1689m": ("dinov3", dict(hidden_size=4096, num_hidden_layers=40,
                                                                 num_attention_heads=32, intermediate_size=8192,
                                                                 use_gated_mlp=True, hidden_act="silu",
                                                                 query_bias=False, value_bias=False,
                                                                 proj_bias=False)),
}
FAMILY_DEFAULTS = {
    "dinov2": dict(patch_size=14, image_size=518, layerscale_value=1.0),
    "dinov2_reg": dict(patch_size=14, image_size=518, layerscale_value=1.0, num_register_tokens=4),
    "dinov3": dict(patch_size=16, image_size=224, num_register_tokens=4, layerscale_value=1.0,
                   key_bias=False, layer_norm_eps=1e-5, rope_theta=100.0, pos_embed_rescale=2.0),
}


class FlexibleArch(NamedTuple):
    """Our flexible encoder's shape (flexible.py). ``c1`` / ``c2``: stem widths at strides 2-4 and 8;
    ``block_stride``: the grid the ViT blocks attend on (16, or 32 for 4x fewer tokens: the ``lite``
    encoder, whose output is brought back to stride 16 by the stem's own stride-16 tokens);
    ``stem_stride``: the first convolution's stride (2: two 3x3 stride-2 convolutions to stride 4;
    4: one 4 x 4 patchify convolution, which spares the costly full-resolution map)."""
    dim: int
    depth: int
    heads: int
    c1: int
    c2: int
    block_stride: int = 16
    stem_stride: int = 2


FLEXIBLE_ARCHITECTURES = {
    "flexible-tiny": FlexibleArch(192, 6, 3, 32, 96),
    "flexible-small": FlexibleArch(384, 12, 6, 48, 192),
    "flexible-base": FlexibleArch(768, 12, 12, 64, 256),
    # for CPU deployment: a quarter of flexible-tiny's tokens in the blocks and no stride-2 map
    "flexible-lite": FlexibleArch(192, 6, 3, 32, 96, block_stride=32, stem_stride=4),
}
# architectures without published weights: a random-initialised DINOv2-architecture ViT-Ti/14 for CPU runs
# and tests (the flexible encoders have none either: pretrain them with ``dino_detector.pretrain``)
NO_PUBLISHED_WEIGHTS = frozenset({"tiny", *FLEXIBLE_ARCHITECTURES})
DINOV2_FAMILIES = ("dinov2", "dinov2_reg")


def family(name: str) -> str | None:
    """``dinov2``, ``dinov2_reg``, ``dinov3`` or ``flexible`` for a name of the tables, else None."""
    if name in FLEXIBLE_ARCHITECTURES:
        return "flexible"
    return ARCHITECTURES[name][0] if name in ARCHITECTURES else None


def offline_architecture(name: str) -> bool:
    """True when ``name``'s architecture can be built without any file or network (a table name)."""
    return family(name) is not None


def has_published_weights(name: str) -> bool:
    """False for the table names nobody published weights for; True otherwise (hub ids and folders)."""
    return name not in NO_PUBLISHED_WEIGHTS
