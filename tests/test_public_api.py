"""The public surface: exported names, script wrappers, typing marker, console script."""

from __future__ import annotations

import importlib.metadata
from importlib import resources

import redis.exceptions

import streamq
import streamq.cli
import streamq.scripts


def test_all_is_a_sorted_tuple() -> None:
    """``__all__`` is a tuple in sorted order, so a diff shows an added name plainly."""
    assert isinstance(streamq.__all__, tuple)
    assert list(streamq.__all__) == sorted(streamq.__all__)
    assert len(set(streamq.__all__)) == len(streamq.__all__)


def test_every_exported_name_exists() -> None:
    """Each name in ``__all__`` is importable from ``streamq``."""
    missing = [name for name in streamq.__all__ if not hasattr(streamq, name)]
    assert not missing


def test_every_exported_name_is_defined_in_streamq() -> None:
    """Exports are streamq's own objects, not re-exported third-party ones."""
    foreign = [
        name
        for name in streamq.__all__
        if not getattr(streamq, name).__module__.startswith("streamq.")
    ]
    assert not foreign


def test_each_lua_file_has_a_wrapper_and_each_wrapper_a_file() -> None:
    """``streamq.scripts.NAMES`` and the shipped ``*.lua`` files match one to one."""
    shipped = {
        entry.name.removesuffix(".lua")
        for entry in resources.files("streamq.scripts").iterdir()
        if entry.name.endswith(".lua")
    }
    assert shipped == set(streamq.scripts.NAMES)
    assert len(streamq.scripts.NAMES) == len(set(streamq.scripts.NAMES))


def test_each_script_name_has_a_typed_wrapper_method() -> None:
    """Every script is called through a method of ``Scripts`` of the same name, or
    one per mode named ``<script>_<mode>`` (``reclaim_page``, ``reclaim_claim``)."""
    methods = [m for m in dir(streamq.scripts.Scripts) if not m.startswith("_")]
    missing = [
        name
        for name in streamq.scripts.NAMES
        if name not in methods and not any(m.startswith(f"{name}_") for m in methods)
    ]
    assert not missing


def test_package_ships_py_typed() -> None:
    """PEP 561: without ``py.typed`` a user's type checker ignores our annotations."""
    assert resources.files("streamq").joinpath("py.typed").is_file()


def test_console_script_entry_point() -> None:
    """``pip install streamq`` puts a ``streamq`` command on PATH that runs ``cli.main``."""
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="streamq")
    assert entry.value == "streamq.cli:main"
    assert entry.load() is streamq.cli.main


def test_version_matches_distribution_metadata() -> None:
    """``streamq.__version__`` agrees with the installed distribution's version."""
    assert streamq.__version__ == importlib.metadata.version("streamq")


def test_server_errors_are_one_branch_of_the_tree() -> None:
    """The CLI maps ServerError to exit 3; ServerUnavailable stays a redis
    ConnectionError, so code that catches redis-py's errors still catches it."""
    for error in (streamq.ServerUnavailable, streamq.ServerTooOld, streamq.EmbeddedServerError):
        assert issubclass(error, streamq.ServerError)
    assert issubclass(streamq.ServerError, streamq.StreamqError)
    assert issubclass(streamq.ServerUnavailable, redis.exceptions.ConnectionError)
