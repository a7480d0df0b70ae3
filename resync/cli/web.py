"""The web console and its users: ``resync web`` and ``resync users``."""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

import click

from messages.errors import FatalError
from resync.cli.app import JSON, Ctx, cli, pass_ctx
from resync.render import console, emit_json, table, when

if TYPE_CHECKING:
    from resync.web.users import UserStore

SIDE = click.option("--state", "state_side", is_flag=True, help="The state console's users (state database).")


def served_sides(c: Ctx, side: str | None) -> tuple[str, ...]:
    """The pages to serve: as asked, or by which databases are configured (both on the embedded default)."""
    if side:
        return ("district", "state") if side == "both" else (side,)
    has_d, has_s = bool(c.settings.district_db), bool(c.settings.state_db)
    return ("district",) if has_d and not has_s else ("state",) if has_s and not has_d else ("district", "state")


@cli.command()
@click.option("--host", help="Address to listen on (default RESYNC_WEB_HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default RESYNC_WEB_PORT or 8080).")
@click.option("--side", type=click.Choice(["district", "state", "both"]),
              help="Pages to serve (default: by the databases configured).")
@pass_ctx
def web(c: Ctx, host: str | None, port: int | None, side: str | None) -> None:
    """Serve the web console: Resync State Data and its sibling pages, with logins and tool rights."""
    import uvicorn

    from resync.web.app import create_app
    from resync.web.users import UserStore

    sides = served_sides(c, side)
    app = create_app(c.settings, c.catalog, sides)
    if not any(UserStore(app.state.console.engines[s]).list() for s in sides):
        console.print("[yellow]no console user yet:[/] add one with `resync users add NAME --role admin`"
                      + (" (--state for the state's)" if "state" in sides else ""))
    with contextlib.ExitStack() as stack:
        if not c.settings.broker_url:  # the embedded default: both daemons run here, as for `send --wait`
            from resync.local import local_site

            stack.enter_context(local_site(c.settings, c.catalog))
        console.print(f"console on http://{host or c.settings.web_host}:{port or c.settings.web_port} "
                      f"({' and '.join(sides)} pages)")
        uvicorn.run(app, host=host or c.settings.web_host, port=port or c.settings.web_port, log_level="warning")


@cli.group()
def users() -> None:
    """Console users and their tool rights (view, run, delete, admin)."""


def _store(c: Ctx, state_side: bool) -> UserStore:
    from core.db import engine
    from resync.web.users import UserStore

    store = UserStore(engine(c.settings.state_db_url if state_side else c.settings.district_db_url))
    store.create()
    return store


@users.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["view", "run", "delete", "admin"]))
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (for scripts).")
@SIDE
@pass_ctx
def users_add(c: Ctx, name: str, role: str, password_stdin: bool, state_side: bool) -> None:
    """Add a console user; asks for the password (at least 8 characters)."""
    from resync.web.users import Role

    if password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    store = _store(c, state_side)
    store.add(name, Role.parse(role), password)
    console.print(f"user {name} added with the {role} right to the {'state' if state_side else 'district'} console")


@users.command("list")
@SIDE
@JSON
@pass_ctx
def users_list(c: Ctx, state_side: bool, as_json: bool) -> None:
    """The console's users and their rights."""

    store = _store(c, state_side)
    rows = store.list()
    if as_json:
        return emit_json([{"name": u.name, "role": u.role.label, "created_at": u.created_at} for u in rows])
    table(f"Console users ({'state' if state_side else 'district'})", ["Name", "Role", "Created"],
          [(u.name, u.role.label, when(u.created_at)) for u in rows])


@users.command("remove")
@click.argument("name")
@SIDE
@pass_ctx
def users_remove(c: Ctx, name: str, state_side: bool) -> None:
    """Remove a console user (their session ends at their next click)."""

    store = _store(c, state_side)
    if not store.remove(name):
        raise FatalError(f"no user {name!r}; `resync users list` shows them")
    console.print(f"user {name} removed")



