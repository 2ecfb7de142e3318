"""Lifespan, middleware and headers as a user's type checker sees them: checked by
mypy, never run (see api_check.py for the conventions)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, assert_type

from streamq import App, JobContext, Middleware, Task, current_job


@dataclass
class Resources:
    dsn: str


@asynccontextmanager
async def lifespan(app: App) -> AsyncIterator[Resources]:
    yield Resources("postgres://")


class Timing(Middleware):
    @asynccontextmanager
    async def around(self, ctx: JobContext) -> AsyncIterator[None]:
        yield

    async def after(self, ctx: JobContext, result: Any) -> None:
        assert_type(ctx.headers, Mapping[str, str])

    async def on_enqueue(
        self,
        task: Task[Any, Any, Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> Mapping[str, str]:
        return {**headers, "tenant": "acme"}


app = App("shop", lifespan=lifespan, middleware=[Timing()])


@app.task
async def charge(order: str) -> str:
    assert_type(current_job().state, Any)
    assert_type(current_job().state_as(Resources), Resources)
    return current_job().state_as(Resources).dsn


async def enqueue() -> None:
    await charge.with_options(headers={"tenant": "acme"}).enqueue("A-1")
    charge.with_options(headers={"n": 1})  # type: ignore[dict-item]


App("x", lifespan=42)  # type: ignore[arg-type]
App("x", middleware=[object()])  # type: ignore[list-item]
