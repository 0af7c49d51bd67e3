"""A report built once as a list of blocks and written twice: ``report.md`` (links to the PNG files beside it)
and ``report.html`` (one self-contained file: styles inline, every image embedded as a data URI)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
         "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
         "img{max-width:100%;border:1px solid #ddd}figure{margin:.8em 0}figcaption{color:#555;font-size:.9em}"
         ".gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:10px}")


@dataclass
class Report:
    """Headings, paragraphs, tables and figures in order. Figure paths are files inside ``out_dir``."""
    title: str
    out_dir: Path
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", text, level))

    def text(self, paragraph: str) -> None:
        self.blocks.append(("text", paragraph))

    def table(self, header: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", [str(h) for h in header], [[_cell(v) for v in row] for row in rows]))

    def figure(self, path: str | Path, caption: str) -> None:
        self.blocks.append(("figures", [(Path(path), caption)], False))

    def gallery(self, items: list[tuple[Path, str]]) -> None:
        self.blocks.append(("figures", [(Path(p), c) for p, c in items], True))

    def write(self) -> tuple[Path, Path]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        md, htm = self.out_dir / "report.md", self.out_dir / "report.html"
        md.write_text(self.markdown())
        htm.write_text(self.html())
        return md, htm

    def _relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.out_dir.resolve()).as_posix()

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                lines += ["#" * block[2] + " " + block[1], ""]
            elif kind == "text":
                lines += [block[1], ""]
            elif kind == "table":
                header, rows = block[1], block[2]
                lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows] + [""]
            else:
                for path, caption in block[1]:
                    lines += [f"![{caption}]({self._relative(path)})", f"*{caption}*", ""]
        return "\n".join(lines)

    def html(self) -> str:
        esc = html.escape
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(self.title)}</title>"
                 f"<style>{STYLE}</style></head><body><h1>{esc(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                parts.append(f"<h{block[2]}>{esc(block[1])}</h{block[2]}>")
            elif kind == "text":
                parts.append(f"<p>{esc(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block[2])
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            else:
                figures = "".join(f"<figure><img src='{_data_uri(p)}' alt='{esc(c)}'>"
                                  f"<figcaption>{esc(c)}</figcaption></figure>" for p, c in block[1])
                parts.append(f"<div class='gallery'>{figures}</div>" if block[2] else figures)
        parts.append("</body></html>")
        return "\n".join(parts)


def _cell(value) -> str:
    if isinstance(value, float):
        return "n/a" if value < 0 else f"{value:.3f}"  # pycocotools' -1: undefined (no such boxes)
    return str(value)


def _data_uri(path: Path) -> str:
    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
