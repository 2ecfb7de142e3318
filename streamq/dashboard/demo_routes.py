"""The live demo's page and controls, when the dashboard was given a ``DemoControl``.

The page polls its fragment every ``DEMO_REFRESH_MS``; the forms configure the
pool, enqueue a batch, reclaim now and reset (POST, CSRF-checked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from streamq.dashboard.render import render, url
from streamq.dashboard.security import checked_form
from streamq.demo_pool import DemoConfig, DemoControl
from streamq.errors import ConfigError

if TYPE_CHECKING:
    from streamq.dashboard import Dashboard

DEMO_REFRESH_MS = 800
STATES = ("waiting", "running", "retrying", "reclaimed", "succeeded", "dead")


def _number(
    form: dict[str, str], name: str, kind: type[int] | type[float], low: float, high: float
) -> float:
    raw = form.get(name)
    try:
        value = kind(raw) if isinstance(raw, str) else None
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ConfigError(f"{name} must be a number from {low:g} to {high:g}, got {raw!r}")
    return value


def routes(dashboard: Dashboard) -> list[Route]:
    def control() -> DemoControl:
        if dashboard.demo is None:
            raise HTTPException(404, "this dashboard runs no demo (streamq demo --web)")
        return dashboard.demo

    def back(request: Request, message: str) -> Response:
        return RedirectResponse(url(request, "demo", {"done": message}), status_code=303)

    async def page(request: Request) -> Response:
        demo = control()
        snapshot = await demo.snapshot()
        fragment = "_demo.html"
        return render(
            dashboard, request, fragment if request.query_params.get("partial") else "demo.html",
            fragment=fragment, snapshot=snapshot, kinds=demo.kinds, priorities=demo.priorities,
            states=STATES, refresh_ms=DEMO_REFRESH_MS,
        )  # fmt: skip

    async def configure(request: Request) -> Response:
        demo = control()
        form = await checked_form(request)
        config = DemoConfig(
            workers=int(_number(form, "workers", int, 0, 16)),
            latency_ms=int(_number(form, "latency_ms", int, 0, 60_000)),
            failure_rate=_number(form, "failure_rate", float, 0, 1),
            hang_rate=_number(form, "hang_rate", float, 0, 1),
            visibility_timeout_s=_number(form, "visibility_timeout_s", float, 0.1, 3600),
        )
        await demo.configure(config)
        return back(request, "configured")

    async def enqueue(request: Request) -> Response:
        demo = control()
        form = await checked_form(request)
        kind = form.get("kind")
        priority = form.get("priority")
        if kind not in demo.kinds:
            raise ConfigError(f"unknown kind {kind!r}")
        if priority not in demo.priorities:
            raise ConfigError(f"unknown priority {priority!r}")
        count = int(_number(form, "count", int, 1, 10_000))
        added = await demo.enqueue(str(kind), count, str(priority))
        return back(request, f"enqueued {added} {kind} job(s)")

    async def reclaim(request: Request) -> Response:
        demo = control()
        await checked_form(request)
        moved = await demo.reclaim_now()
        return back(request, f"reclaimed {moved} job(s)")

    async def reset(request: Request) -> Response:
        demo = control()
        await checked_form(request)
        await demo.reset()
        return back(request, "reset")

    return [
        Route("/demo", page, name="demo"),
        Route("/demo/configure", configure, methods=["POST"], name="demo_configure"),
        Route("/demo/enqueue", enqueue, methods=["POST"], name="demo_enqueue"),
        Route("/demo/reclaim", reclaim, methods=["POST"], name="demo_reclaim"),
        Route("/demo/reset", reset, methods=["POST"], name="demo_reset"),
    ]
