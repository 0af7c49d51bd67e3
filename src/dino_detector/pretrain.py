"""``python -m dino_detector.pretrain``: self-supervised pretraining of an encoder on unlabeled images
(DINO + iBOT + VICReg + KoLeo), and ``--eval_knn``: k-NN accuracy of annotated object crops.

    python -m dino_detector.pretrain --images data/unlabeled --arch flexible-tiny --time_budget_min 20 \\
        --output_dir outputs/pretrain          # -> outputs/pretrain/encoder_final.pth
    python -m dino_detector.train --dino_model outputs/pretrain/encoder_final.pth ...
    python -m dino_detector.pretrain --eval_knn --images IMGS --annotations train.json \\
        --val_annotations val.json --encoder outputs/pretrain/encoder_final.pth
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from .cli import parse_settings
from .config import PretrainConfig

CURVES_FILE = "pretrain_curves.png"  # every loss term over steps (analysis/plots.plot_pretraining)

log = logging.getLogger(__name__)


def crop_encoder(vit, device):
    """crops [N, 3, S, S] in 0..1 -> [N, 2D]: CLS token and mean patch token (as DINOv2's linear probes)."""
    import torch

    from .backbones.vit import imagenet_normalise

    patch = vit.config.patch_size
    prefix = 1 + getattr(vit.config, "num_register_tokens", 0)
    vit = vit.to(device).eval()

    def encode(crops: torch.Tensor) -> torch.Tensor:
        x = imagenet_normalise(crops.to(device))
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, -w % patch, 0, -h % patch))
        tokens = vit(pixel_values=x).last_hidden_state
        return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], -1).float()

    return encode


def evaluate_knn(cfg: PretrainConfig) -> dict:
    from .backbones.encoder_file import load_encoder
    from .backbones.vit import load_vit
    from .runtime.device import resolve_device, seed_everything
    from .ssl.knn import knn_report, object_crops

    k, images = cfg.knn, cfg.data.images
    if k.data:
        train_crops, val_crops = _layout_crops(k.data, cfg.run.seed)
    elif images and k.annotations and k.val_annotations:
        train_crops, val_crops = (images[0], k.annotations), (k.val_images or images[0], k.val_annotations)
    else:
        raise ValueError("--eval_knn needs --images, --annotations (training crops) and --val_annotations, or "
                         "--data with a dataset folder")
    seed_everything(cfg.run.seed)
    vit = load_encoder(k.encoder) if k.encoder else load_vit(cfg.model.arch, pretrained=cfg.model.pretrained)
    train_x, train_y, names = object_crops(*train_crops, k.knn_crop_size)
    val_x, val_y, val_names = object_crops(*val_crops, k.knn_crop_size)
    if val_names != names:
        raise ValueError(f"validation classes {val_names} differ from training classes {names}")
    report = knn_report(crop_encoder(vit, resolve_device(cfg.run.device)), (train_x, train_y), (val_x, val_y), names,
                        k=k.knn_k)
    report["encoder"] = k.encoder or (cfg.model.arch if cfg.model.pretrained
                                      else f"{cfg.model.arch} (random initialisation)")
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "knn_metrics.json").write_text(json.dumps(report, indent=2))
    print(f"k-NN (k={k.knn_k}) balanced accuracy {report['balanced_accuracy']:.4f}, accuracy "
          f"{report['accuracy']:.4f}, per class {report['per_class_recall']} -> {out / 'knn_metrics.json'}")
    return report


def _layout_crops(folder: str, seed: int):
    """(images, annotations) of a dataset folder's training and validation splits (a seeded share of the
    training images when it has no validation split), as ``train --data`` reads them."""
    from .config import DataConfig
    from .data.build import open_sources, resolve_paths

    sources = open_sources(resolve_paths(DataConfig(data=folder)), train=True, seed=seed)
    print(sources.summary(f"dataset {folder}:"))
    return (sources.train.images, sources.train.coco), (sources.val.images, sources.val.coco)


def curve_chart(cfg: PretrainConfig):
    """Draws ``pretrain_curves.png`` (every loss term over steps; the DINO panel with its uniform-output
    level ln K) in the output folder whenever the pretrainer reports its curve."""
    import math

    from .analysis.plots import plot_pretraining

    path = Path(cfg.run.output_dir) / CURVES_FILE
    return lambda rows: plot_pretraining(rows, path, uniform_loss=math.log(cfg.method.out_dim))


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_settings(PretrainConfig, argv, description=__doc__.splitlines()[0],
                            epilog="\n".join(__doc__.splitlines()[2:]), config_file=True)
    from .runtime.logging import setup_console
    setup_console()
    from .backbones.vit import PretrainedUnavailableError
    from .engine.run import RUN_STOPS, stopped_run_exit
    from .runtime.distributed import close_distributed
    from .spec import resolve_pretrain
    try:
        cfg = resolve_pretrain(cfg)
        if cfg.knn.eval_knn:
            evaluate_knn(cfg)
            return 0
        from .ssl.pretrainer import Pretrainer
        path = Pretrainer(cfg, on_curve=curve_chart(cfg)).fit()
    except (PretrainedUnavailableError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RUN_STOPS as err:
        return stopped_run_exit(err)
    finally:
        close_distributed()
    print(f"encoder: {path}  (train with --dino_model {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
