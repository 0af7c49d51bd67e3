"""``python -m dino_detector.train``: train and evaluate a detector (see README for examples).

Several processes (GPUs, or CPU processes with gloo): ``torchrun --nproc_per_node N -m dino_detector.train ...``;
several machines: add torchrun's ``--nnodes --node_rank --master_addr --master_port`` (README, Multi-GPU)."""
from __future__ import annotations

import logging
import os
import sys

from .cli import add_config_arguments, base_parser, config_from_args
from .engine.logging import setup_console


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("Train / evaluate a DINO-backbone DETR detector.")
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv))
    setup_console(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    from .backbones.dino import PretrainedUnavailableError
    from .data.download import DownloadError, UnsafeArchiveError
    from .engine.distributed import close_distributed
    from .engine.trainer import Trainer
    try:
        metrics = Trainer(cfg).fit()
    except (PretrainedUnavailableError, FileNotFoundError, ValueError, DownloadError, UnsafeArchiveError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        close_distributed()
    if metrics is not None:
        print(f"AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  "
              f"-> {cfg.train.output_dir}/val_metrics_final.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
