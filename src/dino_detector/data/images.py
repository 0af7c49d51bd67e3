"""Reading images robustly: EXIF rotation, grayscale / RGBA / palette / CMYK / 1-bit / 16-bit, animated files
(first frame), clear errors naming the file (missing, not an image, truncated, over Pillow's decompression-bomb
limit), and folder listings that follow symlinks without looping."""
from __future__ import annotations

import errno
import logging
import os
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# what Pillow raises for files that are not (whole) images: its own errors, and a few from broken headers
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error,
                 Image.DecompressionBombError)
TOO_LARGE = "too large"


class ImageReadError(ValueError):
    """An image file is missing, truncated or not an image; the message names the file."""


def shown(path) -> str:
    """A path as text that any terminal can print: bytes of a non-UTF-8 file name as ``\\xe9``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _too_large(err: Exception) -> str:
    return (f"{TOO_LARGE}: {err} (Pillow's decompression-bomb guard; raise PIL.Image.MAX_IMAGE_PIXELS if the "
            "file is trusted)")


def load_image(path: str | Path) -> Image.Image:
    """An RGB PIL image with its EXIF orientation applied (the first frame of an animated file)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {shown(path)}")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"cannot read image {shown(path)}: {_too_large(err)}") from None
    except DECODE_ERRORS as err:
        raise ImageReadError(f"cannot read image {shown(path)}: {err or type(err).__name__}") from None


def _inspect(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    if not path.is_file():
        return None, "missing"
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Image.DecompressionBombError as err:
        return None, _too_large(err)
    except DECODE_ERRORS:
        return None, "not an image"
    if width < 1 or height < 1:
        return None, "not an image"
    return (width, height), None


def header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, or None when it does not read as an image (or is over Pillow's
    decompression-bomb limit). Only the header is read: a file truncated further on is caught when decoded."""
    return _inspect(Path(path))[0]


def image_problem(path: Path) -> str | None:
    """None when ``path`` exists and its header reads as an image; else 'missing', 'not an image' or
    'too large: ...' (over Pillow's decompression-bomb limit, with the sizes)."""
    return _inspect(Path(path))[1]


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        scale = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.round(arr / scale * 255).clip(0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


COLOR_ORDERS = ("rgb", "bgr")


def to_tensor_image(image, color: str = "rgb") -> torch.Tensor:
    """A [3, H, W] RGB float32 tensor in 0..1 from a path, a PIL image, an array or a tensor.

    Arrays are HxW (gray), HxWx1, HxWx3 or HxWx4 (RGBA: the alpha channel is dropped); tensors are [3, H, W]
    or [1, H, W] (gray, repeated). A 4-channel tensor, another channel count or an image without pixels is a
    ValueError. Values by dtype: uint8 and other integers are 0..255 (uint16 arrays 0..65535); floats (any
    precision, float64 too) are 0..1, a little overshoot from resampling clipped; integers outside 0..255,
    floats far outside 0..1 (0..255 floats, ImageNet-normalised tensors) and NaN / infinity are a ValueError.
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
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {image.shape}")
        if image.dtype == np.uint16:
            image = image.astype(np.float32) / 65535.0
        elif image.dtype.kind not in "biuf":
            raise ValueError(f"unsupported array dtype {image.dtype}: give uint8 (0..255) or float (0..1) pixels")
        tensor = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            hint = "; for RGBA drop the alpha channel (image[:3])" if image.dim() == 3 and image.shape[0] == 4 else ""
            raise ValueError(f"expected a [3, H, W] (or [1, H, W] grayscale) tensor, got shape "
                             f"{tuple(image.shape)}{hint}")
        if image.is_complex():
            raise ValueError(f"unsupported tensor dtype {image.dtype}: give uint8 (0..255) or float (0..1) pixels")
        tensor = image.detach()
        if tensor.dtype == torch.uint16:
            tensor = tensor.float() / 65535.0
    else:
        raise ValueError(f"unsupported image input of type {type(image).__name__}; "
                         "give a path, PIL image, numpy array or tensor")
    return _unit_range(tensor).expand(3, -1, -1).contiguous()


FLOAT_SLACK = 0.25  # float pixels this far outside 0..1 are resampling overshoot (clipped), farther a mistake


def _unit_range(tensor: torch.Tensor) -> torch.Tensor:
    """A [C, H, W] tensor of any real dtype as float32 in 0..1, by the rules of ``to_tensor_image``."""
    if tensor.shape[-2] < 1 or tensor.shape[-1] < 1:
        raise ValueError(f"the image has no pixels (shape {tuple(tensor.shape)})")
    if tensor.dtype == torch.bool:
        return tensor.float()
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    if not tensor.is_floating_point():  # int16 / int32 / int64: 8-bit pixel values
        low, high = int(tensor.min()), int(tensor.max())
        if low < 0 or high > 255:
            raise ValueError(f"integer pixels must be 0..255, got {low}..{high} ({tensor.dtype}); scale them to "
                             "0..255 (uint8) or give floats in 0..1")
        return tensor.float() / 255.0
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ValueError("the image holds NaN or infinite values")
    low, high = float(tensor.min()), float(tensor.max())
    if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
        raise ValueError(f"float pixels must be 0..1, got {low:.4g}..{high:.4g} (0..255 values? divide by 255; "
                         "normalised by a mean and std? give the image before normalising: the model does it)")
    return tensor.clamp(0.0, 1.0) if low < 0 or high > 1 else tensor


def scan_images(folder: str | Path, recursive: bool = False) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files by suffix, any case, sorted; the entries left out, with why). ``recursive`` searches
    sub-folders, following symlinked folders once each: a link back to a folder already searched (a symlink
    loop) is left out and reported, as are links that lead nowhere (broken, or a loop of links). A file
    path gives itself."""
    folder = Path(folder)
    if folder.is_file():
        return [folder], []
    if not folder.is_dir():
        raise ImageReadError(f"image folder not found: {shown(folder)}")
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[str] = set()
    pending = [folder]
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if real in seen:
            skipped.append((current, "symlink loop: a link to a folder already searched"))
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name, reverse=True)
        except OSError as err:
            skipped.append((current, f"cannot list the folder ({err.strerror})"))
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()  # both follow links
            except OSError:  # a loop of links
                is_dir = is_file = False
            if is_dir:
                if recursive:
                    pending.append(path)
            elif is_file:
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(path)
            elif entry.is_symlink() and path.suffix.lower() in IMAGE_SUFFIXES + ("",):
                skipped.append((path, _dead_link(path)))
    return sorted(files), sorted(skipped)


def _dead_link(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop: the link leads back to itself"
    return f"broken link (to {shown(os.readlink(path))})"


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The image files of ``scan_images``; what it leaves out is logged, one warning per entry."""
    files, skipped = scan_images(folder, recursive)
    for path, why in skipped:
        log.warning("skipped %s: %s", shown(path), why)
    return files


def folder_image_id(path: Path, position: int) -> int:
    """The image id of a file in an unannotated folder: its numeric stem (COCO style, ``000000000139.jpg``
    -> 139), else its position in ``list_images`` order. Predictions and analysis use the same rule."""
    stem = path.stem
    return int(stem) if stem.isascii() and stem.isdigit() else position
