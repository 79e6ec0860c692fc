"""Readable tables for ``kube-router-py status``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field


@dataclass
class StatusSection:
    """One titled table; a plugin's ``kube_router_status`` hook returns a list of these."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""  # one line under the title, e.g. an error reading the state

    def render(self) -> str:
        lines = [self.title, "=" * len(self.title)]
        if self.note:
            lines.append(self.note)
        if self.columns:
            lines.extend(format_table(self.columns, self.rows))
        return "\n".join(lines)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) if i < len(r) else 0 for r in cells) for i in range(len(columns))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells
    ]
