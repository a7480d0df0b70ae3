"""The floors, read from the code's own imports: the wire contract at the bottom, the foundation above it, the
district and the state side by side (never importing each other), the command line on top. Nothing imports a
floor above its own, and exactly one package touches AMQP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAY_IMPORT = {
    "messages": {"messages"},
    "core": {"messages", "core"},
    "publisher": {"messages", "core", "publisher"},
    "agent": {"messages", "core", "publisher", "agent"},
    "state_receiver": {"messages", "core", "state_receiver"},
    "resync": {"messages", "core", "publisher", "agent", "state_receiver", "resync"},
}
AMQP_CLIENTS = {"pika", "amqp", "kombu", "aio_pika", "aiormq"}


def imports(package: str) -> list[tuple[str, str]]:
    """(module file, top-level package imported) for every import in ``package``, at any depth."""
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out += [(str(path.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.append((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return out


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_no_import_runs_back_up(package: str) -> None:
    ours = set(MAY_IMPORT)
    wrong = [(f, m) for f, m in imports(package) if m in ours and m not in MAY_IMPORT[package]]
    assert wrong == [], f"{package} may import only {sorted(MAY_IMPORT[package])}"


def test_only_the_broker_package_touches_amqp() -> None:
    touching = {f for package in MAY_IMPORT for f, m in imports(package) if m in AMQP_CLIENTS}
    assert touching and all(f.startswith("core/brokers/") for f in touching), touching
