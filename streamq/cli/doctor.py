"""``streamq doctor``: check the server's version, persistence, eviction and ACLs, and how
far back the queue's history reaches."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from streamq.app import App
from streamq.cli._common import AppArg, RedisUrlOpt, counted, run_with_app
from streamq.cli._load import load_app
from streamq.doctor import Check, Status, run_checks

_COLOR = {Status.OK: "green", Status.WARN: "yellow", Status.PROBLEM: "red"}


def doctor(
    app_path: AppArg,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    redis_url: RedisUrlOpt = None,
) -> None:
    """Check the server streamq runs on; print a fix for each warning or problem.

    Exits 1 when any check is a problem (jobs could be lost, or workers fail).
    """
    app = load_app(app_path, redis_url)

    async def body(app: App) -> list[Check]:
        return await run_checks(app)

    # Not connected first: run_checks reports on servers App.redis() refuses.
    checks = run_with_app(app, body, connect=False)
    problems = sum(c.status is Status.PROBLEM for c in checks)
    warnings = sum(c.status is Status.WARN for c in checks)
    if as_json:
        records = [
            {"name": c.name, "status": str(c.status), "detail": c.detail, "fix": c.fix}
            for c in checks
        ]
        typer.echo(json.dumps({"ok": problems == 0, "checks": records}))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            status = typer.style(f"{c.status:<8}", fg=_COLOR[c.status], bold=True)
            typer.echo(f"{status} {c.name:<{width}}  {c.detail}")
            if c.fix:
                typer.echo(f"{'':<8} {'':<{width}}  fix: {c.fix}")
        summary = f"{counted(problems, 'problem')}, {counted(warnings, 'warning')}"
        typer.echo(f"\n{summary}" if problems or warnings else "\nall checks ok")
    if problems:
        raise typer.Exit(1)
