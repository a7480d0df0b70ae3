"""The ``resync`` command line, on top of everything: each module holds the commands of one audience."""

from __future__ import annotations

import sys

import click
from sqlalchemy.exc import DBAPIError

from core.retry import misconfigured
from messages.errors import FatalError, ResyncError
from resync.cli import development, district, live, operations, schema, state, web  # noqa: F401  (they register their commands)
from resync.cli.app import cli
from resync.cli.verify import verify

cli.add_command(verify)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "resync"
        click.echo(f"error: {e.format_message()} (see `{cmd} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except FatalError as e:  # one line per mistake
        for line in str(e).splitlines() or [type(e).__name__]:
            click.echo(f"error: {line}", err=True)
        sys.exit(2)
    except DBAPIError as e:  # a database that cannot be reached or used: a setting to check, said in one line
        fatal = misconfigured(e)
        reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e).splitlines()[0]
        click.echo(f"error: {fatal}" if fatal else f"error: cannot use the database: {reason[:300]}: check "
                   "RESYNC_DISTRICT_DB / RESYNC_STATE_DB (--district-db / --state-db) and that its server runs",
                   err=True)
        sys.exit(2)
    except ResyncError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
