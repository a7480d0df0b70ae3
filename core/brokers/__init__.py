"""Broker backends: ``rabbitmq`` (the real one, on pika) and ``memory`` (in-process, for the embedded default).
This package is the only one that touches AMQP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.brokers.base import Broker, Connection, Delivery, QueueStats, Topology

if TYPE_CHECKING:
    from core.settings import Settings

DEFAULT_HEARTBEAT = 30


def open_broker(url: str | None, management_url: str | None = None, tls: dict[str, str] | None = None,
                heartbeat: int = DEFAULT_HEARTBEAT, name: str = "resync", queue_type: str = "classic") -> Broker:
    """The broker for ``url``; ``None`` or ``memory://`` gives the process-wide in-process broker.
    ``tls``: ``ca_certs`` / ``certfile`` / ``keyfile`` for an ``amqps://`` URL; ``name`` is the connection's
    name in RabbitMQ's listings."""
    if not url or url.startswith("memory://"):
        from core.brokers.memory import MemoryBroker

        return MemoryBroker.shared()
    from core.brokers.rabbitmq import RabbitBroker

    return RabbitBroker(url, management_url, tls, heartbeat, name, queue_type)


def broker_for(settings: Settings, name: str = "resync") -> Broker:
    """The broker the settings name (RESYNC_BROKER_URL, its management API, TLS files, heartbeat, queue type)."""
    return open_broker(settings.broker_url, settings.management_url, dict(settings.broker_tls), settings.heartbeat,
                       name, settings.queue_type)


__all__ = ["Broker", "Connection", "Delivery", "QueueStats", "Topology", "broker_for", "open_broker"]
