"""``python -m dino_detector.download``: fetch COCO 2017 (images + annotations) with resume and checksums."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from .cli import parse_settings
from .config import Settings
from .data.download import COCO_BASE_URL  # the data package's __init__ imports nothing: no torch here


@dataclass(frozen=True)
class DownloadSettings(Settings):
    download_train: bool = False  # train2017 images + annotations (19 GB)
    download_val: bool = False  # val2017 images + annotations (1 GB)
    download_test: bool = False  # test2017 images + image info (6.6 GB)
    data_dir: str = "data/coco"  # where images/ and annotations/ go
    base_url: str = COCO_BASE_URL  # mirror of images.cocodataset.org
    progress: bool = True  # progress bars (--no_progress: none)


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_settings(DownloadSettings, argv, description=__doc__.splitlines()[0].strip("`: "))
    from .data.download import DownloadError, UnsafeArchiveError, download_coco
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        fetched = download_coco(args.data_dir, train=args.download_train, val=args.download_val,
                                test=args.download_test, base_url=args.base_url, progress=args.progress)
    except (DownloadError, UnsafeArchiveError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(fetched)} archive(s) downloaded into {args.data_dir}" if fetched
          else f"nothing to do: {args.data_dir} is complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
