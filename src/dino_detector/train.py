"""``python -m dino_detector.train``: train and evaluate a detector (see README for examples).

Several processes (GPUs, or CPU processes with gloo): ``torchrun --nproc_per_node N -m dino_detector.train ...``;
several machines: add torchrun's ``--nnodes --node_rank --master_addr --master_port`` (README, Multi-GPU)."""
from __future__ import annotations

import logging
import os
import sys

from .cli import parse_config


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_config(argv, "Train / evaluate a DETR-style detector on a DINOv2, DINOv3 or flexible-encoder "
                                "backbone.", epilog=__doc__.split("\n\n", 1)[1])
    from .runtime.logging import setup_console
    setup_console(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    from .backbones.vit import PretrainedUnavailableError
    from .data.download import DownloadError, UnsafeArchiveError
    from .engine.run import RUN_STOPS, stopped_run_exit
    from .engine.trainer import Trainer
    from .runtime.distributed import close_distributed
    try:
        metrics = Trainer(cfg).fit()
    except (PretrainedUnavailableError, FileNotFoundError, ValueError, DownloadError, UnsafeArchiveError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RUN_STOPS as err:  # the run started, and stopped short: interrupted (saved) or a fault
        return stopped_run_exit(err)
    finally:
        close_distributed()
    if metrics is not None:
        kind = "ema_" if metrics.get("weights") == "ema" else ""
        print(f"AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  "
              f"-> {cfg.train.output_dir}/val_metrics_{kind}final.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
