"""DINOv2 / DINOv2-with-registers / DINOv3 ViT backbones through ``transformers``.

The architecture table lets ``pretrained=False`` build any official variant offline with random weights;
``pretrained=True`` loads a hub id or a local folder (``save_pretrained`` layout) and fails early with one
clear message when neither can be reached.

Inputs of any H x W work: each image is padded with zeros (after normalisation, i.e. the mean colour) to
the next multiple of the patch size, and images of different sizes are run through the ViT separately so
that no image ever attends to another image's padding. The output is a padded feature map plus a mask.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .windowed import WindowedRunner

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
_FAMILY_DEFAULTS = {
    "dinov2": dict(patch_size=14, image_size=518, layerscale_value=1.0),
    "dinov2_reg": dict(patch_size=14, image_size=518, layerscale_value=1.0, num_register_tokens=4),
    "dinov3": dict(patch_size=16, image_size=224, num_register_tokens=4, layerscale_value=1.0,
                   key_bias=False, layer_norm_eps=1e-5, rope_theta=100.0, pos_embed_rescale=2.0),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalise(images: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] in 0..1 -> standardised with the ImageNet mean and std the DINO backbones expect."""
    mean = images.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (images - mean) / std


class PretrainedUnavailableError(RuntimeError):
    """Raised before any work when pretrained weights were asked for and cannot be reached."""


def _classes(family: str):
    import transformers as tf
    return {
        "dinov2": (tf.Dinov2Config, tf.Dinov2Model),
        "dinov2_reg": (tf.Dinov2WithRegistersConfig, tf.Dinov2WithRegistersModel),
        "dinov3": (tf.DINOv3ViTConfig, tf.DINOv3ViTModel),
    }[family]


def architecture_config(name: str):
    """The transformers config of a known variant, built offline."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown backbone '{name}'; offline architectures: {', '.join(ARCHITECTURES)}")
    family, kwargs = ARCHITECTURES[name]
    config_cls, _ = _classes(family)
    return config_cls(**{**_FAMILY_DEFAULTS[family], **kwargs})


def load_vit(name: str, pretrained: bool, patch_size: int = 0) -> nn.Module:
    """A ViT for ``name``: random weights from the table, pretrained from hub / folder, our flexible encoder
    (random weights), or an encoder file written by ``pretrain`` (its weights unless ``pretrained`` is False).
    ``patch_size`` > 0 builds a table architecture with that patch size (random weights only)."""
    from .encoder_file import encoder_path, load_encoder
    from .flexible import FlexibleEncoder, is_flexible

    if is_flexible(name):
        return FlexibleEncoder(name)  # no published weights: pretrain it (python -m dino_detector.pretrain)
    if (path := encoder_path(name)) is not None:
        return load_encoder(path, weights=pretrained)
    if not pretrained or name == "tiny":
        if os.path.isdir(name) and name not in ARCHITECTURES:  # a local model folder: its own config.json
            from transformers import AutoConfig, AutoModel
            return AutoModel.from_config(AutoConfig.from_pretrained(name))
        config = architecture_config(name)
        if patch_size:
            config.patch_size = patch_size
        return _classes(ARCHITECTURES[name][0])[1](config)
    from transformers import AutoModel
    try:
        if os.path.isdir(name):
            return AutoModel.from_pretrained(name)
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):  # in the local Hugging Face cache: load the snapshot folder, no network
            return AutoModel.from_pretrained(os.path.dirname(cached))
        if _offline() or not _hub_reachable():
            raise OSError("not in the local cache and the hub is unreachable")
        return AutoModel.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise PretrainedUnavailableError(
            f"cannot load pretrained backbone '{name}': neither the Hugging Face hub nor a local copy is "
            f"reachable ({type(err).__name__}). Ways out: pass a local folder with the model "
            f"(--dino_model /path/to/{name.split('/')[-1]}), train from random weights with --no_pretrained, "
            f"or use the small offline backbone --dino_model tiny."
        ) from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP check, so an unreachable hub fails in seconds instead of after a minute of retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@dataclass
class FeatureMap:
    """Backbone output. tensor [B, C, Hf, Wf]; mask [B, Hf, Wf] True on padding; image_sizes [B, 2] (h, w)
    pixels, float."""
    tensor: torch.Tensor
    mask: torch.Tensor
    image_sizes: torch.Tensor


class DinoBackbone(nn.Module):
    """Wraps a transformers DINO ViT; returns its patch tokens as a feature map: the last block's, or with
    ``feature_layers`` = n > 1 the outputs of n evenly spaced blocks (the last included), each passed through
    the ViT's final norm and concatenated along channels (as DINOv2's ``get_intermediate_layers``)."""

    def __init__(self, name: str = "tiny", pretrained: bool = False, feature_layers: int = 1, weights_file: str = "",
                 windows: int = 0, global_blocks: int = 4, patch_size: int = 0):
        """``weights_file``: an official DINOv2 checkpoint loaded into the ``name`` architecture (offline).
        ``windows`` > 0: windowed attention on a windows x windows grid of tiles in all but ``global_blocks``
        blocks (``windowed.py``). ``patch_size`` > 0: that patch size for a randomly initialised ViT."""
        super().__init__()
        self.name = name
        self.vit = load_vit(name, pretrained and not weights_file, patch_size)
        if weights_file:
            from .official_weights import load_official_weights
            load_official_weights(self.vit, weights_file)
        cfg = self.vit.config
        depth = cfg.num_hidden_layers
        if not 1 <= feature_layers <= depth:
            raise ValueError(f"backbone_feature_layers must be 1..{depth} for {name}, got {feature_layers}")
        # hidden_states[0] is the embedding output; block k's output is hidden_states[k]
        self.layer_ids = [round(depth * (i + 1) / feature_layers) for i in range(feature_layers)]
        self.patch_size = cfg.patch_size
        self.num_channels = cfg.hidden_size * feature_layers
        self.num_prefix_tokens = 1 + getattr(cfg, "num_register_tokens", 0)
        self.windowed = WindowedRunner(self.vit, windows, global_blocks) if windows else None
        # the padded patch grid must split into whole tiles
        self.grid_multiple = windows if windows else 1

    def block_prefix(self) -> str:
        """Module path of the transformer blocks (differs between DINOv2 and DINOv3)."""
        return "model.layer" if hasattr(self.vit, "model") else "encoder.layer"

    def _normalise_and_pad(self, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Padding after normalisation is zero: the mean colour, the same for every batch."""
        image = imagenet_normalise(image)
        return nn.functional.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]))

    def _tokens(self, batch: torch.Tensor) -> torch.Tensor:
        """Patch tokens [N, h*w, num_channels] (prefix and register tokens dropped)."""
        norm = self.vit.norm if hasattr(self.vit, "norm") else self.vit.layernorm  # DINOv3 / DINOv2 name
        if self.windowed is not None:
            states = self.windowed(self.vit, batch, self.patch_size, self.num_prefix_tokens, self.layer_ids)
            tokens = torch.cat([norm(state) for state in states], -1)
        elif len(self.layer_ids) == 1:
            tokens = self.vit(pixel_values=batch).last_hidden_state
        else:
            states = self.vit(pixel_values=batch, output_hidden_states=True).hidden_states
            tokens = torch.cat([norm(states[k]) for k in self.layer_ids], -1)
        return tokens[:, self.num_prefix_tokens:]

    def _feature_map(self, padded: torch.Tensor) -> torch.Tensor:
        """[N, 3, gh * p, gw * p] normalised, padded images -> patch features [N, num_channels, gh, gw]."""
        gh, gw = padded.shape[-2] // self.patch_size, padded.shape[-1] // self.patch_size
        return self._tokens(padded).transpose(1, 2).reshape(padded.shape[0], self.num_channels, gh, gw)

    def forward(self, images: list[torch.Tensor] | torch.Tensor) -> FeatureMap:
        """images: list of [3, h_i, w_i] float tensors in [0, 1] (any sizes), or one [B, 3, H, W] batch of
        images of one size (a single ViT call, no Python branching on sizes: the path ONNX export traces)."""
        p, m = self.patch_size, self.grid_multiple
        if isinstance(images, torch.Tensor):
            b, _, h, w = images.shape
            gh, gw = (h + p - 1) // p, (w + p - 1) // p
            fmap = self._feature_map(self._normalise_and_pad(images, (gh + m - 1) // m * m * p,
                                                             (gw + m - 1) // m * m * p))
            mask = torch.ones(b, *fmap.shape[-2:], dtype=torch.bool, device=images.device)
            mask[:, :gh, :gw] = False  # tiles of windowed attention may add padding cells
            sizes = torch.stack([torch.full((b,), h), torch.full((b,), w)], 1).to(fmap)
            return FeatureMap(fmap, mask, sizes)
        grids = [(-(-im.shape[-2] // p), -(-im.shape[-1] // p)) for im in images]
        padded = {g: (-(-g[0] // m) * m, -(-g[1] // m) * m) for g in grids}
        hf, wf = max(g[0] for g in padded.values()), max(g[1] for g in padded.values())
        out = images[0].new_zeros(len(images), self.num_channels, hf, wf)
        mask = torch.ones(len(images), hf, wf, dtype=torch.bool, device=images[0].device)
        # Images with the same patch grid share one ViT call (each padded on its own to that grid, exactly
        # as if alone); images of different grids never attend to each other's padding.
        groups: dict[tuple, list[int]] = {}
        for i, g in enumerate(grids):
            groups.setdefault(g, []).append(i)
        for (gh, gw), idx in groups.items():
            ph, pw = padded[(gh, gw)]
            fmap = self._feature_map(torch.stack([self._normalise_and_pad(images[i], ph * p, pw * p) for i in idx]))
            out[idx, :, :ph, :pw] = fmap.to(out.dtype)
            mask[idx, :gh, :gw] = False
        sizes = torch.tensor([tuple(im.shape[-2:]) for im in images], dtype=out.dtype, device=out.device)
        return FeatureMap(out, mask, sizes)
