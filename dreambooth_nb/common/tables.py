"""One way to show a result as a small table: in a terminal (aligned text) and in a notebook (HTML)."""

from __future__ import annotations

import html


class Table:
    """Mix-in for results shown as (label, value) rows: define rows(); str(), repr() and notebooks follow.

    A subclass may set `caption` (a line above the table) and `header` (column titles).
    """

    caption: str = ""
    header: tuple = ()

    def rows(self) -> list[tuple]:
        raise NotImplementedError

    def _cells(self) -> list[tuple[str, ...]]:
        return [tuple(str(v) for v in row) for row in self.rows()]

    def __str__(self) -> str:
        rows = ([tuple(self.header)] if self.header else []) + self._cells()
        if not rows:
            return self.caption
        widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
        lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
        return "\n".join(([self.caption] if self.caption else []) + lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self._cells())
        caption = f"<p>{html.escape(self.caption)}</p>" if self.caption else ""
        return f"{caption}<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>"


def measure_rows(specs, columns: list[dict]) -> list[tuple]:
    """Rows of a side-by-side table: for each (key, label, format) in specs, the label, then each column's value
    formatted ("-" where that column has none)."""
    return [(label, *(fmt.format(c[key]) if c.get(key) is not None else "-" for c in columns))
            for key, label, fmt in specs]
