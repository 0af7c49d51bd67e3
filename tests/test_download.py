"""COCO download against a local HTTP server (loopback, a thread): progress, resume after a cut connection,
checksum mismatch, zip-slip, and a second run that transfers nothing."""
from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dino_detector.data.download import Archive, DownloadError, UnsafeArchiveError, download_coco
from dino_detector.download import main as download_main


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # stored: the bytes stay incompressible
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


class Server:
    """Serves ``files`` (path -> bytes) with HTTP Range support. ``cut_after[path] = n`` closes the first
    response for that path after n bytes, as a dropped connection would. Records every request."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.cut_after, self.requests = files, {}, []
        handler = partial(_Handler, self)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, server_state: Server, *args, **kwargs):
        self.state = server_state
        super().__init__(*args, **kwargs)

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        path = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        self.state.requests.append((path, range_header))
        if path not in self.state.files:
            self.send_error(404)
            return
        data = self.state.files[path]
        start = int(range_header.split("=")[1].split("-")[0]) if range_header else 0
        self.send_response(206 if range_header else 200)
        if range_header:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        cut = self.state.cut_after.pop(path, None)
        if cut is not None:  # announce the full length, send part of it, drop the connection
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


IMAGES = {f"val2017/{i:012d}.jpg": bytes(range(256)) * (40 + i) for i in range(5)}
ANNOTATIONS = {"annotations/instances_val2017.json": b'{"images": [], "annotations": [], "categories": []}'}


def archives_for(files: dict[str, bytes], md5_override: dict[str, str] | None = None) -> dict[str, Archive]:
    md5 = {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
    md5.update(md5_override or {})
    return {"val": Archive("zips/val2017.zip", len(files["zips/val2017.zip"]), md5["zips/val2017.zip"]),
            "annotations": Archive("annotations/annotations_trainval2017.zip",
                                   len(files["annotations/annotations_trainval2017.zip"]),
                                   md5["annotations/annotations_trainval2017.zip"])}


@pytest.fixture
def coco_files() -> dict[str, bytes]:
    return {"zips/val2017.zip": make_zip(IMAGES), "annotations/annotations_trainval2017.zip": make_zip(ANNOTATIONS)}


def test_download_extracts_with_progress_and_a_second_run_transfers_nothing(coco_files, tmp_path, capsys):
    with Server(coco_files) as server:
        fetched = download_coco(tmp_path, val=True, base_url=server.url, archives=archives_for(coco_files))
        assert fetched == ["val2017.zip", "annotations_trainval2017.zip"]
        for name, data in {**IMAGES, **ANNOTATIONS}.items():
            assert (tmp_path / name).read_bytes() == data
        assert "val2017.zip" in capsys.readouterr().err  # the tqdm progress bar names the file
        first = len(server.requests)
        assert download_coco(tmp_path, val=True, base_url=server.url, archives=archives_for(coco_files)) == []
        assert len(server.requests) == first  # nothing requested at all


def test_cut_connection_is_resumed_with_a_range_request(coco_files, tmp_path):
    size = len(coco_files["zips/val2017.zip"])
    with Server(coco_files) as server:
        server.cut_after["zips/val2017.zip"] = size // 3
        download_coco(tmp_path, val=True, base_url=server.url, archives=archives_for(coco_files), progress=False)
        val_requests = [r for p, r in server.requests if p == "zips/val2017.zip"]
    assert val_requests == [None, f"bytes={size // 3}-"]  # the second request continued where the first broke
    assert (tmp_path / "downloads" / "val2017.zip").read_bytes() == coco_files["zips/val2017.zip"]
    assert (tmp_path / next(iter(IMAGES))).is_file()


def test_checksum_mismatch_is_a_clear_error_and_nothing_is_extracted(coco_files, tmp_path):
    bad = archives_for(coco_files, {"zips/val2017.zip": "0" * 32})
    with Server(coco_files) as server, pytest.raises(DownloadError, match="MD5 checksum mismatch"):
        download_coco(tmp_path, val=True, base_url=server.url, archives=bad, progress=False)
    assert not (tmp_path / "val2017").exists()
    assert not list((tmp_path / "downloads").glob("val2017.zip*"))  # neither the zip nor a partial file


def test_zip_slip_entry_is_refused_before_anything_is_written(tmp_path):
    evil = make_zip({"val2017/ok.jpg": b"fine", "../../escaped.txt": b"owned"})
    files = {"zips/val2017.zip": evil, "annotations/annotations_trainval2017.zip": make_zip(ANNOTATIONS)}
    target = tmp_path / "data"
    with Server(files) as server, pytest.raises(UnsafeArchiveError, match=r"\.\./\.\./escaped\.txt"):
        download_coco(target, val=True, base_url=server.url, archives=archives_for(files), progress=False)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
    assert not (target / "val2017").exists()


def test_command_line_reports_errors_and_nothing_requested(tmp_path, capsys):
    assert download_main(["--data_dir", str(tmp_path)]) == 2
    assert "nothing to download" in capsys.readouterr().err
    with Server({}) as server:
        code = download_main(["--download_val", "--data_dir", str(tmp_path), "--base_url", server.url,
                              "--no_progress"])
    assert code == 2 and "HTTP 404" in capsys.readouterr().err


def test_train_download_val_data_fetches_then_evaluates_on_it(tiny_coco, tmp_path):
    """`train --download_val_data`: the split is fetched, and val paths default to the fetched folders."""
    import contextlib
    import json

    from dino_detector.train import main as train_main

    images = {f"val2017/{p.name}": p.read_bytes() for p in sorted(tiny_coco["images"].glob("*.jpg"))}
    ann = {"annotations/instances_val2017.json": tiny_coco["annotations"].read_bytes()}
    files = {"zips/val2017.zip": make_zip(images), "annotations/annotations_trainval2017.zip": make_zip(ann)}
    data = tmp_path / "coco"
    # the archives pinned for COCO would not match these test zips: point the pinned table at them
    import dino_detector.data.download as download_module
    original = dict(download_module.COCO_ARCHIVES)
    download_module.COCO_ARCHIVES.update(archives_for(files))
    try:
        with Server(files) as server, contextlib.redirect_stdout(io.StringIO()):
            code = train_main(["--download_val_data", "--data_dir", str(data), "--download_base_url", server.url,
                               "--train_images", str(data / "val2017"), "--train_annotations",
                               str(data / "annotations" / "instances_val2017.json"), "--dino_model", "tiny",
                               "--no_pretrained", "--image_size", "64", "--batch_size", "4", "--num_queries", "5",
                               "--decoder_layers", "1", "--epochs", "1", "--num_workers", "0",
                               "--output_dir", str(tmp_path / "run")])
    finally:
        download_module.COCO_ARCHIVES.clear()
        download_module.COCO_ARCHIVES.update(original)
    assert code == 0
    assert json.loads((tmp_path / "run" / "val_metrics_final.json").read_text())["num_images"] == 16
