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

import torch

from .cli import add_dataclass_arguments
from .engine.logging import setup_console
from .ssl.config import PretrainConfig

log = logging.getLogger(__name__)


def crop_encoder(vit: torch.nn.Module, device: torch.device):
    """crops [N, 3, S, S] in 0..1 -> [N, 2D]: CLS token and mean patch token (as DINOv2's linear probes)."""
    from .backbones.dino import imagenet_normalise

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
    from .backbones.dino import load_vit
    from .backbones.encoder_file import load_encoder
    from .engine.trainer import resolve_device, seed_everything
    from .ssl.knn import knn_report, object_crops

    if not (cfg.images and cfg.annotations and cfg.val_annotations):
        raise ValueError("--eval_knn needs --images, --annotations (training crops) and --val_annotations")
    seed_everything(cfg.seed)
    vit = load_encoder(cfg.encoder) if cfg.encoder else load_vit(cfg.arch, cfg.pretrained)
    train_x, train_y, names = object_crops(cfg.images[0], cfg.annotations, cfg.knn_crop_size)
    val_x, val_y, val_names = object_crops(cfg.val_images or cfg.images[0], cfg.val_annotations, cfg.knn_crop_size)
    if val_names != names:
        raise ValueError(f"validation classes {val_names} differ from training classes {names}")
    report = knn_report(crop_encoder(vit, resolve_device(cfg.device)), (train_x, train_y), (val_x, val_y), names,
                        k=cfg.knn_k)
    report["encoder"] = cfg.encoder or (cfg.arch if cfg.pretrained else f"{cfg.arch} (random initialisation)")
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    out = Path(cfg.output_dir) / "knn_metrics.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"k-NN (k={cfg.knn_k}) balanced accuracy {report['balanced_accuracy']:.4f}, accuracy "
          f"{report['accuracy']:.4f}, per class {report['per_class_recall']} -> {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", dest="config_file", default=None, help="YAML file of settings")
    add_dataclass_arguments(parser, PretrainConfig, "pretraining")
    args = vars(parser.parse_args(argv))
    cfg = PretrainConfig()
    config_file = args.pop("config_file")
    if config_file:
        import yaml
        cfg.update(yaml.safe_load(Path(config_file).read_text()) or {})
    cfg.update({k: v for k, v in args.items() if v is not None})
    setup_console()
    from .backbones.dino import PretrainedUnavailableError
    from .engine.distributed import close_distributed
    try:
        if cfg.eval_knn:
            evaluate_knn(cfg)
            return 0
        from .ssl.pretrainer import Pretrainer
        path = Pretrainer(cfg).fit()
    except (PretrainedUnavailableError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        close_distributed()
    print(f"encoder: {path}  (train with --dino_model {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
