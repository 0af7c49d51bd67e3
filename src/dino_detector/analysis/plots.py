"""Charts and drawn detections (matplotlib / PIL), written as PNG files."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def draw_detections(image: Image.Image, boxes, labels, scores, names: dict[int, str]) -> Image.Image:
    """A copy of ``image`` with xyxy ``boxes`` and 'name score' captions."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    for box, label, score in zip(boxes, labels, scores):
        colour = PALETTE[int(label) % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        caption = f"{names.get(int(label), label)} {float(score):.2f}"
        tw = draw.textlength(caption)
        draw.rectangle([x0, max(0, y0 - 12), x0 + tw + 4, max(12, y0)], fill=colour)
        draw.text((x0 + 2, max(0, y0 - 12)), caption, fill=(0, 0, 0))
    return out


def plot_training(history: list[dict], metrics: dict | None, path: str | Path) -> None:
    """Loss per epoch (total and parts) and, when given, the final COCO metrics as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(11 if metrics else 6, 4), squeeze=False)
    ax = axes[0, 0]
    epochs = [h["epoch"] for h in history]
    for key in ("loss", "loss_ce", "loss_bbox", "loss_giou"):
        if history and key in history[0]:
            ax.plot(epochs, [h[key] for h in history], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    if metrics:
        keys = [k for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100") if metrics.get(k, -1) >= 0]
        bx = axes[0, 1]
        bx.bar(keys, [metrics[k] for k in keys], color="#3274a1")
        bx.set_ylim(0, 1)
        bx.set_title("validation (COCO)")
        for i, k in enumerate(keys):
            bx.text(i, metrics[k] + 0.02, f"{metrics[k]:.2f}", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
