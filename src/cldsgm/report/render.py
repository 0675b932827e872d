"""One ordered list of report sections, written as a self-contained HTML page (a jinja2 template in the package) and
as Markdown, from the same list: the two cannot drift apart.

A section has a title and level, and any of: a paragraph, a table, figures (PNG bytes; embedded in the HTML, written
to figures/ for the Markdown) and a bullet list.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["Figure", "Section", "render_html", "render_markdown"]


@dataclass
class Figure:
    """A PNG image: `name` is its file name under figures/ (Markdown), `alt` its text."""

    name: str
    alt: str
    png: bytes
    caption: str = ""

    @property
    def b64(self) -> str:
        return base64.b64encode(self.png).decode()


@dataclass
class Section:
    title: str
    level: int = 2
    text: str = ""
    table: pd.DataFrame | None = None
    figures: list[Figure] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    gallery: bool = False  # figures side by side, captioned (sample grids)
    folded: bool = False  # long content: HTML shows it under a <details> the reader opens


def fmt(value) -> str:
    """A table cell: floats to 4 significant digits, NaN as an em dash."""
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _rows(table: pd.DataFrame | None) -> list[list[str]]:
    return [] if table is None else [[fmt(v) for v in row] for row in table.itertuples(index=False)]


def render_html(title: str, description: str, sections: list[Section]) -> str:
    """The whole page (figures embedded as base64, no external file)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("cldsgm.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template("report.html.j2").render(title=title, description=description, sections=sections,
                                                     rows=_rows, columns=lambda t: [str(c) for c in t.columns])


def _md_table(table: pd.DataFrame | None) -> str:
    if table is None or table.empty:
        return "_none_\n"
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(table)]
    return "\n".join(lines) + "\n"


def render_markdown(title: str, description: str, sections: list[Section], figures_dir: str = "figures") -> str:
    """The same sections in Markdown; figures are referenced as <figures_dir>/<name> (write them there)."""
    out = [f"# {title}\n", description, ""]
    for section in sections:
        out.append(f"{'#' * section.level} {section.title}\n")
        if section.text:
            out.append(section.text + "\n")
        for figure in section.figures:
            caption = f" — {figure.caption}" if figure.caption else ""
            out.append(f"![{figure.alt}]({figures_dir}/{figure.name}){caption}\n")
        if section.table is not None:
            out.append(_md_table(section.table))
        out += [f"- {item}" for item in section.items]
        if section.items:
            out.append("")
    return "\n".join(out)


def write_figures(sections: list[Section], out: Path) -> None:
    """Each figure as out/<name> (the Markdown's images)."""
    from cldsgm.utils.io import atomic_path

    for section in sections:
        for figure in section.figures:
            with atomic_path(out / figure.name) as tmp:
                tmp.write_bytes(figure.png)


def figure_name(*parts: str) -> str:
    """A file name from free text: letters, digits, '-', '_' and '.' only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts)) + ".png"
