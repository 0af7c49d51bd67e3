"""ViT backbones: DINOv2 / DINOv2-with-registers / DINOv3 through ``transformers``, and our flexible encoder
(flexible.py), which speaks the same interface.

The architecture table (catalog.py) lets ``pretrained=False`` build any official variant offline with random weights;
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

from .catalog import ARCHITECTURES, FAMILY_DEFAULTS, has_published_weights, offline_architecture
from .windowed import WindowedRunner

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
    return config_cls(**{**FAMILY_DEFAULTS[family], **kwargs})


def load_vit(name: str, *, pretrained: bool = False, patch_size: int = 0, arch: str = "") -> nn.Module:
    """A ViT for ``name``: a table architecture (random weights, ``patch_size`` > 0 overriding its patch), our
    flexible encoder, an encoder file written by ``pretrain`` (its weights unless ``pretrained`` is False; with
    ``arch``, an offline name of its architecture, no file is needed for random weights), a local model
    folder, or pretrained weights from the hub's cache or the hub (``pretrained``)."""
    from .encoder_file import encoder_path, load_encoder
    from .flexible import FlexibleEncoder, is_flexible

    if is_flexible(name):
        return FlexibleEncoder(name)  # no published weights: pretrain it (python -m dino_detector.pretrain)
    if (path := encoder_path(name)) is not None:
        if not pretrained and offline_architecture(arch):
            return load_vit(arch)  # a checkpoint holds the weights: the architecture alone, without the file
        return load_encoder(path, weights=pretrained)
    if not pretrained or not has_published_weights(name):
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
    pixels, float; stem [B, c, 2 Hf, 2 Wf], the flexible encoder's stride-8 stem map (``stem_level``), or None."""
    tensor: torch.Tensor
    mask: torch.Tensor
    image_sizes: torch.Tensor
    stem: torch.Tensor | None = None


class ViTBackbone(nn.Module):
    """Wraps a ViT that speaks the transformers interface (DINOv2, DINOv2 with registers, DINOv3, our flexible
    encoder); returns its patch tokens as a feature map: the last block's, or with ``feature_layers`` = n > 1
    the outputs of n evenly spaced blocks (the last included), each passed through the ViT's final norm and
    concatenated along channels (as DINOv2's ``get_intermediate_layers``)."""

    def __init__(self, name: str = "tiny", *, pretrained: bool = False, feature_layers: int = 1,
                 weights_file: str = "", windows: int = 0, global_blocks: int = 4, patch_size: int = 0,
                 arch: str = "", stem_level: bool = False):
        """Where the weights come from is resolve.py's ``weights_source`` rule: ``weights_file`` (an official
        DINOv2 checkpoint loaded into the ``name`` architecture, offline) wins over ``pretrained``.
        ``windows`` > 0: windowed attention on a windows x windows grid of tiles in all but ``global_blocks``
        blocks (``windowed.py``). ``patch_size`` > 0: that patch size for a randomly initialised ViT.
        ``arch``: an encoder file's architecture, for rebuilding it without the file. ``stem_level``: also
        return the flexible encoder's stride-8 stem map (``FeatureMap.stem``)."""
        from .resolve import weights_source

        super().__init__()
        self.name = name
        source = weights_source(name, pretrained=pretrained, weights_file=weights_file)
        self.vit = load_vit(name, pretrained=source in ("hub", "folder", "encoder"), patch_size=patch_size, arch=arch)
        if source == "official":
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
        from .flexible import FlexibleEncoder

        if stem_level and (windows or not isinstance(self.vit, FlexibleEncoder)):
            raise ValueError(f"fine_level 'stem' needs a flexible encoder (flexible-* or its encoder file) with "
                             f"full attention; {name} has no convolutional stem: use fine_level 'upsample'")
        self.stem_channels = self.vit.stem_channels if stem_level else 0  # 0: no stem map is returned

    def block_prefix(self) -> str:
        """Module path of the transformer blocks (differs between DINOv2 and DINOv3)."""
        return "model.layer" if hasattr(self.vit, "model") else "encoder.layer"

    def _normalise_and_pad(self, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Padding after normalisation is zero: the mean colour, the same for every batch."""
        image = imagenet_normalise(image)
        return nn.functional.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]))

    def _tokens(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch tokens [N, h*w, num_channels] (prefix and register tokens dropped), and the stem map
        [N, c, 2h, 2w] when ``stem_level`` (else None)."""
        norm = self.vit.norm if hasattr(self.vit, "norm") else self.vit.layernorm  # DINOv3 / DINOv2 name
        stem = None
        if self.windowed is not None:
            states = self.windowed(self.vit, batch, self.patch_size, self.num_prefix_tokens, self.layer_ids)
            tokens = torch.cat([norm(state) for state in states], -1)
        else:
            out = self.vit(pixel_values=batch, output_hidden_states=len(self.layer_ids) > 1)
            if len(self.layer_ids) == 1:
                tokens = out.last_hidden_state
            else:
                tokens = torch.cat([norm(out.hidden_states[k]) for k in self.layer_ids], -1)
            stem = out.stem_map if self.stem_channels else None
        return tokens[:, self.num_prefix_tokens:], stem

    def _feature_map(self, padded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[N, 3, gh * p, gw * p] normalised, padded images -> patch features [N, num_channels, gh, gw] and the
        stem map [N, c, 2 gh, 2 gw] (or None)."""
        gh, gw = padded.shape[-2] // self.patch_size, padded.shape[-1] // self.patch_size
        tokens, stem = self._tokens(padded)
        return tokens.transpose(1, 2).reshape(padded.shape[0], self.num_channels, gh, gw), stem

    def forward(self, images: list[torch.Tensor] | torch.Tensor) -> FeatureMap:
        """images: list of [3, h_i, w_i] float tensors in [0, 1] (any sizes), or one [B, 3, H, W] batch of
        images of one size (a single ViT call, no Python branching on sizes: the path ONNX export traces)."""
        p, m = self.patch_size, self.grid_multiple
        if isinstance(images, torch.Tensor):
            b, _, h, w = images.shape
            gh, gw = (h + p - 1) // p, (w + p - 1) // p
            fmap, stem = self._feature_map(self._normalise_and_pad(images, (gh + m - 1) // m * m * p,
                                                                   (gw + m - 1) // m * m * p))
            mask = torch.ones(b, *fmap.shape[-2:], dtype=torch.bool, device=images.device)
            mask[:, :gh, :gw] = False  # tiles of windowed attention may add padding cells
            sizes = torch.stack([torch.full((b,), h), torch.full((b,), w)], 1).to(fmap)
            return FeatureMap(fmap, mask, sizes, stem)
        grids = [(-(-im.shape[-2] // p), -(-im.shape[-1] // p)) for im in images]
        padded = {g: (-(-g[0] // m) * m, -(-g[1] // m) * m) for g in grids}
        hf, wf = max(g[0] for g in padded.values()), max(g[1] for g in padded.values())
        out = images[0].new_zeros(len(images), self.num_channels, hf, wf)
        stems = images[0].new_zeros(len(images), self.stem_channels, 2 * hf, 2 * wf) if self.stem_channels else None
        mask = torch.ones(len(images), hf, wf, dtype=torch.bool, device=images[0].device)
        # Images with the same patch grid share one ViT call (each padded on its own to that grid, exactly
        # as if alone); images of different grids never attend to each other's padding.
        groups: dict[tuple, list[int]] = {}
        for i, g in enumerate(grids):
            groups.setdefault(g, []).append(i)
        for (gh, gw), idx in groups.items():
            ph, pw = padded[(gh, gw)]
            fmap, stem = self._feature_map(torch.stack([self._normalise_and_pad(images[i], ph * p, pw * p)
                                                        for i in idx]))
            out[idx, :, :ph, :pw] = fmap.to(out.dtype)
            if stems is not None:
                stems[idx, :, :2 * ph, :2 * pw] = stem.to(out.dtype)
            mask[idx, :gh, :gw] = False
        sizes = torch.tensor([tuple(im.shape[-2:]) for im in images], dtype=out.dtype, device=out.device)
        return FeatureMap(out, mask, sizes, stems)
