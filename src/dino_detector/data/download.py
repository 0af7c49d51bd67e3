"""COCO 2017 download: resumable HTTP transfers (Range), size + MD5 verification, safe zip extraction.

Layout under ``data_dir`` (what ``train --download_*_data`` then reads):
    train2017/ val2017/ test2017/            images
    annotations/instances_{train,val}2017.json, annotations/image_info_test2017.json
    downloads/*.zip                          the verified archives (a ``.part`` file while incomplete)

A finished step leaves a marker (``downloads/<zip>.ok`` after verification, ``<data_dir>/.<zip>.extracted``
after extraction), so a second run downloads and extracts nothing.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import socket
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

COCO_BASE_URL = "http://images.cocodataset.org"
CHUNK = 1 << 20
RETRIES = 5
TIMEOUT_S = 60


@dataclass(frozen=True)
class Archive:
    path: str  # below the base URL
    size: int | None  # bytes; None: trust Content-Length, checked by the MD5 anyway
    md5: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# Sizes and MD5 sums of the official archives (the same values torchvision-style downloaders pin).
COCO_ARCHIVES = {
    "train": Archive("zips/train2017.zip", 19336861798, "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val": Archive("zips/val2017.zip", 815585330, "442b8da7639aecaf257c1dceb8ba8c80"),
    "test": Archive("zips/test2017.zip", 6646970404, "77ad2c53ac5d0aea611d422c0938fb35"),
    "annotations": Archive("annotations/annotations_trainval2017.zip", 252907541,
                           "f4bbac642086de4f52a3fdda2de5fa2c"),
    "test_info": Archive("annotations/image_info_test2017.zip", None, "85da7065e5e600ebfee8af1edb634eb5"),
}


class DownloadError(RuntimeError):
    """A transfer that could not be completed or verified."""


class UnsafeArchiveError(RuntimeError):
    """A zip entry that would be written outside the target folder."""


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, start: int):
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def _transfer(url: str, part: Path, size: int | None, bar: tqdm | None) -> int | None:
    """Append the rest of ``url`` to ``part`` from its current length on. Returns the total size."""
    start = part.stat().st_size if part.exists() else 0
    with _open(url, start) as response:
        if start and response.status != 206:  # the server ignored Range: start over
            start = 0
        length = response.headers.get("Content-Length")
        total = size or (start + int(length) if length is not None else None)
        if bar is not None:
            bar.reset(total=total)
            bar.update(start)
        with open(part, "ab" if start else "wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
    return total


def download(url: str, dest: Path, size: int | None, md5: str, progress: bool = True) -> bool:
    """Download ``url`` to ``dest``, resuming a ``.part`` file left by an earlier, broken transfer.
    Returns False when ``dest`` was already complete and verified (nothing transferred)."""
    dest = Path(dest)
    marker = dest.with_name(dest.name + ".ok")
    if dest.exists() and not marker.exists() and file_md5(dest) == md5:
        marker.write_text(md5)  # placed there by hand: verified once, then trusted
    if dest.exists() and marker.exists() and marker.read_text().strip() == md5:
        log.info("%s already downloaded and verified", dest.name)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    bar = tqdm(desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
               dynamic_ncols=True)
    total = size
    try:
        for attempt in range(1, RETRIES + 1):
            try:
                total = _transfer(url, part, size, bar)
                if total is None or part.stat().st_size >= total:
                    break
                log.warning("%s: connection closed at %d of %d bytes; resuming", dest.name, part.stat().st_size,
                            total)
            except urllib.error.HTTPError as err:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout) as err:
                if attempt == RETRIES:
                    raise DownloadError(f"{url}: {err} after {RETRIES} attempts; run again to resume "
                                        f"from the {part.stat().st_size if part.exists() else 0} bytes kept "
                                        f"in {part}") from None
                log.warning("%s: %s; resuming (attempt %d of %d)", dest.name, err, attempt + 1, RETRIES)
        else:
            raise DownloadError(f"{url}: still incomplete after {RETRIES} attempts; run again to resume")
    finally:
        bar.close()
    got = part.stat().st_size
    if total is not None and got != total:
        part.unlink()
        raise DownloadError(f"{dest.name}: size {got} bytes, expected {total}; the partial file was removed")
    digest = file_md5(part)
    if digest != md5:
        part.unlink()
        raise DownloadError(f"{dest.name}: MD5 checksum mismatch (got {digest}, expected {md5}); the file was "
                            f"removed and nothing was extracted. Run again to download it afresh.")
    part.replace(dest)
    marker.write_text(md5)
    return True


def safe_extract(archive: Path, target: Path) -> int:
    """Extract a zip into ``target``; refuses the whole archive (before writing anything) if any entry is
    absolute or climbs out of ``target`` with ``..``. Returns the number of entries extracted."""
    target = Path(target).resolve()
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for m in members:
            dest = (target / m.filename).resolve()
            if m.filename.startswith(("/", "\\")) or not dest.is_relative_to(target):
                raise UnsafeArchiveError(f"{Path(archive).name}: entry '{m.filename}' would be written outside "
                                         f"{target}; nothing was extracted")
        target.mkdir(parents=True, exist_ok=True)
        for m in tqdm(members, desc=f"extract {Path(archive).name}", unit="file", leave=False,
                      dynamic_ncols=True):
            zf.extract(m, target)
    return len(members)


def fetch(archive: Archive, data_dir: Path, base_url: str = COCO_BASE_URL, progress: bool = True) -> bool:
    """Download (or resume) and extract one archive into ``data_dir``. Returns False when both were done
    by an earlier run."""
    data_dir = Path(data_dir)
    extracted = data_dir / f".{archive.name}.extracted"
    if extracted.exists():
        log.info("%s already extracted in %s", archive.name, data_dir)
        return False
    zip_path = data_dir / "downloads" / archive.name
    download(f"{base_url.rstrip('/')}/{archive.path}", zip_path, archive.size, archive.md5, progress)
    count = safe_extract(zip_path, data_dir)
    extracted.write_text(f"{count} entries\n")
    log.info("%s: %d entries extracted into %s", archive.name, count, data_dir)
    return True


def download_coco(data_dir: str | Path, train: bool = False, val: bool = False, test: bool = False,
                  base_url: str = COCO_BASE_URL, archives: dict[str, Archive] | None = None,
                  progress: bool = True) -> list[str]:
    """Fetch the requested COCO 2017 splits (with their annotations). Returns the archives transferred."""
    archives = archives or COCO_ARCHIVES
    wanted = [s for s, on in (("train", train), ("val", val), ("test", test)) if on]
    if not wanted:
        raise ValueError("nothing to download: pass --download_train, --download_val and/or --download_test")
    keys = wanted + (["annotations"] if train or val else []) + (["test_info"] if test else [])
    return [archives[k].name for k in keys if fetch(archives[k], Path(data_dir), base_url, progress)]
