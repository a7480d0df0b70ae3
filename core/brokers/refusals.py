"""What pika raises, said as this project's errors: a wrong setting is fatal and names the setting to fix;
everything else is a lost connection, to be retried."""

from __future__ import annotations

import socket
import ssl

from pika import exceptions as px

from messages.errors import BrokerRefused, ConnectionClosed, ResyncError

_GRANT = "grant it (`resync broker definitions` writes each user's permissions) or fix the user in RESYNC_BROKER_URL"


def root(exc: BaseException | None) -> BaseException | None:
    """The failure inside pika's wrappers: a connection error may carry a failed connection workflow (its
    argument), which lists its attempts' failures (``exceptions``), each holding what the socket or TLS raised
    (``exception``)."""
    for _ in range(6):
        if isinstance(exc, px.AMQPConnectionError) and exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
            continue
        inner = getattr(exc, "exceptions", None)
        if isinstance(inner, list | tuple) and inner and isinstance(inner[-1], BaseException):
            exc = inner[-1]
            continue
        cause = getattr(exc, "exception", None)
        if not isinstance(cause, BaseException):
            break
        exc = cause
    return exc


def converted(exc: BaseException | None, where: str, user: str) -> ResyncError:
    """``exc`` (from pika, or None for a connection closed without a reason) as ``BrokerRefused`` (fatal) when
    retrying cannot help, else ``ConnectionClosed``."""
    exc = root(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BrokerRefused(f"{where}: the broker's certificate is not trusted ({exc.verify_message}): set "
                             "RESYNC_BROKER_CA_FILE to the CA that signed it, and connect by the name it was "
                             "issued for")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionClosed(f"{where} refused the connection: is RabbitMQ running, and are the host and port "
                                "in RESYNC_BROKER_URL right?")
    if isinstance(exc, socket.gaierror):
        return ConnectionClosed(f"{where}: the host name cannot be resolved ({exc.strerror})")
    if isinstance(exc, px.ProbableAuthenticationError | px.AuthenticationError):
        return BrokerRefused(f"{where} refused the login of user {user!r}: check the user name and password in "
                             "RESYNC_BROKER_URL")
    if isinstance(exc, px.ProbableAccessDeniedError) or (
            isinstance(exc, px.ConnectionClosedByBroker) and exc.reply_code == 530):
        return BrokerRefused(f"{where}: the vhost does not exist or user {user!r} may not use it: fix the vhost in "
                             f"RESYNC_BROKER_URL (`%2F` is the default vhost) or grant it (rabbitmqctl "
                             f"set_permissions -p VHOST {user} ...)")
    if isinstance(exc, px.ChannelClosedByBroker | px.ConnectionClosedByBroker):
        text = str(exc.reply_text)[:300]
        if exc.reply_code == 403:
            return BrokerRefused(f"{where} refused user {user!r}: {text}: {_GRANT}")
        if exc.reply_code == 406 and "user_id" in text:
            return BrokerRefused(f"{where} refused the message's user_id: {text}: the user in RESYNC_BROKER_URL must "
                                 "be the one the broker authenticates (with a client certificate, the certificate's)")
        if exc.reply_code == 406 and "x-queue-type" in text:
            return BrokerRefused(f"{where}: {text}: RESYNC_QUEUE_TYPE must be the type the queues were made with; to "
                                 "change it, stop the agents, let the receivers empty the queues, delete them and "
                                 "start again with the new type")
        if exc.reply_code == 406:
            return BrokerRefused(f"{where}: {text}: a queue or exchange exists with other settings; remove it or "
                                 "load the definitions `resync broker definitions` writes")
        return ConnectionClosed(f"{where} closed the connection: {exc.reply_code} {text}")
    if isinstance(exc, px.AMQPHeartbeatTimeout):
        return ConnectionClosed(f"{where} sent nothing for two heartbeats (RESYNC_HEARTBEAT): the network dropped "
                                "the connection")
    if isinstance(exc, px.ConnectionBlockedTimeout):
        return ConnectionClosed(f"{where} blocked publishing for too long (a memory or disk alarm); reconnecting")
    if isinstance(exc, px.IncompatibleProtocolError):
        return ConnectionClosed(f"{where} did not speak AMQP 0-9-1 (is it RabbitMQ, and is the port and amqp:// "
                                f"or amqps:// right?): {exc!r}"[:400])
    detail = f"{type(exc).__name__}: {exc}" if exc is not None else "closed"
    return ConnectionClosed(f"{where}: {detail}"[:400])
