"""``python -m dino_detector.analyze``: reports on detections. So far: ``--compare`` several COCO results
files (ours, YOLO's, RF-DETR's, ...) against one annotation file with the same evaluator."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .engine.logging import setup_console


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", nargs="+", metavar="RESULTS_JSON", help="COCO results files to compare")
    parser.add_argument("--labels", nargs="+", help="a name per results file (default: file names)")
    parser.add_argument("--annotations", help="the COCO annotation file every results file is scored against")
    parser.add_argument("--score_threshold", type=float, default=0.5, help="for precision / recall / F1")
    parser.add_argument("--output_dir", default="outputs/analysis")
    args = parser.parse_args(argv)
    setup_console()
    if not args.compare:
        parser.error("nothing to do: pass --compare RESULTS_JSON ... --annotations FILE")
    if not args.annotations:
        parser.error("--compare needs --annotations (the ground truth every results file is scored against)")
    from .analysis.compare import comparison_chart, comparison_table, compare
    try:
        rows = compare(args.annotations, args.compare, args.labels, args.score_threshold)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(rows)
    (out / "comparison.md").write_text(table + "\n")
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    comparison_chart(rows, out / "comparison.png")
    print(table)
    print(f"-> {out / 'comparison.md'}, {out / 'comparison.png'}, {out / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
