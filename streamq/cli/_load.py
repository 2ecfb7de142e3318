"""Finding the user's App from a ``module:attribute`` path, as uvicorn does."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from streamq.app import App


def load_app(path: str, redis_url: str | None) -> App:
    """Import ``module:attr`` (attr defaults to ``app``); exit 2 with a clear message if wrong."""
    module_name, _, attr = path.partition(":")
    attr = attr or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="APP") from exc
    if not hasattr(module, attr):
        raise typer.BadParameter(
            f"module {module_name!r} has no attribute {attr!r}", param_hint="APP"
        )
    app = getattr(module, attr)
    if not isinstance(app, App):
        raise typer.BadParameter(
            f"{module_name}:{attr} is {type(app).__name__}, not a streamq App", param_hint="APP"
        )
    if redis_url:
        app.settings = app.settings.with_changes(redis_url=redis_url)
    return app
