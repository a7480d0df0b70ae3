"""A wrong setting stops a command or a daemon at once with one line that names what to fix, and exit status 2:
never a traceback, never a retry loop, never a wait that does not end."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from core.brokers.rabbitmq import RabbitBroker
from core.brokers.rabbitmq_connection import RabbitConnection
from messages.errors import BrokerRefused
from tests.conftest import rabbitmqctl

DAEMON_GUARD = 90  # seconds: a daemon that retries instead of stopping fails the test here


def resync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resync", *args], env=env, capture_output=True, text=True,
                          timeout=DAEMON_GUARD)


def said_once(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one error line of a command that stopped with exit status 2; it holds each of ``words``."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESYNC_")}
    return {**clean, "RESYNC_HOME": str(tmp_path / "home"), "RESYNC_STATE_USER": "guest"}


@pytest.mark.parametrize(("setting", "value", "words"), [
    ("RESYNC_BROKER_URL", "http://127.0.0.1:15672/", ("is not an AMQP URL", "amqp://")),
    ("RESYNC_BROKER_URL", "amqp://guest:guest@127.0.0.1:notaport/", ("is not an AMQP URL",)),
    ("RESYNC_HEARTBEAT", "1", ("RESYNC_HEARTBEAT", "2 to 3600")),
    ("RESYNC_WEB_PORT", "70000", ("RESYNC_WEB_PORT", "1 to 65535")),
    ("RESYNC_KEEP_BATCHES", "-1", ("RESYNC_KEEP_BATCHES", "0 to keep forever")),
    ("RESYNC_KEEP_DAYS", "ninety", ("RESYNC_KEEP_DAYS", "not a whole number")),
    ("RESYNC_WEB_PORT", "http", ("RESYNC_WEB_PORT", "not a whole number")),
    ("RESYNC_WEB_SECURE_COOKIES", "maybe", ("RESYNC_WEB_SECURE_COOKIES", "true or false")),
    ("RESYNC_DISTRICT_DB", "sqlite:////no/such/dir/x.db", ("'/no/such/dir' does not exist", "RESYNC_DISTRICT_DB")),
    ("RESYNC_DISTRICT_DB", "mysql://x@localhost/db", ("not supported",)),
    ("RESYNC_QUEUE_TYPE", "stream", ("RESYNC_QUEUE_TYPE", "classic", "quorum")),
    ("RESYNC_METRICS_PORT", "99999", ("RESYNC_METRICS_PORT", "1 to 65535")),
    ("RESYNC_RECEIVER_NAME", "two words", ("RESYNC_RECEIVER_NAME", "letters, digits")),
    ("RESYNC_BROKER_ULR", "amqp://guest:guest@127.0.0.1/", ("RESYNC_BROKER_ULR", "did you mean RESYNC_BROKER_URL")),
])
def test_a_wrong_setting_is_one_line(env: dict[str, str], setting: str, value: str, words: tuple[str, ...]) -> None:
    said_once(resync({**env, setting: value}, "status"), *words)


def test_every_mistake_in_the_settings_is_said_at_once_one_line_each(env: dict[str, str]) -> None:
    wrong = {"RESYNC_HEARTBEAT": "1", "RESYNC_QUEUE_TYPE": "stream", "RESYNC_DISTRICTS": "d1,Not A District",
             "RESYNC_METRIC_PORT": "9100", "RESYNC_KEEP_DAYS": "ninety"}
    for command in (["status"], ["receiver", "run"], ["agent", "run"]):
        result = resync({**env, **wrong, "RESYNC_BROKER_URL": "amqp://guest:guest@127.0.0.1/"}, *command)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert len(errors) == 5, errors
        for words in (("RESYNC_HEARTBEAT",), ("RESYNC_QUEUE_TYPE",), ("'Not A District'",),
                      ("RESYNC_METRIC_PORT", "did you mean RESYNC_METRICS_PORT"), ("RESYNC_KEEP_DAYS",)):
            assert sum(all(w in line for w in words) for line in errors) == 1, (words, errors)


def test_an_unreachable_database_is_one_line(env: dict[str, str]) -> None:
    env["RESYNC_DISTRICT_DB"] = "postgresql://postgres@127.0.0.1:1/district"
    said_once(resync(env, "status"), "cannot use the database", "Connection refused", "RESYNC_DISTRICT_DB")


@pytest.mark.postgres
def test_a_database_that_does_not_exist_is_one_line_for_commands_and_daemons(
        env: dict[str, str], postgres_db: Any) -> None:
    postgres_db()  # PostgreSQL is there (else this skips, or fails under CI)
    missing = f"postgresql://postgres@127.0.0.1:5432/nothing_{uuid.uuid4().hex[:8]}"
    said_once(resync({**env, "RESYNC_DISTRICT_DB": missing}, "status"), "does not exist", "RESYNC_DISTRICT_DB")
    said_once(resync({**env, "RESYNC_STATE_DB": missing, "RESYNC_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/"},
                     "receiver", "run"), "does not exist", "RESYNC_STATE_DB")


def test_sending_from_an_unseeded_district_database_is_one_line(env: dict[str, str]) -> None:
    said_once(resync(env, "send", "--all"), "no table for District", "resync seed")


def test_waiting_on_a_broker_that_cannot_be_reached_ends(env: dict[str, str]) -> None:
    assert resync(env, "seed", "--students", "5").returncode == 0
    result = resync({**env, "RESYNC_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}, "send", "--all", "--wait")
    said_once(result, "cannot reach", "RESYNC_BROKER_URL")


@pytest.fixture
def vhost_url(rabbitmq_url: str) -> Iterator[tuple[str, str]]:
    """The test vhost's URL, and its name."""
    yield rabbitmq_url, urllib.parse.unquote(urllib.parse.urlparse(rabbitmq_url).path[1:])


@pytest.mark.rabbitmq
@pytest.mark.parametrize("daemon", ["agent", "receiver"])
def test_a_wrong_password_stops_the_daemon(env: dict[str, str], vhost_url: tuple[str, str], daemon: str) -> None:
    url = vhost_url[0].replace("guest:guest@", "guest:wrong@")
    said_once(resync({**env, "RESYNC_BROKER_URL": url}, daemon, "run"), "refused the login of user 'guest'",
              "RESYNC_BROKER_URL")


@pytest.mark.rabbitmq
@pytest.mark.parametrize("daemon", ["agent", "receiver"])
def test_queues_of_another_type_stop_the_daemon(env: dict[str, str], vhost_url: tuple[str, str], daemon: str) -> None:
    RabbitBroker(vhost_url[0]).declare_district("district-1")  # classic queues, made earlier
    result = resync({**env, "RESYNC_BROKER_URL": vhost_url[0], "RESYNC_QUEUE_TYPE": "quorum"}, daemon, "run")
    said_once(result, "x-queue-type", "RESYNC_QUEUE_TYPE must be the type the queues were made with")


@pytest.mark.rabbitmq
@pytest.mark.parametrize("daemon", ["agent", "receiver"])
def test_a_vhost_that_does_not_exist_stops_the_daemon(env: dict[str, str], vhost_url: tuple[str, str],
                                                     daemon: str) -> None:
    url = vhost_url[0].rsplit("/", 1)[0] + f"/no-such-vhost-{uuid.uuid4().hex[:6]}"
    said_once(resync({**env, "RESYNC_BROKER_URL": url}, daemon, "run"), "vhost", "RESYNC_BROKER_URL")


@pytest.mark.rabbitmq
def test_a_missing_permission_stops_the_agent(env: dict[str, str], vhost_url: tuple[str, str]) -> None:
    """A user that may log in but not read its district's queues: the agent stops, naming the refusal."""
    url, vhost = vhost_url
    user = f"noperm-{uuid.uuid4().hex[:6]}"
    RabbitBroker(url).declare_district("district-1")  # the topology exists; the user just may not use it
    rabbitmqctl("add_user", user, "secret")
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, "", "", "")
        said_once(resync({**env, "RESYNC_BROKER_URL": url.replace("guest:guest@", f"{user}:secret@")},
                         "agent", "run"), "ACCESS_REFUSED", user)
    finally:
        rabbitmqctl("delete_user", user)


@pytest.mark.rabbitmq
def test_a_user_id_the_broker_refuses_is_fatal(vhost_url: tuple[str, str]) -> None:
    """RabbitMQ checks every message's user_id against the login; a publisher whose user is not the one the
    broker authenticated (as with a client certificate's user) is told so, not retried."""
    broker = RabbitBroker(vhost_url[0])
    broker.declare_district("district-1")
    conn = RabbitConnection(broker.parameters(), "somebody-else", broker.describe())
    with pytest.raises(BrokerRefused, match="user_id"):
        try:
            conn.publish("sync.district-1", b"{}", kind="event", message_id="A" * 32)
            conn.flush()
        finally:
            conn.close()
    check = pika.BlockingConnection(pika.URLParameters(vhost_url[0]))
    try:
        assert check.channel().queue_declare("sync.district-1", passive=True).method.message_count == 0
    finally:
        check.close()


def test_a_broker_that_is_down_costs_no_file_descriptor_per_attempt() -> None:
    """A daemon retries for as long as the broker is down (a lost connection is not a wrong setting): each
    failed attempt must give back its socket and its I/O loop's descriptors."""
    from messages.errors import ConnectionClosed

    broker = RabbitBroker("amqp://guest:guest@127.0.0.1:1/%2F")

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    with pytest.raises(ConnectionClosed):
        broker.connect()
    before = descriptors()
    for _ in range(60):
        with pytest.raises(ConnectionClosed, match="refused the connection"):
            broker.connect()
    assert descriptors() - before < 10  # a leak is three per attempt; other threads may hold a few meanwhile


@pytest.mark.slow
def test_a_state_that_does_not_know_the_districts_broker_user_is_named_as_the_likely_cause(site: Any) -> None:
    """The most common first-day mistake: the state's RESYNC_DISTRICT_USERS names another broker user for the
    district, so the receiver sets every record aside unanswered. `status` and `send --wait` say so."""
    site.cli("seed", "--students", "5", "--year", str(2027))
    right = site.env["RESYNC_DISTRICT_USERS"]
    site.env["RESYNC_DISTRICT_USERS"] = "district-1=somebody-else"
    site.start("receiver", "run")
    site.env["RESYNC_DISTRICT_USERS"] = right
    site.start("agent", "run")
    hint = "most likely the state's RESYNC_DISTRICT_USERS does not name 'guest'"
    waiting = subprocess.Popen([sys.executable, "-m", "resync", "send", "--all", "--wait"], env=site.env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert waiting.stdout is not None
        said = ""
        for line in waiting.stdout:  # the batch never completes: the command is stopped once it has said it
            said += line
            if "ask the state to check it" in " ".join(said.split()):
                break
        assert hint in " ".join(said.split()), said
    finally:
        waiting.kill()
        waiting.wait(timeout=30)
    status = site.cli("status")
    assert hint in " ".join(status.split()), status
