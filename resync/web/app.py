"""The console's ASGI app: which sides it serves, sessions, the login, and the pages of each side.

One process serves the district pages, the state pages, or both, by what is configured; each side's users sign
in to that side only. Database calls are synchronous (the same stores as the command line), so handlers hand
them to Starlette's thread pool rather than block the event loop.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from agent.store import AgentStore
from core.db import engine
from core.settings import Settings
from messages.catalog import Catalog
from messages.status import LEGEND
from resync.render import when
from resync.web import security
from resync.web.security import LoginRequired, Throttle
from resync.web.users import Role, User, UserStore

HERE = Path(__file__).parent
SIDES = ("district", "state")
T = TypeVar("T")
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["when"] = when
templates.env.globals["LEGEND"] = LEGEND


@dataclass
class Console:
    settings: Settings
    catalog: Catalog
    sides: tuple[str, ...]
    engines: dict[str, Engine] = field(default_factory=dict)
    users: dict[str, UserStore] = field(default_factory=dict)
    throttle: Throttle = field(default_factory=Throttle)

    @property
    def store(self) -> AgentStore:
        return AgentStore(self.engines["district"])


def console_of(request: Request) -> Console:
    c: Console = request.app.state.console
    return c


async def db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await run_in_threadpool(fn, *args, **kwargs)


def page(request: Request, template: str, who: User | None, side: str | None, status_code: int = 200,
         **context: Any) -> Response:
    c = console_of(request)
    return templates.TemplateResponse(request, template, {
        "user": who, "side": side, "sides": c.sides, "csrf": security.csrf_token(request), "Role": Role,
        "district_id": c.settings.district, **context}, status_code=status_code)


async def signed_in(request: Request, side: str, role: Role = Role.VIEW, what: str = "this page") -> User:
    c = console_of(request)
    if side not in c.sides:
        raise HTTPException(404, f"this console does not serve the {side} pages")
    who = await db(security.user, request, c.users, side)
    security.need(who, role, what)
    return who


# login ------------------------------------------------------------------------------------------

async def login_page(request: Request) -> Response:
    return page(request, "login.html", None, None, error=None, name="")


async def login(request: Request) -> Response:
    c = console_of(request)
    data = await security.form(request)
    name = (data.get("name") or [""])[0].strip()
    password = (data.get("password") or [""])[0]
    side = (data.get("side") or [c.sides[0]])[0]
    if side not in c.sides:
        raise HTTPException(400, f"sign in to one of: {', '.join(c.sides)}")
    client = request.client.host if request.client else "?"
    name_key = security.throttle_key(f"name:{side}", name)
    keys = {name_key: security.FREE_ATTEMPTS, security.throttle_key("client", client): security.FREE_PER_CLIENT}
    wait = c.throttle.admit(keys)
    if wait > 0:
        return page(request, "login.html", None, None, name=name[:64], status_code=429,
                    error=f"too many failed logins: try again in {wait:.0f} s")
    who = None
    try:
        who = await db(c.users[side].check, name, password)
    finally:
        c.throttle.settle(keys, who is not None, name_key)
    if who is None:
        return page(request, "login.html", None, None, error="wrong name or password", name=name[:64])
    request.session.clear()  # a new session: nothing carried over from before the login
    request.session.update(user=who.name, side=side, key=who.session_key, csrf=secrets.token_urlsafe(32))
    return RedirectResponse(f"/{side}", status_code=303)


async def logout(request: Request) -> Response:
    await security.form(request)
    c = console_of(request)
    name, side = request.session.get("user"), request.session.get("side")
    if isinstance(name, str) and side in c.users:
        await db(c.users[side].end_sessions, name)  # a copy of the cookie kept elsewhere is worthless too
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def home(request: Request) -> Response:
    side = request.session.get("side")
    if side not in console_of(request).sides:
        raise LoginRequired
    return RedirectResponse(f"/{side}", status_code=303)


# users (admin) ----------------------------------------------------------------------------------

async def users_page(request: Request) -> Response:
    side = request.path_params["side"]
    who = await signed_in(request, side, Role.ADMIN, "managing users")
    store = console_of(request).users[side]
    if request.method == "POST":
        data = await security.form(request)
        action = (data.get("action") or [""])[0]
        name = (data.get("name") or [""])[0].strip()
        if action == "remove":
            if name == who.name:
                raise HTTPException(400, "you cannot remove yourself")
            await db(store.remove, name)
        else:
            role = Role.parse((data.get("role") or ["view"])[0])
            await db(store.add, name, role, (data.get("password") or [""])[0])
        return RedirectResponse(f"/{side}/users", status_code=303)
    return page(request, "users.html", who, side, users=await db(store.list), roles=list(Role))


# errors -----------------------------------------------------------------------------------------

async def to_login(request: Request, exc: Exception) -> Response:
    return RedirectResponse("/login", status_code=303)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return page(request, "error.html", None, request.session.get("side"), status_code=exc.status_code,
                status=exc.status_code, detail=exc.detail)


async def bad_value(request: Request, exc: Exception) -> Response:
    """A value the database cannot hold or compare (a NUL character, a number out of range)."""
    return await http_error(request, HTTPException(400, "a value in the request is not one the console can look up"))


async def fatal_error(request: Request, exc: Exception) -> Response:
    """A wrong request the stores refuse (an unknown object, a bad year): said on the page, as the CLI says it."""
    return await http_error(request, HTTPException(400, str(exc)))


def create_app(settings: Settings, catalog: Catalog, sides: tuple[str, ...]) -> Starlette:
    from sqlalchemy.exc import DataError

    from messages.errors import FatalError
    from resync.web import district, state

    c = Console(settings, catalog, sides)
    for side in sides:
        c.engines[side] = engine(settings.district_db_url if side == "district" else settings.state_db_url)
        c.users[side] = UserStore(c.engines[side])
        c.users[side].create()
    if "district" in sides:
        c.store.create()
    routes: list[BaseRoute] = [
        Route("/", home), Route("/login", login_page), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/{side:str}/users", users_page, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    if "district" in sides:
        routes += district.routes
    if "state" in sides:
        routes += state.routes
    app = Starlette(routes=routes, middleware=[
        Middleware(SessionMiddleware, secret_key=settings.web_secret or secrets.token_urlsafe(32),
                   session_cookie="resync_session", max_age=8 * 3600, same_site="strict",
                   https_only=settings.web_secure_cookies)],
        exception_handlers={LoginRequired: to_login, HTTPException: http_error, FatalError: fatal_error,
                            DataError: bad_value})
    app.state.console = c
    return app
