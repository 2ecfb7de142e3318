"""Finding the user's App from a ``module:attribute`` path, as uvicorn does."""

from __future__ import annotations

import importlib
import os
import re
import sys

import typer

from streamq.app import App
from streamq.errors import ConfigError

_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_EXAMPLE = "module:attribute, like myapp.tasks:app"


def load_app(path: str, redis_url: str | None) -> App:
    """Import ``module:attr`` (attr defaults to ``app``); exit 2 with a clear message if wrong.

    A ConfigError raised while the module builds its App (a bad option, an
    unknown priority, a bad ``$STREAMQ_REDIS_URL``) is reported as such, with
    the module's name: it is configuration, not a bug in streamq.
    """
    module_name, _, attr = path.strip().partition(":")
    attr = attr or "app"
    if not path.strip():
        raise typer.BadParameter(f"empty; give {_EXAMPLE}", param_hint="APP")
    if not module_name:
        raise typer.BadParameter(
            f"{path!r} has no module before ':'; give {_EXAMPLE}", param_hint="APP"
        )
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        module_hint = module_name.removesuffix(".py").replace("/", ".").replace("\\", ".")
        raise typer.BadParameter(
            f"{module_name!r} is a file path; give the module's import name, "
            f"{module_hint.strip('.') or 'myapp.tasks'}:{attr}, from the directory that holds it",
            param_hint="APP",
        )
    if not _MODULE.match(module_name) or not attr.isidentifier():
        raise typer.BadParameter(f"{path!r} is not {_EXAMPLE}", param_hint="APP")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="APP") from exc
    except ConfigError as exc:
        raise ConfigError(f"{module_name}: {exc}") from exc
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
