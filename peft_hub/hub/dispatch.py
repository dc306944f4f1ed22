"""A shortcut to the HF ``/resolve`` routes past the ~70 route regexes that
Starlette tries before them (about 38% of a warm 302's time in process).

Starlette answers a request with the first route, in order, whose path and
method both match (a FULL match); routes that match the path alone only
count when nothing matches fully. So a resolve route is Starlette's choice
exactly when its own regex and method match and no route before it that
takes the method (or takes every method) matches the path. For each method,
:func:`plan` sorts the routes before the target in two:

- a route whose first path segment is a literal ``L`` (its regex begins
  ``^/L/`` or is ``^/L$``, checked, not assumed) can only match a path whose
  first segment is ``L``: one set lookup skips all of them (``api``,
  ``openapi.json``, ...);
- any other (``/{name}/resolve/...``, a mount at ``/``) keeps its regex,
  tried on every request.

A route whose match is not its path and method (a ``Host``, anything this
module does not know) turns the shortcut off. :class:`ResolveShortcut` sits
where ``Router.app`` is called, so every middleware and exception handler
still runs; when the plan picks the target it leaves in the scope what
FastAPI's nested routing leaves (router, form limits, the included router,
the effective route context, ``route``, ``endpoint``, ``path_params``) and
calls the route's ``handle``; otherwise it calls the router unchanged. The
plan follows the routes: it is rebuilt when the app's route list or any
router's version changes. ``tests/test_route_dispatch.py`` holds it to
FastAPI's own matching and to the same responses with the shortcut off.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi import routing as fastapi_routing
from starlette import routing
from starlette._utils import get_route_path

Scope = MutableMapping[str, Any]
#: FastAPI's private routing pieces the shortcut mirrors; without any of them it stays off.
_NEEDED = ("_IncludedRouter", "_EffectiveRouteContext", "_apply_router_form_limits", "_get_fastapi_scope",
           "_update_scope", "_FASTAPI_INCLUDED_ROUTER_KEY", "_FASTAPI_EFFECTIVE_ROUTE_CONTEXT_KEY")
_TELEMETRY = "fastapi.telemetry"
#: Routes that match by their path regex and methods alone (websocket ones never match HTTP: kept as if they did).
_PLAIN = (routing.Route, routing.Mount, routing.WebSocketRoute, fastapi_routing.APIRoute,
          fastapi_routing.APIWebSocketRoute)


@dataclass(frozen=True)
class Target:
    """One resolve route as FastAPI matches it, and the included routers above it."""

    regex: re.Pattern[str]
    convertors: dict[str, Any]
    route: Any  # the APIRoute, as scope["route"]
    context: Any  # its _EffectiveRouteContext, or None for a route added to the app itself
    chain: tuple[Any, ...]  # the _IncludedRouters from the app's router down to the route
    endpoint: Callable[..., Any]


@dataclass(frozen=True)
class Plan:
    """Per method: the target, the literal first segments and the regexes that rule it out."""

    targets: dict[str, tuple[Target, frozenset[str], tuple[re.Pattern[str], ...]]]

    def choose(self, scope: Scope) -> tuple[Target, Scope] | None:
        """The target and the child scope FastAPI would give it, or None to route normally."""
        entry = self.targets.get(scope["method"])
        if entry is None:
            return None
        target, literals, checked = entry
        path = get_route_path(scope)
        if path[:1] != "/" or path[1:].partition("/")[0] in literals:
            return None
        match = target.regex.match(path)
        if match is None or any(regex.match(path) for regex in checked):
            return None
        params = dict(scope.get("path_params", {}))
        params.update({key: target.convertors[key].convert(value) for key, value in match.groupdict().items()})
        return target, {"endpoint": target.endpoint, "path_params": params, "route": target.route}


def _walk(routes: list[Any], chain: tuple[Any, ...]) -> Iterator[tuple[Any, Any, tuple[Any, ...]]]:
    """(route as matched, its effective context or None, included routers above it), in matching order."""
    included = fastapi_routing._IncludedRouter
    for route in routes:
        if isinstance(route, included):
            yield from _walk(route.effective_candidates(), (*chain, route))
        elif isinstance(route, fastapi_routing._EffectiveRouteContext):
            original = route.original_route
            if isinstance(original, fastapi_routing.APIRoute):
                yield route, route, chain
            else:
                yield route.starlette_route or route, route, chain
        else:
            yield route, None, chain


def _literal(route: Any) -> str | None:
    """The literal first segment every path this route matches begins with, else None."""
    template, regex = getattr(route, "path_format", None), getattr(route, "path_regex", None)
    if not isinstance(template, str) or regex is None or not template.startswith("/"):
        return None
    first = template[1:].partition("/")[0]
    if "{" in first or "}" in first:
        return None
    head = "^/" + re.escape(first)
    return first if regex.pattern == head + "$" or regex.pattern.startswith(head + "/") else None


def _modelled(route: Any) -> bool:
    """Whether the route matches by its path regex and methods alone (as this module assumes)."""
    if isinstance(route, fastapi_routing._EffectiveRouteContext):
        return type(route.original_route) is fastapi_routing.APIRoute
    return type(route) in _PLAIN


def plan(router: Any, endpoints: dict[str, Callable[..., Any]]) -> Plan | None:
    """The shortcut for ``router``: for each method, the first route whose endpoint is ``endpoints[method]``.

    Returns:
        None where a route before a target could match in a way this module does not model.
    """
    if not all(hasattr(fastapi_routing, name) for name in _NEEDED):
        return None
    walked = list(_walk(router.routes, ()))
    targets: dict[str, tuple[Target, frozenset[str], tuple[re.Pattern[str], ...]]] = {}
    for method, endpoint in endpoints.items():
        before: list[Any] = []
        for route, context, chain in walked:
            methods = getattr(route, "methods", None)
            if getattr(route, "endpoint", None) is endpoint and methods and method in methods:
                if not isinstance(getattr(route, "original_route", route), fastapi_routing.APIRoute):
                    return None
                target = Target(route.path_regex, route.param_convertors, getattr(route, "original_route", route),
                                context, chain, route.endpoint)
                break
            if not _modelled(route):
                return None  # a Host, a frontend group, a custom route class: not just a path and a method
            if methods is None or method in methods:
                before.append(route)
        else:
            continue
        literals = {first for route in before if (first := _literal(route)) is not None}
        checked = tuple(route.path_regex for route in before if _literal(route) is None)
        targets[method] = (target, frozenset(literals), checked)
    return Plan(targets) if targets else None


def _routers(router: Any) -> list[Any]:
    """Every APIRouter in the app's tree, the app's own first."""
    found, queue = [router], [router]
    while queue:
        for route in queue.pop().routes:
            if isinstance(route, fastapi_routing._IncludedRouter) and route.original_router not in found:
                found.append(route.original_router)
                queue.append(route.original_router)
    return found


def _same(old: list[Any], new: list[Any]) -> bool:
    return len(old) == len(new) and all(map(operator.is_, old, new))


class ResolveShortcut:
    """Wraps ``Router.app``: a request :class:`Plan` picks goes straight to its route.

    ``enabled = False`` routes every request normally (the tests compare the two).
    """

    def __init__(self, router: Any, app: Callable[..., Any], endpoints: dict[str, Callable[..., Any]]) -> None:
        self.router, self.app, self.endpoints, self.enabled = router, app, endpoints, True
        self._plan: Plan | None = None
        self._key: tuple[list[Any], int] | None = None
        self._routers: list[Any] = []

    def current(self) -> Plan | None:
        """The plan for the routes as they are now (rebuilt after any change to them)."""
        routes = self.router.routes
        if self._key is None or not _same(self._key[0], routes) or self._key[1] != self._version():
            self._routers = _routers(self.router)
            self._plan = plan(self.router, self.endpoints)
            self._key = (list(routes), self._version())
        return self._plan

    def _version(self) -> int:
        return sum([router._routes_version for router in self._routers])

    async def __call__(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        chosen = None
        if self.enabled and scope["type"] == "http" and _TELEMETRY not in scope:
            current = self.current()
            chosen = current.choose(scope) if current is not None else None
        if chosen is None:
            await self.app(scope, receive, send)
            return
        target, child = chosen
        r = fastapi_routing
        r._apply_router_form_limits(scope, self.router.form_limits)
        scope.setdefault("router", self.router)
        fastapi_scope = r._get_fastapi_scope(scope)
        for included in target.chain:
            r._apply_router_form_limits(scope, included.include_context.form_limits)
            fastapi_scope[r._FASTAPI_INCLUDED_ROUTER_KEY] = included
        r._update_scope(scope, child)
        if target.context is not None:
            fastapi_scope[r._FASTAPI_EFFECTIVE_ROUTE_CONTEXT_KEY] = target.context
        await target.route.handle(scope, receive, send)


def install(app: FastAPI, endpoints: dict[str, Callable[..., Any]]) -> ResolveShortcut | None:
    """Put a :class:`ResolveShortcut` for ``endpoints`` (method -> endpoint) in front of the app's routing.

    Only where nothing wraps ``Router.app`` (router-level middleware would be skipped).
    """
    router = app.router
    if (router.middleware_stack != router.app or not hasattr(router, "_routes_version")
            or not all(hasattr(fastapi_routing, n) for n in _NEEDED)):
        return None
    shortcut = ResolveShortcut(router, router.middleware_stack, endpoints)
    router.middleware_stack = shortcut
    return shortcut


def shortcut_of(app: FastAPI) -> ResolveShortcut | None:
    """The app's shortcut, if :func:`install` put one there."""
    stack = app.router.middleware_stack
    return stack if isinstance(stack, ResolveShortcut) else None
