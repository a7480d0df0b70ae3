"""Broker backends: ``rabbitmq`` (the real one) and ``memory`` (in-process, for the embedded default)."""

from __future__ import annotations

from resync.brokers.base import Broker, Connection, Delivery, QueueStats, Topology


def open_broker(url: str | None, management_url: str | None = None, tls: dict[str, str] | None = None) -> Broker:
    """The broker for ``url``; ``None`` or ``memory://`` gives the process-wide in-process broker.
    ``tls``: ``ca_certs`` / ``certfile`` / ``keyfile`` for an ``amqps://`` URL."""
    if not url or url.startswith("memory://"):
        from resync.brokers.memory import MemoryBroker

        return MemoryBroker.shared()
    from resync.brokers.rabbitmq import RabbitBroker

    return RabbitBroker(url, management_url, tls)


__all__ = ["Broker", "Connection", "Delivery", "QueueStats", "Topology", "open_broker"]
