"""Reading images robustly: EXIF rotation, grayscale / RGBA / palette / 16-bit, clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file is missing, truncated or not an image; the message names the file."""


def load_image(path: str | Path) -> Image.Image:
    """An RGB PIL image with its EXIF orientation applied."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from None


def header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when it does not read as an image. Only the header
    is read: a file truncated further on is caught when it is decoded."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError):
        return None


def image_problem(path: Path) -> str | None:
    """None when ``path`` exists and its header reads as an image; else 'missing' or 'not an image'."""
    if not path.is_file():
        return "missing"
    return None if header_size(path) else "not an image"


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        scale = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.round(arr / scale * 255).clip(0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


COLOR_ORDERS = ("rgb", "bgr")


def to_tensor_image(image, color: str = "rgb") -> torch.Tensor:
    """A [3, H, W] RGB float tensor in 0..1 from a path, PIL image, HxW(x3/4) uint8/float array or tensor.
    ``color``: the channel order of an array or tensor input, "rgb" or "bgr" (OpenCV's ``cv2.imread``); files
    and PIL images know their own."""
    if color not in COLOR_ORDERS:
        raise ValueError(f"color must be one of {COLOR_ORDERS}, got '{color}'")
    if isinstance(image, (np.ndarray, torch.Tensor)) and color == "bgr":
        image = image[..., ::-1] if isinstance(image, np.ndarray) else image.flip(0)
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if isinstance(image, Image.Image):
        image = np.array(to_rgb(image))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.stack([image] * 3, -1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise ValueError(f"expected an HxWx3 array, got shape {image.shape}")
        image = image[..., :3]
        scale = 255.0 if image.dtype == np.uint8 else (65535.0 if image.dtype == np.uint16 else 1.0)
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / scale
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    raise ValueError(f"unsupported image input of type {type(image).__name__}; "
                     "give a path, PIL image, numpy array or tensor")


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files (by suffix, any case) in ``folder``, sorted; ``recursive`` includes sub-folders.
    A file path gives itself."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ImageReadError(f"image folder not found: {folder}")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_image_id(path: Path, position: int) -> int:
    """The image id of a file in an unannotated folder: its numeric stem (COCO style, ``000000000139.jpg``
    -> 139), else its position in ``list_images`` order. Predictions and analysis use the same rule."""
    return int(path.stem) if path.stem.isdigit() else position
