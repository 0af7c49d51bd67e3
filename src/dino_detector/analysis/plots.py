"""Charts and drawn detections (matplotlib / PIL), written as PNG files."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# class colours: no pure greens, which mark the ground truth
PALETTE = [(230, 25, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (240, 50, 230), (255, 225, 25),
           (0, 0, 128), (170, 110, 40), (128, 0, 0), (70, 240, 240)]
TRUTH_COLOUR = (0, 230, 0)
MIN_DRAW_SIDE = 640  # smaller images are enlarged first so that captions stay legible


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled TrueType font (needs FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def draw_detections(image: Image.Image, boxes, labels, scores, names: dict[int, str],
                    truth: list[tuple[list[float], int]] | None = None, header: str | None = None) -> Image.Image:
    """A copy of ``image`` with xyxy ``boxes`` in class colours captioned 'name 0.87'; ``truth`` boxes
    (xyxy, category id) in green; an optional ``header`` line above the picture."""
    out = image.convert("RGB")
    scale = max(1.0, MIN_DRAW_SIDE / max(out.size))
    if scale > 1:
        out = out.resize((round(out.width * scale), round(out.height * scale)), Image.Resampling.BICUBIC)
    else:
        out = out.copy()
    font_size = max(16, round(max(out.size) / 40))  # about 1/40 of the picture: readable at full size
    font = _font(font_size)
    draw = ImageDraw.Draw(out)
    line = max(2, font_size // 6)
    for box, _ in truth or []:
        draw.rectangle([v * scale for v in box], outline=TRUTH_COLOUR, width=max(1, line - 1))
    for box, label, score in zip(boxes, labels, scores):
        colour = PALETTE[int(label) % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        caption = f"{names.get(int(label), label)} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        ty = y0 - (bottom - top) - 4 if y0 >= bottom - top + 4 else y0  # above the box, inside at the top edge
        draw.rectangle([x0, ty, x0 + right - left + 4, ty + bottom - top + 4], fill=colour)
        text_colour = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        draw.text((x0 + 2 - left, ty + 2 - top), caption, fill=text_colour, font=font)
    if header:
        band = font_size + 10
        framed = Image.new("RGB", (out.width, out.height + band), (255, 255, 255))
        framed.paste(out, (0, band))
        ImageDraw.Draw(framed).text((6, 5), header, fill=(0, 0, 0), font=font)
        out = framed
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


PRETRAIN_PANELS = ("loss", "dino", "ibot", "mim", "koleo", "vicreg", "embedding_std")  # those a run logs, in this order


def plot_pretraining(rows: list[dict], path: str | Path, uniform_loss: float | None = None) -> Path | None:
    """Every pretraining loss term (and the embedding spread) over steps, one panel each. ``uniform_loss``
    (ln K, the DINO loss of a uniform output) is drawn on the DINO panel: a curve that stays on it is not
    learning the image-level objective. ``rows``: ``{"step": s, term: value, ...}``. None without rows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in PRETRAIN_PANELS if rows and any(k in r for r in rows)]
    if not keys:
        return None
    cols = min(3, len(keys))
    fig, axes = plt.subplots((len(keys) + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.2 * ((len(keys) + 2) // 3)),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([s for s, _ in points], [v for _, v in points], color="#3274a1", lw=1.2, label=key)
        if key == "dino":
            # the loss is the targets' entropy plus how far the student is from them (KL): both lines
            # near ln K = a teacher that says nothing; a gap between them = a student that does not follow
            entropy = [(r["step"], r["target_entropy"]) for r in rows if "target_entropy" in r]
            if entropy:
                ax.plot([s for s, _ in entropy], [v for _, v in entropy], color="#dd8452", lw=1,
                        label="teacher target entropy")
            if uniform_loss is not None:
                ax.axhline(uniform_loss, color="#c44e52", ls="--", lw=1,
                           label=f"uniform output: ln K = {uniform_loss:.2f}")
            ax.legend(fontsize=8)
        ax.set_title(key if key != "embedding_std" else "embedding_std (0 = collapsed)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
