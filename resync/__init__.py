"""resync: district to state data resync over RabbitMQ."""

__version__ = "0.1.0"
