"""ObjectDetector (public name ``DINOv2ObjectDetector``): a ViT backbone (DINOv2, DINOv3 or our flexible
encoder) -> projection / feature pyramid -> transformer encoder and decoder -> class + box heads.

The detector composes parts from its resolved model section (ARCHITECTURE.md, "the path of an image"); it
keeps that section, its classes and the image sizes it was trained at, nothing else of a run.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import operator
from pathlib import Path

import torch
from torch import nn

from ..backbones.adapters import apply_backbone_mode, count_parameters
from ..backbones.pyramid import SimpleFeaturePyramid
from ..backbones.resolve import resolve_backbone
from ..backbones.vit import ViTBackbone
from ..config import ModelConfig
from ..data.transforms import Resize
from .denoising import LABEL_EMBEDDING, DenoisingQueries
from .heads import HeadSpec, inverse_sigmoid
from .position import map_coordinates, map_position_embedding
from .postprocess import postprocess
from .transformer import Decoder, DecoderLayer, Encoder, EncoderLayer, FlatLevels
from .two_stage import ProposalSelector

log = logging.getLogger(__name__)
INITIAL_BOX_SIZE = 0.1  # initial reference boxes: 10 % of the image side, centres spread uniformly
DEFAULT_NUM_CLASSES = 80  # the Python API's default (COCO) when neither the arguments nor the config say


def with_classes(cfg: ModelConfig, num_classes: int | None = None, category_ids=None, class_names=None) -> ModelConfig:
    """``cfg`` with its classes filled in: the arguments, else the config's own, else ``num_classes`` labels
    0..C-1 named by their ids. Raises ValueError when the three disagree or there is no class."""
    ids = list(category_ids) if category_ids is not None else list(cfg.category_ids)
    names = list(class_names) if class_names is not None else list(cfg.class_names)
    n = num_classes if num_classes is not None else (cfg.num_classes or len(ids) or DEFAULT_NUM_CLASSES)
    if n < 1:
        raise ValueError(f"num_classes must be at least 1, got {n}")
    ids = ids or list(range(n))
    names = names or [str(c) for c in ids]
    if len(ids) != n or len(names) != n:
        raise ValueError(f"category_ids ({len(ids)}) and class_names ({len(names)}) must have num_classes ({n}) "
                         "entries")
    return dataclasses.replace(cfg, num_classes=n, category_ids=ids, class_names=names)


def check_prediction_settings(threshold: float, top_k: int) -> None:
    """ValueError unless 0 <= threshold <= 1 (scores are probabilities) and top_k >= 1."""
    try:
        score = float(threshold)
    except (TypeError, ValueError):
        score = math.nan
    if isinstance(threshold, bool) or not 0.0 <= score <= 1.0:  # NaN fails too
        raise ValueError(f"threshold must be a score in 0..1, got {threshold!r}")
    try:
        count = operator.index(top_k)
    except TypeError:
        count = 0
    if isinstance(top_k, bool) or count < 1:
        raise ValueError(f"top_k must be an integer of at least 1, got {top_k!r}")


class ObjectDetector(nn.Module):
    """End-to-end set-prediction detector.

    ``forward(images)`` takes a float tensor [B, 3, H, W] in 0..1 (any H, W) or a list of [3, h, w] tensors of
    different sizes, and returns ``pred_logits`` [B, Q, C], ``pred_boxes`` [B, Q, 4] (cx, cy, w, h relative to
    each image's own size) and ``aux_outputs`` (the same for every earlier decoder layer).

    Built from ``config`` (a ModelConfig, resolved here by backbones/resolve.py if it is not yet) with any
    ModelConfig field as a keyword override; ``resize``: the sizes ``predict`` resizes to (a ``Resize`` or a
    ``DataConfig``; ``data_config`` is its older name).
    """

    def __init__(self, num_classes: int | None = None, dino_model: str | None = None, pretrained: bool | None = None,
                 config: ModelConfig | None = None, category_ids: list[int] | None = None,
                 class_names: list[str] | None = None, resize=None, data_config=None, **overrides):
        super().__init__()
        given = dict(overrides)
        if dino_model is not None:
            given["dino_model"] = dino_model
        if pretrained is not None:
            given["pretrained"] = pretrained
        cfg = (config or ModelConfig()).update(given)  # checks names, types and choices
        self.config = resolve_backbone(with_classes(cfg, num_classes, category_ids, class_names))
        self.resize = Resize.of(resize if resize is not None else data_config if data_config is not None else Resize())
        self.backbone_mode = self.config.backbone_mode  # "full" once a frozen first stage is unfrozen
        self.weights = "raw"  # which weights of a checkpoint were loaded: raw or ema
        self._build(self.config)

    def _build(self, cfg: ModelConfig) -> None:
        windows = cfg.backbone_windows if cfg.backbone_attention == "windowed" else 0
        self.backbone = ViTBackbone(cfg.dino_model, pretrained=cfg.pretrained, feature_layers=cfg.backbone_feature_layers,
                                    weights_file=cfg.dino_weights, windows=windows,
                                    global_blocks=cfg.backbone_global_blocks, patch_size=cfg.backbone_patch_size,
                                    arch=cfg.backbone_arch, stem_level=cfg.fine_level == "stem")
        apply_backbone_mode(self.backbone, mode=cfg.backbone_mode, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                            dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules,
                            last_n_blocks=cfg.lora_last_n_blocks)
        d = cfg.hidden_dim
        self.pyramid = SimpleFeaturePyramid(self.backbone.num_channels, d, cfg.num_feature_levels,
                                            stem_dim=self.backbone.stem_channels)
        self.level_embed = nn.Parameter(torch.randn(cfg.num_feature_levels, d) * 0.02)
        layer = dict(dim=d, heads=cfg.num_heads, ffn=cfg.dim_feedforward, dropout=cfg.dropout, attention=cfg.attention,
                     levels=cfg.num_feature_levels, points=cfg.num_points)
        self.encoder = Encoder(EncoderLayer(**layer), cfg.encoder_layers)
        heads = HeadSpec(num_classes=cfg.num_classes, softmax=cfg.classifier == "softmax",
                         class_layers=cfg.class_mlp_layers, box_layers=cfg.box_mlp_layers, dropout=cfg.head_dropout)
        self.decoder = Decoder(DecoderLayer(**layer, shared_values=cfg.decoder_shared_values),
                               num_layers=cfg.decoder_layers, dim=d, heads=heads, box_refine=cfg.box_refine)
        self.proposals = ProposalSelector(d, heads, cfg.num_queries) if cfg.two_stage else None
        if cfg.hybrid_queries < 0:
            raise ValueError(f"hybrid_queries must be >= 0, got {cfg.hybrid_queries}")
        if cfg.soft_nms_sigma < 0:
            raise ValueError(f"soft_nms_sigma must be >= 0 (0: off), got {cfg.soft_nms_sigma}")
        self.query_content = nn.Embedding(cfg.num_queries, d)
        # H-DETR's one-to-many branch: queries that train beside the main ones and are dropped at inference
        self.hybrid_content = nn.Embedding(cfg.hybrid_queries, d) if cfg.hybrid_queries else None
        self.denoising = (DenoisingQueries(cfg.num_classes, d, cfg.dn_queries, box_noise=cfg.dn_box_noise,
                                           label_noise=cfg.dn_label_noise) if cfg.dn_queries else None)
        self.query_boxes = self.hybrid_boxes = None  # two-stage: the proposals are the reference boxes
        if not cfg.two_stage:
            self.query_boxes = self._initial_boxes(cfg.num_queries, seed=0)
            if cfg.hybrid_queries:
                self.hybrid_boxes = self._initial_boxes(cfg.hybrid_queries, seed=1)

    @staticmethod
    def _initial_boxes(n: int, seed: int) -> nn.Embedding:
        """Logits of ``n`` learned initial reference boxes, centres spread uniformly."""
        boxes = nn.Embedding(n, 4)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            centres = torch.rand(n, 2, generator=g)
            sizes = torch.full((n, 2), INITIAL_BOX_SIZE)
            boxes.weight.copy_(inverse_sigmoid(torch.cat([centres, sizes], -1)))
        return boxes

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def category_ids(self) -> list[int]:
        """The dataset's category id of each label 0..C-1."""
        return self.config.category_ids

    @property
    def class_names(self) -> list[str]:
        return self.config.class_names

    @property
    def data_config(self) -> Resize:
        """Older name of ``resize``."""
        return self.resize

    def class_indexed_tensors(self) -> set[str]:
        """State-dict names of the tensors whose first dimension indexes the classes (each class head's last
        layer, with a softmax classifier's "no object" row last; the denoising label embedding)."""
        heads = [f"decoder.class_heads.{i}" for i in range(len(self.decoder.class_heads))]
        if self.proposals is not None:
            heads.append("proposals.class_head")
        last = {h: len(self.get_submodule(h).layers) - 1 for h in heads}
        names = {f"{h}.layers.{i}.{p}" for h, i in last.items() for p in ("weight", "bias")}
        return names | ({LABEL_EMBEDDING} if self.denoising is not None else set())

    @property
    def softmax(self) -> bool:
        """True when the class logits carry a last "no object" column (softmax / cross-entropy)."""
        return self.config.classifier == "softmax"

    @property
    def decode_options(self) -> dict:
        """How this model's raw outputs become detections: keywords of ``postprocess`` / ``topk_detections``."""
        return {"softmax": self.softmax, "soft_nms_sigma": self.config.soft_nms_sigma}

    def parameter_summary(self) -> str:
        trainable, total = count_parameters(self)
        bb_train, bb_total = count_parameters(self.backbone)
        return (f"backbone {self.config.dino_model} ({self.backbone_mode}, {self.config.backbone_weights} weights): "
                f"{bb_train:,} trainable of {bb_total:,}; "
                f"detector total: {trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.1f} %)")

    # ---------------------------------------------------------------- forward
    @staticmethod
    def _as_batch(images) -> list[torch.Tensor] | torch.Tensor:
        """A [B, 3, H, W] tensor stays one batch (one size, one backbone call); a list may mix sizes."""
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                images = images[None]
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
            return images
        images = list(images)
        if not images:
            raise ValueError("no images given")
        for im in images:
            if not isinstance(im, torch.Tensor) or im.dim() != 3 or im.shape[0] != 3:
                raise ValueError("each image must be a [3, H, W] float tensor")
        return images

    def forward(self, images, targets: list[dict] | None = None) -> dict:
        """``targets`` (training, with ``dn_queries``): per image ``labels`` [n] and ``boxes`` [n, 4] (cx, cy,
        w, h relative to the image), from which the denoising queries are built."""
        memory, pos, ref_points, levels, first = self._encode(images)
        b = memory.shape[0]
        hybrid = self.hybrid_content.num_embeddings if self.training and self.hybrid_content is not None else 0
        enc_outputs = None
        if self.proposals is not None:
            # proposals come from the encoded tokens (the upsampled level, when not encoded, proposes nothing)
            ref_logits, enc_outputs = self.proposals(memory[:, first:], ref_points[:, first:],
                                                     levels.shapes[1:] if first else levels.shapes,
                                                     levels.padding_mask[:, first:], hybrid)
        else:
            ref_logits = self.query_boxes.weight
            if hybrid:
                ref_logits = torch.cat([ref_logits, self.hybrid_boxes.weight])
            ref_logits = ref_logits[None].expand(b, -1, -1)
        # the best proposals go to the main queries, the rest (training only) to the hybrid branch
        main, end = min(self.config.num_queries, ref_logits.shape[1]), ref_logits.shape[1]
        tgt = self.query_content.weight[:main]
        if hybrid:
            tgt = torch.cat([tgt, self.hybrid_content.weight[: end - main]])
        tgt = tgt[None].expand(b, -1, -1)
        branch = (torch.arange(end, device=tgt.device) >= main).long()  # 0 main, 1 hybrid, 2 + g denoising
        dn = self.denoising(targets) if self.training and self.denoising is not None and targets else None
        if dn is not None:
            tgt, ref_logits = torch.cat([tgt, dn.content], 1), torch.cat([ref_logits, dn.ref_logits], 1)
            branch = torch.cat([branch, dn.branch + 2])
        mask = branch[:, None] != branch[None, :] if hybrid or dn is not None else None  # branches stay apart
        logits, boxes = self.decoder(tgt, ref_logits, memory, pos, levels, mask)

        out = self._layer_outputs(logits[:, :, :main], boxes[:, :, :main])
        if enc_outputs is not None:
            out["enc_outputs"] = enc_outputs
        if hybrid:
            out["hybrid_outputs"] = self._layer_outputs(logits[:, :, main:end], boxes[:, :, main:end])
        if dn is not None:
            out["dn_outputs"] = {**self._layer_outputs(logits[:, :, end:], boxes[:, :, end:]),
                                 "indices": dn.indices(), "groups": dn.groups}
        elif self.training and self.denoising is not None:  # no objects: the label embedding still gets a
            out["pred_logits"] = out["pred_logits"] + 0.0 * self.denoising.label_embed.weight.sum()  # grad (DDP)
        return out

    def _encode(self, images) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, FlatLevels, int]:
        """Backbone, pyramid and encoder: memory [B, S, d], its position embedding [B, S, d], the token
        centres [B, S, 2], the levels' layout, and the index of the first encoded token (the tokens of the
        upsampled level before it are read by attention but not encoded)."""
        feats = self.backbone(self._as_batch(images))
        p = self.backbone.patch_size
        sizes = feats.image_sizes
        grid_sizes = torch.ceil(sizes / p).long()
        levels = self.pyramid(feats.tensor, feats.mask, grid_sizes, sizes / p, feats.stem)
        src, pos, ref_points = [], [], []
        for i, lvl in enumerate(levels):
            shape = tuple(lvl.tensor.shape[-2:])
            src.append(lvl.tensor.flatten(2).transpose(1, 2))
            pos.append(map_position_embedding(shape, lvl.valid_ratios, self.config.hidden_dim) + self.level_embed[i])
            ref_points.append(map_coordinates(shape, lvl.valid_ratios))
        src, pos, ref_points = torch.cat(src, 1), torch.cat(pos, 1), torch.cat(ref_points, 1)
        attn_levels = FlatLevels([tuple(lvl.tensor.shape[-2:]) for lvl in levels],
                                 torch.stack([lvl.valid_ratios for lvl in levels], 1),
                                 torch.cat([lvl.mask.flatten(1) for lvl in levels], 1))
        first = 0  # tokens before this index are not updated by the encoder (levels are finest first)
        if self.pyramid.scales[0] > 1 and not self.config.encode_upsampled_level:
            first = levels[0].tensor.shape[-2] * levels[0].tensor.shape[-1]
        return self.encoder(src, pos, ref_points, attn_levels, first), pos, ref_points, attn_levels, first

    def _layer_outputs(self, logits: torch.Tensor, boxes: torch.Tensor) -> dict:
        """logits [L, B, Q, C], boxes [L, B, Q, 4] of the decoder layers -> the last layer's outputs plus
        ``aux_outputs`` (the earlier layers') when the auxiliary losses are on."""
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.config.aux_loss:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx}
                                  for lg, bx in zip(logits[:-1], boxes[:-1])]
        return out

    # ---------------------------------------------------------------- inference API
    @torch.no_grad()
    def predict(self, images, threshold: float = 0.5, top_k: int = 100, color: str = "rgb"):
        """Detect objects in a path, PIL image, array, tensor, or a list of those. ``color``: the channel
        order of array and tensor inputs, "rgb" or "bgr" (an OpenCV ``cv2.imread`` image).

        Inputs (``data.images.to_tensor_image``): arrays HxW, HxWx1, HxWx3 or HxWx4 (alpha dropped); tensors
        [3, H, W] or [1, H, W] (gray; a 4-channel tensor is a ValueError). uint8 and other integer dtypes hold
        0..255, floats (float64 too) 0..1; values outside those, NaN and empty images are a ValueError. Any
        size works, 1 x 1 or 10000 x 50: images are resized to the model's sizes first, so memory is bounded.
        ``threshold`` must be in 0..1 and ``top_k`` at least 1 (ValueError naming them).

        Returns a ``Prediction`` per image (a list for a list input, [] for []): a dict of boxes [N, 4] xyxy
        in original pixels, scores, labels (dataset category ids) and label_names, with ``to_coco()`` and
        ``to_supervision()``."""
        check_prediction_settings(threshold, top_k)
        from ..data.images import to_tensor_image
        from ..data.transforms import resize_for_inference
        from .prediction import Prediction

        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            return []
        tensors = [to_tensor_image(item, color) for item in items]
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        inputs = [resize_for_inference(t, self.resize).to(device) for t in tensors]
        outputs = self(inputs)
        self.train(was_training)
        dets = postprocess(outputs, [tuple(t.shape[-2:]) for t in tensors], self.category_ids, top_k, threshold,
                           **self.decode_options)
        results = []
        for det in dets:
            names = [self.class_names[i] for i in det["labels"].tolist()]
            results.append(Prediction(boxes=det["boxes"].cpu(), scores=det["scores"].cpu(),
                                      labels=det["category_ids"].cpu(), label_names=names))
        return results[0] if single else results

    # ---------------------------------------------------------------- persistence (models/persistence.py)
    def metadata(self) -> dict:
        """What rebuilds this model: its model section (with the backbone mode it trains in now), the image
        sizes, and its classes (also at the top level, as files before the run specification had them)."""
        model = {**self.config.to_dict(), "backbone_mode": self.backbone_mode}
        return {"model": model, "data": dataclasses.asdict(self.resize), "category_ids": self.category_ids,
                "class_names": self.class_names}

    @classmethod
    def from_metadata(cls, saved: dict) -> "ObjectDetector":
        """The architecture described by a run specification, a checkpoint's metadata or a ``config.json``,
        with random weights (they come from the file)."""
        from .persistence import saved_model_settings
        cfg, resize = saved_model_settings(saved)
        return cls(config=cfg, resize=resize)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu", weights: str = "auto") -> "ObjectDetector":
        """Rebuild a model from a training checkpoint (``dino_detector_*.pth``), offline, with its deployable
        weights (``weights="auto"``: the EMA's when the run kept one) or the ``"raw"`` / ``"ema"`` ones.
        Raises FileNotFoundError, or ValueError for a file that is not a checkpoint of this library."""
        from .persistence import load_detector_checkpoint
        return cls.from_checkpoint_dict(load_detector_checkpoint(path, map_location), path, weights)

    @classmethod
    def from_checkpoint_dict(cls, ckpt: dict, path: str | Path = "checkpoint", weights: str = "auto") -> "ObjectDetector":
        """The model of an already loaded checkpoint dict (``path`` names it in error messages); ``weights``
        as for ``from_checkpoint``. ``model.weights`` says which were loaded."""
        from .persistence import checkpoint_settings, load_model_state
        model = cls.from_metadata(checkpoint_settings(ckpt))
        model.weights = load_model_state(model, ckpt, path, weights)
        return model

    def save_pretrained(self, directory: str | Path, metrics: dict | None = None, spec: dict | None = None,
                        run_config: dict | None = None) -> None:
        """``model.safetensors`` (weights), ``config.json`` (the run specification ``spec`` when given, else
        this model's metadata) and a model card ``README.md`` filled from them and, when given, the run's
        metrics. Reload with ``from_pretrained``. ``run_config`` is the older name of ``spec``."""
        from .persistence import save_pretrained
        save_pretrained(self, directory, metrics, spec if spec is not None else run_config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, weights: str = "auto") -> "ObjectDetector":
        """A ``save_pretrained`` folder, or a training checkpoint file (``dino_detector_*.pth``; ``weights``:
        auto = the deployable ones, raw or ema)."""
        from .persistence import load_pretrained
        return load_pretrained(cls, directory, weights)


DINOv2ObjectDetector = ObjectDetector  # the public name since the first release: DINOv2, DINOv3 and flexible backbones
