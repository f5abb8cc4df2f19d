"""The router files routes by their literal first two segments; for every route of every service, a
request for its path finds what trying every template in specificity order finds (the route,
its variables, and the verbs a 405 names), and unknown paths still find nothing."""

from __future__ import annotations

import re

import pytest

from gateway import routes

ROUTES = routes.discover()
ROUTER = routes.Router(list(ROUTES))


def linear(method: str, path: str) -> tuple[routes.Route | None, dict[str, str], list[str]]:
    allowed: list[str] = []
    for route in ROUTER.routes:  # every template, most specific first
        params = route.template.match(path)
        if params is None:
            continue
        if route.http_method == method:
            return route, params, []
        allowed.append(route.http_method)
    return None, {}, sorted(set(allowed))


def sample_path(template: str) -> str:
    """`template` with each variable replaced by a value its pattern takes."""

    def value(m: re.Match[str]) -> str:
        pattern = m.group(2) or "*"
        return "/".join("x1" if seg == "*" else "a/b" if seg == "**" else seg for seg in pattern.split("/"))

    return re.sub(r"\{([a-zA-Z_][a-zA-Z0-9_.]*)(?:=([^}]*))?\}", value, template)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.http_method} {r.template.text}")
def test_every_route_is_found_as_a_full_scan_finds_it(route: routes.Route) -> None:
    path = sample_path(route.template.text)
    found = ROUTER.match(route.http_method, path)
    assert found == linear(route.http_method, path)
    assert found[0] is not None
    # The other verbs on the same path: a match or the same 405 list.
    for method in ("GET", "POST", "PATCH", "DELETE", "PUT"):
        assert ROUTER.match(method, path) == linear(method, path)


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/", "/v1/nothing-here", "/v2/agents", "/v1/agents/x/y/z/w"])
def test_unknown_paths_find_nothing_as_before(path: str) -> None:
    for method in ("GET", "POST"):
        assert ROUTER.match(method, path) == linear(method, path)
