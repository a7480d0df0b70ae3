"""One error hierarchy, grouped by what the caller should do with it.

- ``FatalError``: configuration or programming mistakes; stop and tell the operator.
- ``RetriableError``: transport and system failures; retry with backoff, then dead-letter.
- ``RecordError``: the record itself cannot be applied; ack it with an error and move on.

Record errors carry a SIF 2.x category and a code, which become the error ack.
"""

from __future__ import annotations

from enum import IntEnum


class Category(IntEnum):
    """SIF 2.x error categories."""

    VALIDATION = 1
    AUTHENTICATION = 3
    ACCESS = 4
    REQUEST_RESPONSE = 8
    EVENT_PROCESSING = 9
    TRANSPORT = 10
    SYSTEM = 11
    GENERIC_MESSAGE = 12


class Code:
    """Error codes, unique across categories so a code alone names the failure."""

    # category 1: validation
    BAD_FIELD = "1.2"
    BAD_REFID = "1.3"
    UNKNOWN_OBJECT = "1.4"
    UNKNOWN_ACTION = "1.5"
    BAD_DATA = "1.6"
    OBJECT_DISABLED = "1.7"
    BAD_YEAR = "1.8"
    # category 4: access and permissions
    WRONG_SOURCE = "4.1"
    NO_USER = "4.2"
    FOREIGN_PARENT = "4.3"
    # category 9: event reporting and processing (data errors)
    PARENT_MISSING = "9.1"
    STATE_EXCLUDED = "9.2"
    UNDER_EXCLUDED = "9.3"
    HAS_CHILDREN = "9.4"
    DUPLICATE_CONFLICT = "9.5"
    # category 11: system
    APPLY_FAILED = "11.1"
    # category 12: generic message handling
    NOT_JSON = "12.1"
    NOT_OBJECT = "12.2"
    BAD_VERSION = "12.3"
    MISSING_FIELD = "12.4"
    TOO_LARGE = "12.5"
    BAD_ENCODING = "12.6"
    UNKNOWN_TYPE = "12.7"
    NOT_SENT_TOO_LARGE = "12.8"
    """Refused by the agent itself: the record's message would be over the limit, so it was never sent."""


class ResyncError(Exception):
    """Base of every error this project raises on purpose."""


class FatalError(ResyncError):
    """Stop: the configuration or the request is wrong and retrying will not help."""


class ConfigError(FatalError):
    """A setting or a command-line argument is wrong."""


class BrokerRefused(ConfigError):
    """The broker refused this process for a reason retrying cannot cure: bad credentials, an unknown vhost, a
    missing permission, a ``user_id`` it does not accept. The message names the setting to fix."""


class CatalogError(FatalError):
    """The object catalog is inconsistent or a name is not in it."""


class UnknownObjectError(CatalogError):
    def __init__(self, name: str, suggestions: list[str]) -> None:
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown object {name!r}{hint} (`resync objects` lists them)")
        self.name = name
        self.suggestions = suggestions


class RetriableError(ResyncError):
    """Transient: retry with backoff."""


class ConnectionClosed(RetriableError):
    """The broker connection was lost or refused."""


class StoreUnavailable(RetriableError):
    """A database could not be reached or a transaction was aborted for a transient reason."""


class RecordError(ResyncError):
    """A message or record that must be answered with an error ack, never retried."""

    def __init__(self, category: Category, code: str, desc: str, extended: str = "") -> None:
        super().__init__(desc)
        self.category = category
        self.code = code
        self.desc = desc
        self.extended = extended


class DecodeError(RecordError):
    """The message does not follow the contract. ``msg_id`` is set when the body named a valid one,
    so the sender can still be answered; ``object``, ``ref_id`` and ``batch`` when it validly named them, so
    the sender can count the answer against its batch."""

    msg_id: str | None = None
    object: str | None = None
    ref_id: str | None = None
    batch: str | None = None
