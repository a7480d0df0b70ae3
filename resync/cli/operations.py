"""Operations: the two daemons and the broker's definitions."""

from __future__ import annotations

from pathlib import Path

import click

from core.db import engine
from resync.cli.app import JSON, Ctx, cli, needs_broker, pass_ctx, run_daemon
from resync.render import emit_json, table


@cli.group()
def agent() -> None:
    """The district agent daemon."""


@agent.command("run")
@pass_ctx
def agent_run(c: Ctx) -> None:
    """Publish queued batches and count the state's acks until SIGTERM/SIGINT."""
    from agent.daemon import Agent

    broker = needs_broker(c, "agent run")
    run_daemon(Agent(c.settings, broker, engine(c.settings.district_db_url), c.catalog).run)


@cli.group()
def receiver() -> None:
    """The state receiver daemon."""


@receiver.command("run")
@click.option("--district", "districts", multiple=True, help="District to consume (repeatable; "
              "default RESYNC_DISTRICTS or RESYNC_DISTRICT).")
@pass_ctx
def receiver_run(c: Ctx, districts: tuple[str, ...]) -> None:
    """Consume districts' event queues, apply and acknowledge until SIGTERM/SIGINT."""
    from core.brokers import broker_for
    from state_receiver.daemon import Receiver
    from state_receiver.membership import default_name

    needs_broker(c, "receiver run")
    settings = c.settings.with_(districts=districts or None, receiver_name=c.settings.receiver_name or default_name())
    # the name `rabbitmqctl list_connections` shows, the same as `resync receivers`
    broker = broker_for(settings, f"resync receiver {settings.receiver_name}")
    run_daemon(Receiver(settings, broker, engine(settings.state_db_url), c.catalog).run)


@cli.group()
def broker() -> None:
    """Broker set-up: users, permissions and topology."""


@broker.command("definitions")
@click.option("--district", "districts", multiple=True, required=True, help="A district id (repeatable).")
@click.option("--vhost", default="/", show_default=True)
@click.option("--state-user", default=None, help="The state's broker user (default RESYNC_STATE_USER or state).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the definitions JSON.")
@click.option("--queue-type", type=click.Choice(["classic", "quorum"]), default=None,
              help="quorum: queues replicated across a RabbitMQ cluster (default RESYNC_QUEUE_TYPE or classic).")
@JSON
@pass_ctx
def broker_definitions(c: Ctx, districts: tuple[str, ...], vhost: str, state_user: str | None, out: Path,
                       queue_type: str | None, as_json: bool) -> None:
    """Write RabbitMQ definitions: one user per district allowed only its own routing key and queues, the
    state's user, and the queues. Load with `rabbitmqctl import_definitions FILE` (or load_definitions)."""
    import json as json_mod

    from core.brokers.definitions import for_districts

    defs, passwords = for_districts(vhost, list(districts), state_user or c.settings.state_user,
                                    queue_type or c.settings.queue_type)
    out.write_text(json_mod.dumps(defs, indent=2))
    out.chmod(0o600)
    if as_json:
        return emit_json({"file": str(out), "passwords": passwords})
    table(f"Broker users written to {out} (passwords are shown once)", ["User", "Password"], sorted(passwords.items()))


@cli.command("health")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="The daemon's metrics port (default RESYNC_METRICS_PORT).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--live", is_flag=True, help="Only whether it runs (/healthz); by default whether it is ready "
              "(/readyz: connected to its broker and database).")
@JSON
@pass_ctx
def health(c: Ctx, port: int | None, host: str, live: bool, as_json: bool) -> None:
    """Ask a running agent or receiver whether it is ready (exit status 0) or not (1): for container health
    checks and monitoring."""
    import json as json_mod
    import sys
    import urllib.error
    import urllib.request

    from messages.errors import FatalError

    port = port or c.settings.metrics_port
    if not port:
        raise FatalError("no metrics port: give --port, or set RESYNC_METRICS_PORT as the daemon has it")
    url = f"http://{host}:{port}/{'healthz' if live else 'readyz'}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except OSError as e:
        status, body = 0, json_mod.dumps({"status": f"no answer from {url}: {e}"}).encode()
    try:
        answer = json_mod.loads(body or b"{}")
    except ValueError:  # not a resync daemon on that port
        answer = {"status": f"{url} did not answer as a resync daemon (HTTP {status})"}
        status = 0
    if as_json:
        emit_json({"url": url, "http_status": status, **answer})
    else:
        down = "; ".join(f"{k}: {v}" for k, v in (answer.get("down") or {}).items())
        click.echo(f"{answer.get('status', status)}" + (f" ({down})" if down else ""))
    sys.exit(0 if status == 200 else 1)
