"""``python -m dino_detector.download``: fetch COCO 2017 (images + annotations) with resume and checksums."""
from __future__ import annotations

import argparse
import logging
import sys

from .data.download import COCO_BASE_URL, DownloadError, UnsafeArchiveError, download_coco


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`: "))
    parser.add_argument("--download_train", action="store_true", help="train2017 images + annotations (19 GB)")
    parser.add_argument("--download_val", action="store_true", help="val2017 images + annotations (1 GB)")
    parser.add_argument("--download_test", action="store_true", help="test2017 images + image info (6.6 GB)")
    parser.add_argument("--data_dir", default="data/coco", help="where images/ and annotations/ go")
    parser.add_argument("--base_url", default=COCO_BASE_URL, help="mirror of images.cocodataset.org")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        fetched = download_coco(args.data_dir, args.download_train, args.download_val, args.download_test,
                                args.base_url, progress=not args.no_progress)
    except (DownloadError, UnsafeArchiveError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(fetched)} archive(s) downloaded into {args.data_dir}" if fetched
          else f"nothing to do: {args.data_dir} is complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
