"""The status dot of an object's last resync, one rule for both sides: green (no errors), yellow (errors at most
1.0 % of the records processed), red (more), gray (still processing). The district shows it for its own
batches; the state for what it received."""

from __future__ import annotations

ERROR_THRESHOLD = 0.01  # the vendor's 1.0 %
SEVERITY = ["green", "yellow", "red"]
"""The finished colours, mildest first (the worst of several objects is the one furthest along)."""

LEGEND = {
    "green": "completed with no errors",
    "yellow": "completed with errors <= 1.0%",
    "red": "completed with errors > 1.0%",
    "gray": "still processing",
}


def colour(processed: int, errors: int, finished: bool) -> str:
    if not finished:
        return "gray"
    if errors == 0:
        return "green"
    return "yellow" if errors <= ERROR_THRESHOLD * processed else "red"
