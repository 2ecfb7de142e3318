"""Decoration and task options: checked when the code is written, not when it runs."""

from __future__ import annotations

import pytest

from streamq import App, ConfigError, UnknownPriorityError
from streamq.settings import DEFAULT_PRIORITIES


def make_app(**kwargs: object) -> App:
    # No connection is made until first use, so no server is needed here.
    return App("q", redis_url="redis://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]


def test_default_priorities_are_ordered_highest_first() -> None:
    app = make_app()
    assert app.settings.priorities == DEFAULT_PRIORITIES == ("high", "default", "low")


def test_task_defaults() -> None:
    """A task defaults to the 'default' priority and is named module.qualname."""
    app = make_app()

    @app.task
    async def handler(x: int) -> int:
        return x

    assert handler.name == f"{__name__}.test_task_defaults.<locals>.handler"
    assert handler.options.priority == "default"
    assert handler.options.max_retries == 3
    assert handler.options.timeout_s is None
    assert app.tasks[handler.name] is handler


def test_explicit_name_and_options() -> None:
    app = make_app()

    @app.task(name="mail.send", priority="high", max_retries=5, timeout=30)
    def send(to: str) -> str:
        return to

    assert send.name == "mail.send"
    assert (send.options.priority, send.options.max_retries, send.options.timeout_s) == (
        "high",
        5,
        30,
    )


@pytest.mark.anyio
async def test_handler_stays_callable_as_a_plain_function() -> None:
    app = make_app()

    @app.task
    def double(x: int) -> int:
        return 2 * x

    @app.task
    async def triple(x: int) -> int:
        return 3 * x

    assert double(4) == 8
    assert await triple(4) == 12


def test_unknown_priority_is_a_value_error_at_decoration() -> None:
    app = make_app()
    with pytest.raises(UnknownPriorityError, match="urgent") as info:

        @app.task(priority="urgent")
        async def handler() -> None: ...

    assert isinstance(info.value, ValueError)
    assert info.value.known == DEFAULT_PRIORITIES


def test_unknown_priority_in_with_options() -> None:
    app = make_app()

    @app.task
    async def handler() -> None: ...

    with pytest.raises(ValueError, match="nope"):
        handler.with_options(priority="nope")
    assert handler.with_options(priority="low").options.priority == "low"
    assert handler.options.priority == "default"  # the original is unchanged


def test_custom_priorities_and_default_without_a_default_name() -> None:
    app = make_app(priorities=["p0", "p1", "p2", "p3"])

    @app.task
    async def handler() -> None: ...

    assert handler.options.priority in app.settings.priorities


@pytest.mark.parametrize(
    "options",
    [{"max_retries": -1}, {"max_retries": 1.5}, {"timeout": 0}, {"timeout": float("nan")}],
)
def test_bad_options_are_rejected(options: dict[str, object]) -> None:
    app = make_app()
    with pytest.raises(ConfigError):
        app.task(**options)  # type: ignore[call-overload]


def test_duplicate_task_name_is_rejected() -> None:
    app = make_app()

    @app.task(name="same")
    async def one() -> None: ...

    with pytest.raises(ConfigError, match="already registered"):

        @app.task(name="same")
        async def two() -> None: ...


@pytest.mark.parametrize("name", ["a b", "a{b}", "a:b", ""])
def test_bad_queue_names_are_rejected(name: str) -> None:
    """Braces and colons would break the hash tag and key layout."""
    with pytest.raises(ConfigError):
        App(name, redis_url="redis://127.0.0.1:1")


@pytest.mark.parametrize("priorities", [[], ["a", "a"], ["a:b"]])
def test_bad_priorities_are_rejected(priorities: list[str]) -> None:
    with pytest.raises(ConfigError):
        make_app(priorities=priorities)
