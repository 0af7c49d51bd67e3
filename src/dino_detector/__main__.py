"""``dino-detector <command> [flags]``: every entry module behind one console script."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {"train": "train", "demo": "demo", "info": "info", "download": "download", "pretrain": "pretrain",
            "analyze": "analyze", "predict": "predict", "export": "export"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: dino-detector {{{','.join(COMMANDS)}}} [flags]   (each command has --help)")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"dino_detector.{COMMANDS[argv[0]]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
