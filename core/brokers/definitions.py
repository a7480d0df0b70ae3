"""RabbitMQ definitions (users, permissions, topology) for a state and its districts.

Each district's user may publish only with its own routing key (a topic permission on the ``resync``
exchange) and read only its own ack and control queues; the state's user reads every district's event
queue and the dead-letter queue and publishes acks and control messages (and puts dead letters back on
event queues). Neither may configure:
the topology comes from this file. A policy bounds each district's event queue to ``QUEUE_BYTES`` and
refuses publishes beyond it (the agent's confirm fails and it retries later), so no district can fill
the broker (ack queues are not bounded: a full one would stop the receiver for every district); the
message-size limit itself is a node setting, in ``docker/rabbitmq.conf``. Load the
definitions with ``rabbitmqctl import_definitions FILE`` or the management plugin's ``load_definitions``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from typing import Any

from core.brokers.base import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EXCHANGE,
    Topology,
    check_district,
    queue_arguments,
)

QUEUE_BYTES = 1024**3
"""Per district event queue. The agent keeps at most ``RESYNC_MAX_IN_FLIGHT`` records unanswered, so a full
queue means something is wrong; refusing more keeps one district from taking the broker's memory."""
POLICY = {"name": "resync-event-queue-limits", "pattern": r"^sync\.", "apply-to": "queues", "priority": 0,
          "definition": {"max-length-bytes": QUEUE_BYTES, "overflow": "reject-publish"}}


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = salt if salt is not None else os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def new_password() -> str:
    return secrets.token_urlsafe(18)


def definitions(vhost: str, districts: list[str], state_user: str, passwords: dict[str, str],
                queue_type: str = "classic") -> dict[str, Any]:
    """``passwords`` maps each user (the district ids and ``state_user``) to its password."""
    users = [*districts, state_user]
    q = re.escape
    exchanges = f"^({q(EXCHANGE)}|{q(DEAD_LETTER_EXCHANGE)})$"
    permissions = [
        {"user": d, "vhost": vhost, "configure": "^$", "write": exchanges,
         "read": f"^({q(Topology.acks(d))}|{q(Topology.control(d))})$"} for d in districts
    ] + [{"user": state_user, "vhost": vhost, "configure": "^$", "write": exchanges,
          "read": rf"^(sync\..+|{q(DEAD_LETTER_QUEUE)})$"}]
    topic_permissions = [
        {"user": d, "vhost": vhost, "exchange": EXCHANGE, "write": f"^{q(Topology.events(d))}$", "read": "^$"}
        for d in districts
    ] + [{"user": state_user, "vhost": vhost, "exchange": EXCHANGE,
          # sync: `resync dead-letters --requeue` puts a district's message back where it came from
          "write": r"^(acks|control|sync)\..+$", "read": "^$"}]
    queues, bindings = [{"name": DEAD_LETTER_QUEUE, "vhost": vhost, "durable": True, "auto_delete": False,
                         "arguments": queue_arguments(DEAD_LETTER_QUEUE, queue_type)}], [
        {"source": DEAD_LETTER_EXCHANGE, "vhost": vhost, "destination": DEAD_LETTER_QUEUE,
         "destination_type": "queue", "routing_key": "", "arguments": {}}]
    for d in districts:
        for name in Topology.queues(d):
            queues.append({"name": name, "vhost": vhost, "durable": True, "auto_delete": False,
                           "arguments": queue_arguments(name, queue_type)})
            bindings.append({"source": EXCHANGE, "vhost": vhost, "destination": name, "destination_type": "queue",
                             "routing_key": name, "arguments": {}})
    return {
        # the state's user may read the management API and UI (queue depths, consumers); a district's may not
        "users": [{"name": u, "password_hash": password_hash(passwords[u]),
                   "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": "monitoring" if u == state_user else ""} for u in users],
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "exchanges": [
            {"name": EXCHANGE, "vhost": vhost, "type": "topic", "durable": True, "auto_delete": False,
             "internal": False, "arguments": {}},
            {"name": DEAD_LETTER_EXCHANGE, "vhost": vhost, "type": "fanout", "durable": True, "auto_delete": False,
             "internal": False, "arguments": {}},
        ],
        "queues": queues,
        "bindings": bindings,
        "policies": [{"vhost": vhost, **POLICY}],
    }


def for_districts(vhost: str, districts: list[str], state_user: str,
                  queue_type: str = "classic") -> tuple[dict[str, Any], dict[str, str]]:
    """Definitions with a fresh password for every user; returns them with the passwords."""
    for d in districts:
        check_district(d)
    passwords = {u: new_password() for u in [*districts, state_user]}
    return definitions(vhost, districts, state_user, passwords, queue_type), passwords
