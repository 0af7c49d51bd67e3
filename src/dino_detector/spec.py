"""The resolved run specification: the one frozen description of a run, made before anything is built.

``resolve_run`` turns parsed settings (defaults < preset < YAML < flags, config/) into a ``RunSpec``: the same
four sections with every value a rule decides filled in, each rule in one place:
- backbone: where the weights come from, how the backbone trains, its attention and patch size
  (backbones/resolve.py; ``pretrained`` becomes False for names without published weights);
- classes: their number, names and dataset ids, from the training annotations (or the checkpoint being
  evaluated); values the settings give must match them;
- learning rates: the backbone's (lr for random weights, lr x 0.1 for pretrained ones), the head's after
  unfreezing, the epoch of the step drop;
- debug mode's epochs, lr and evaluation interval (a warning names every value of yours it overrides);
- the split paths ``--data DIR`` (its detected layout) and ``--download_*_data`` point at, and, for
  ``--only_evaluate``, the checkpoint's image sizes.
Resolution is idempotent: a resolved spec resolves to itself, so the ``config.yaml`` a run writes, fed back
with ``--config``, gives the same spec. Every builder then takes its values from the spec by keyword.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from .backbones.resolve import resolve_backbone, weights_source
from .config import Config, ModelConfig, PretrainConfig, TrainConfig
from .data.build import DataSources, open_sources, resolve_paths
from .data.layout import detect_layout
from .models.persistence import checkpoint_settings, saved_model_settings

log = logging.getLogger(__name__)
DEBUG_EVAL_EVERY = 10  # --debug validates this often: enough to watch convergence, cheap on the small subset
PRETRAINED_BACKBONE_LR_FACTOR = 0.1  # pretrained backbone weights are adapted gently; random ones learn like the head
SIZE_FIELDS = ("image_size", "min_size", "max_size")
# model settings that change only the post-processing, not the weights: --only_evaluate takes them from the
# command line when given there (else from the checkpoint), so a trained model can be scored with each
POSTPROCESS_FIELDS = ("soft_nms_sigma",)


@dataclass(frozen=True)
class RunSpec(Config):
    """A ``Config`` whose every value is resolved (made by ``resolve_run`` only)."""


@dataclass
class RunPlan:
    """What a run knows before it builds anything: its spec and its annotations, read once."""
    spec: RunSpec
    sources: DataSources


def plan_run(config: Config, checkpoint: dict | None = None) -> RunPlan:
    """Read the run's annotation files (once) and resolve its spec with their classes. ``checkpoint``: the
    loaded ``--checkpoint`` (``--only_evaluate`` takes the model from it)."""
    t, d = config.train, config.data
    if d.proposals_from and not d.proposals:
        raise ValueError("--proposals_from names the detector whose boxes --proposals trains on: add --proposals")
    finder = None
    if d.proposals_from and not t.only_evaluate:
        from .models.detector_proposals import DetectorProposals
        finder = DetectorProposals(d.proposals_from, d.proposals_min_score, device=t.device)
    sources = open_sources(resolve_paths(d), train=not t.only_evaluate, seed=t.seed,
                           run_folder=t.output_dir, resume=checkpoint is not None and not t.only_evaluate,
                           split_validation=not t.debug, finder=finder)
    where = d.data
    if where:
        layout = detect_layout(where)
        log.info(sources.summary(f"dataset {where}: {layout.kind}, {layout.format} annotations"))
    else:
        log.info(sources.summary("data:"))
    classes = sources.train.classes() if sources.train is not None else None
    return RunPlan(resolve_run(config, classes=classes, checkpoint=checkpoint), sources)


def resolve_run(config: Config, *, classes: tuple[list[int], list[str]] | None = None,
                checkpoint: dict | None = None) -> RunSpec:
    """The resolved spec of ``config``. ``classes``: (category ids, names) of the training annotations,
    needed to train; ``checkpoint``: the loaded checkpoint, needed by ``--only_evaluate``."""
    m, d, t = config.model, config.data, config.train
    t = _debug_settings(t, config.given)
    if t.only_evaluate:
        if checkpoint is None:
            raise ValueError("--only_evaluate needs --checkpoint with a trained model")
        saved = checkpoint_settings(checkpoint)
        m, resize = saved_model_settings(saved)  # the architecture of the trained model; weights from the file
        given = {k: getattr(config.model, k) for k in POSTPROCESS_FIELDS if k in config.given}
        m = resolve_backbone(dataclasses.replace(m, **given))
        if not config.given & set(SIZE_FIELDS):  # evaluate at the sizes it was trained with
            d = dataclasses.replace(d, **dataclasses.asdict(resize))
    else:
        if classes is None:
            if d.data and not d.train_annotations:
                raise ValueError(f"{d.data} has no training split to train on; give --train_images and "
                                 "--train_annotations (or --only_evaluate)")
            raise ValueError("training needs --train_images and --train_annotations (or --only_evaluate)")
        m = resolve_backbone(_first_stage(m, t))
        m = _match_classes(m, *classes)
    t = _learning_rates(t, m)
    d = resolve_paths(d)
    return RunSpec(model=m, data=d, train=t, loss=config.loss, preset=config.preset, given=config.given)


def _debug_settings(t: TrainConfig, given: frozenset) -> TrainConfig:
    """--debug: ``debug_epochs`` epochs at ``debug_lr``, validated every DEBUG_EVAL_EVERY epochs."""
    if not t.debug:
        return t
    debug = {"epochs": t.debug_epochs, "lr": t.debug_lr, "eval_every": DEBUG_EVAL_EVERY}
    for name, value in debug.items():
        if name in given and getattr(t, name) != value:
            log.warning("--debug sets %s to %s (your settings gave %s)", name, value, getattr(t, name))
    return dataclasses.replace(t, **debug)


def _first_stage(m: ModelConfig, t: TrainConfig) -> ModelConfig:
    """Staged training (--unfreeze_at_epoch) starts with a frozen backbone."""
    if t.unfreeze_at_epoch <= 0:
        return m
    if m.backbone_mode not in ("auto", "frozen"):
        raise ValueError(f"--unfreeze_at_epoch {t.unfreeze_at_epoch} needs a frozen backbone for the first stage, "
                         f"but --backbone_mode is '{m.backbone_mode}'; use --backbone_mode frozen")
    if t.unfreeze_at_epoch >= t.epochs:
        log.warning("--unfreeze_at_epoch %d >= --epochs %d: the backbone stays frozen", t.unfreeze_at_epoch, t.epochs)
    return dataclasses.replace(m, backbone_mode="frozen")


def _match_classes(m: ModelConfig, category_ids: list[int], names: list[str]) -> ModelConfig:
    """The classes of the training annotations; a number, ids or names the settings give must be the same."""
    given = {"num_classes": (m.num_classes, len(names)), "category_ids": (list(m.category_ids), category_ids),
             "class_names": (list(m.class_names), names)}
    for key, (set_to, found) in given.items():
        if set_to and set_to != found:
            raise ValueError(f"{key} is {set_to} in the settings, but the training annotations have {found}: "
                             f"category ids are mapped to labels for you, so leave {key} out (0 / empty) to "
                             "take them from the data")
    return dataclasses.replace(m, num_classes=len(names), category_ids=list(category_ids), class_names=list(names))


def _learning_rates(t: TrainConfig, m: ModelConfig) -> TrainConfig:
    """Every learning rate explicit: the backbone's, the head's after unfreezing, the step drop's epoch."""
    backbone = t.lr_backbone if t.lr_backbone > 0 else (
        t.lr if m.backbone_weights == "random" else t.lr * PRETRAINED_BACKBONE_LR_FACTOR)
    drop = t.lr_drop_epoch if t.lr_drop_epoch > 0 else max(1, math.ceil(t.epochs * t.lr_drop_fraction))
    return dataclasses.replace(t, lr_backbone=backbone, unfreeze_lr=t.unfreeze_lr if t.unfreeze_lr > 0 else t.lr,
                               lr_drop_epoch=drop)


def resolve_pretrain(config: PretrainConfig) -> PretrainConfig:
    """Pretraining settings with ``pretrained`` resolved by the backbone rule (False for an encoder without
    published weights, whatever was asked)."""
    source = weights_source(config.model.arch, pretrained=config.model.pretrained)
    return config.update({"pretrained": source != "random"})
