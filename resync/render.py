"""Output for people (rich tables) and for programs (``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from messages.status import LEGEND

console = Console(width=None if sys.stdout.isatty() else 140)
_COLOURS = {"green": "green", "yellow": "yellow", "red": "red", "gray": "bright_black"}
# on a terminal the colour tells; piped or redirected, every dot looks the same, so it says its colour too
DOTS = {k: f"[{v}]●[/]" + ("" if console.is_terminal else f" {k}") for k, v in _COLOURS.items()}


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str, indent=2) + "\n")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str | None = None) -> None:
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    console.print(t)


def when(ts: str | None) -> str:
    """ISO timestamps shown as the vendor shows them: MM/DD/YYYY HH:MM:SS (UTC)."""
    if not ts:
        return "-"
    date, _, time = ts.partition("T")
    y, m, d = date.split("-")
    return f"{m}/{d}/{y} {time[:8]}"


def show_status_table(title: str, rows: list[Any]) -> None:
    legend = "   ".join(f"{DOTS[k]} {v}" for k, v in LEGEND.items())
    rows = [r if isinstance(r, dict) else r.as_dict() for r in rows]
    table(title,
          ["DIS Objects", "Last Resync", "Sent", "Results", "Status"],
          [("  " * r["depth"] + r["object"], when(r["last_resync"]), r["sent"] if r["last_resync"] else "",
            f"Processed: {r['processed']} Errors: {r['errors']}" if r["last_resync"] else "",
            DOTS.get(r["status"] or "", "")) for r in rows])
    console.print(legend, soft_wrap=True)
