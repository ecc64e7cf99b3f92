"""The report as a list of blocks, written out as Markdown and as standalone HTML (relative image paths).

Both files come from the same blocks, so they always show the same numbers and figures; no Markdown parser is
needed (the standard library's ``html.escape`` is all the HTML needs).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass
class Para:
    text: str
    kind: str = ""  # "" | "note" (a missing section, a skipped column) | "small"


@dataclass
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""
    numeric: Sequence[bool] = field(default_factory=list)


@dataclass
class Figure:
    path: str  # relative to the report file, forward slashes
    caption: str


@dataclass
class Bullets:
    items: Sequence[str]


Block = Heading | Para | Table | Figure | Bullets

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 1.5rem 2rem 4rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #3b6ea5; padding-bottom: .3rem; }
h2 { margin-top: 2.4rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
h3 { margin-top: 1.6rem; color: #24476b; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: 12.5px; display: block; overflow-x: auto; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .2rem 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; vertical-align: top; }
th { background: #f0f4f8; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; border: 1px solid #e1e4e8; }
figcaption { font-size: 13px; color: #555; margin-top: .3rem; }
p.note { background: #fff8e5; border-left: 4px solid #e3b341; padding: .4rem .7rem; }
p.small, li { font-size: 13px; }
nav ul { columns: 2; font-size: 14px; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
"""


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("*", "\\*").replace("\n", "<br>")


def to_markdown(title: str, blocks: Sequence[Block]) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [("> " if b.kind == "note" else "") + b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"**{b.caption}**", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            aligns = [
                ("---:" if (b.numeric[i] if i < len(b.numeric) else False) else "---")
                for i in range(len(b.header))
            ]
            out.append("| " + " | ".join(aligns) + " |")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Figure):
            out += [f"![{_md_cell(b.caption)}]({b.path})", "", f"*{b.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"


def to_html(title: str, blocks: Sequence[Block]) -> str:
    e = html.escape
    toc = [b for b in blocks if isinstance(b, Heading) and b.level == 2]
    body = [f"<h1>{e(title)}</h1>"]
    if toc:
        body.append(
            "<nav><ul>"
            + "".join(f'<li><a href="#{e(h.anchor)}">{e(h.text)}</a></li>' for h in toc)
            + "</ul></nav>"
        )
    for b in blocks:
        if isinstance(b, Heading):
            anchor = f' id="{e(b.anchor)}"' if b.anchor else ""
            body.append(f"<h{b.level}{anchor}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            cls = f' class="{b.kind}"' if b.kind else ""
            body.append(f"<p{cls}>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            num = list(b.numeric) + [False] * (len(b.header) - len(b.numeric))
            rows = "".join(
                "<tr>"
                + "".join(f"<td{' class=num' if num[i] else ''}>{e(str(c))}</td>" for i, c in enumerate(r))
                + "</tr>"
                for r in b.rows
            )
            cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            body.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):
            body.append(
                f'<figure><img src="{e(b.path)}" alt="{e(b.caption)}"><figcaption>{e(b.caption)}</figcaption></figure>'
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{e(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
