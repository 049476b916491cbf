"""The report's content model and its two renderings.

A report is a list of sections, (heading, blocks); a block is a paragraph (str, with **bold**; a
block starting with ``` is preformatted), a `Table` or a `Figure` (a PNG file).

  render_markdown(title, sections, workdir)   # figures linked relative to the workdir
  render_html(title, sections)                # figures embedded as base64: opens from disk
"""

import base64
from collections.abc import Sequence
import dataclasses
import html
import os
from typing import Any


@dataclasses.dataclass
class Table:
  header: Sequence[str]
  rows: Sequence[Sequence[Any]]


@dataclasses.dataclass
class Figure:
  path: str
  caption: str


Block = str | Table | Figure


def _md_table(table: Table) -> str:
  lines = [
    "| " + " | ".join(table.header) + " |",
    "|" + "|".join("---" for _ in table.header) + "|",
  ]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table.rows]
  return "\n".join(lines)


def render_markdown(title: str, sections, workdir: str) -> str:
  out = [f"# {title}", ""]
  for heading, blocks in sections:
    out += [f"## {heading}", ""]
    for block in blocks:
      if isinstance(block, Table):
        out.append(_md_table(block))
      elif isinstance(block, Figure):
        rel = os.path.relpath(block.path, workdir)
        out.append(f"![{block.caption}]({rel})\n\n*{block.caption}*")
      else:
        out.append(block)
      out.append("")
  return "\n".join(out)


def _html_inline(text: str) -> str:
  parts = html.escape(text).split("**")
  return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _html_cell(text: str) -> str:
  cell = _html_inline(str(text))
  for verdict, color in (("PASS", "#1a7f37"), ("FAIL", "#cf222e")):
    cell = cell.replace(f"<b>{verdict}</b>", f'<b style="color:{color}">{verdict}</b>')
  return cell


def render_html(title: str, sections) -> str:
  style = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;"
    "padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;"
    "font-size:0.9em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f3f3f3}img{max-width:100%}figure{margin:1.5em 0}"
    "figcaption{color:#555;font-size:0.9em}pre{background:#f6f8fa;padding:1em;"
    "overflow-x:auto;font-size:0.8em}"
  )
  out = [
    f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
    f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
  ]
  for heading, blocks in sections:
    out.append(f"<h2>{html.escape(heading)}</h2>")
    for block in blocks:
      if isinstance(block, Table):
        out.append(
          "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.header) + "</tr>"
        )
        for row in block.rows:
          out.append("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>")
        out.append("</table>")
      elif isinstance(block, Figure):
        with open(block.path, "rb") as f:
          data = base64.b64encode(f.read()).decode()
        out.append(
          f"<figure><img alt='{html.escape(block.caption)}' "
          f"src='data:image/png;base64,{data}'><figcaption>"
          f"{html.escape(block.caption)}</figcaption></figure>"
        )
      elif block.startswith("```"):
        out.append(f"<pre>{html.escape(block.strip('`').strip())}</pre>")
      else:
        out.append(f"<p>{_html_inline(block)}</p>")
  out.append("</body></html>")
  return "\n".join(out)
