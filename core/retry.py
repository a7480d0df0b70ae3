"""The one retry policy for transient failures: exponential backoff, forever, logged."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import structlog
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_never, wait_exponential

from messages.errors import BrokerRefused, ConfigError, RetriableError, StoreUnavailable

log = structlog.get_logger()
TRANSIENT = (RetriableError, OperationalError)
T = TypeVar("T")
R = TypeVar("R")


def reason(e: BaseException) -> str:
    """The first line of what ``e`` says (a database error: its driver's words, without SQLAlchemy's wrapping),
    or its type when it says nothing."""
    said = e.orig if isinstance(e, DBAPIError) and e.orig is not None else e
    return (str(said).strip().splitlines() or [type(e).__name__])[0]


def as_retriable(e: BaseException) -> BaseException:
    """Database errors that mean 'try again' become ``StoreUnavailable``."""
    if isinstance(e, OperationalError) or (isinstance(e, DBAPIError) and e.connection_invalidated):
        return StoreUnavailable(str(e.orig)[:300] if isinstance(e, DBAPIError) else str(e))
    return e


_REFUSED = ("does not exist", "password authentication failed", "no password supplied", "not permitted to log in",
            "no pg_hba.conf entry")


def misconfigured(e: BaseException) -> ConfigError | None:
    """A database error that is a wrong setting, not a passing failure: a database or role that does not exist,
    a password or login the server refuses. Retrying will not cure it."""
    if not isinstance(e, DBAPIError) or not isinstance(e, OperationalError):
        return None
    reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
    if not any(words in reason for words in _REFUSED):
        return None
    return ConfigError(f"the database refused: {reason[:300]}: fix RESYNC_DISTRICT_DB / RESYNC_STATE_DB "
                       "(--district-db / --state-db)")


def permanent(e: Exception) -> Exception:
    """``e`` when retrying cannot cure it. A transient failure (a lost connection, a database that went away)
    is raised instead, in its retriable form, for the daemon to reconnect and try again."""
    fatal = misconfigured(e)
    if fatal is not None:
        raise fatal from e
    if isinstance(e, (*TRANSIENT, BrokerRefused)):  # a lost connection, or a wrong setting: not this item's fault
        raise e
    transient = as_retriable(e)
    if transient is not e:
        raise transient from e
    return e


def narrow(items: list[T], attempt: Callable[[list[T]], R], give_up: Callable[[T, Exception], R],
           failure: Exception | None = None) -> list[R]:
    """``attempt(items)``; if it fails for a reason retrying cannot cure (or ``failure`` says it already did),
    each half is attempted in turn, down to the one item that fails, which ``give_up`` answers instead. One
    poison item among n costs about 2 log2(n) attempts, not n. Returns the results in the items' order; a
    transient failure is raised, for the caller to retry the whole."""
    if failure is None:
        try:
            return [attempt(items)]
        except Exception as e:
            failure = permanent(e)
    if len(items) == 1:
        return [give_up(items[0], failure)]
    half = len(items) // 2
    return narrow(items[:half], attempt, give_up) + narrow(items[half:], attempt, give_up)


def run_forever(step: Callable[[], None], stop: threading.Event, what: str, max_wait: float = 15.0,
                failed: Callable[[BaseException], None] | None = None) -> None:
    """Call ``step`` until ``stop`` is set, reconnecting with backoff whenever it fails transiently (and telling
    ``failed`` what failed, for the daemon's health)."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if failed is not None and exc is not None:
            failed(exc)
        log.warning(f"{what} failed; retrying", error=str(exc), attempt=state.attempt_number,
                    wait=round(state.next_action.sleep if state.next_action else 0, 1))

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    def transient(e: BaseException) -> bool:
        return isinstance(e, TRANSIENT) and misconfigured(e) is None

    retrying = Retrying(
        retry=retry_if_exception(transient),
        wait=wait_exponential(multiplier=0.2, max=max_wait),
        stop=stop_never,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                if stop.is_set():
                    return
                step()
    except Exception as e:
        fatal = misconfigured(e)
        if fatal is not None:
            raise fatal from None
        raise


def every(seconds: float, step: Callable[[], object], stop: threading.Event, what: str) -> None:
    """Call ``step`` every ``seconds`` until ``stop`` is set (housekeeping beside a daemon's work): a failure is
    logged and the next turn tries again, so a database that is away for a while stops nothing."""
    while not stop.wait(seconds):
        try:
            step()
        except Exception:
            log.warning(f"{what} failed; trying again in {seconds:.0f} s", exc_info=True)
