"""Compatibility tests never pass silently: pytest runs on a small test file, in process.

Without a matrix server's binary (Redis 7.0, Valkey 8) its tests are skipped
and the summary says so loudly (or, under its STREAMQ_REQUIRE_* variable, they
fail); asking for a session on a server that is not there is a usage error,
not a quiet Valkey 9 run.
"""

from __future__ import annotations

import pytest

from tests.compat.plugin import SERVERS, CompatServer

pytest_plugins = ["pytester"]

CONFTEST = """
pytest_plugins = ["tests.compat.plugin"]
"""
NEEDS = """
from tests.compat.plugin import SERVERS, require

def test_needs_the_server():
    require(SERVERS[{key!r}])
"""


@pytest.fixture(params=list(SERVERS.values()), ids=lambda s: s.key)
def compat(request: pytest.FixtureRequest) -> CompatServer:
    server: CompatServer = request.param
    return server


@pytest.fixture
def project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, compat: CompatServer
) -> pytest.Pytester:
    for name in ("STREAMQ_TEST_SERVER", "STREAMQ_TEST_SERVER_BIN", compat.require_env):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(compat.path_env, str(pytester.path / "no-such-server"))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_needs=NEEDS.format(key=compat.key))
    return pytester


def test_without_the_server_the_tests_are_not_run_loudly(
    project: pytest.Pytester, compat: CompatServer
) -> None:
    result = project.runpytest_inprocess("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            f"*{compat.not_run}: 1*",
            f"*streamq was not tested against {compat.name} (install it: apt-get install*",
            "*1 test(s) did not run: no */no-such-server.*",
        ]
    )


def test_ci_fails_without_the_server(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, compat: CompatServer
) -> None:
    monkeypatch.setenv(compat.require_env, "1")
    result = project.runpytest_inprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{compat.not_run}*{compat.require_env} is set*"])


def test_a_session_on_a_missing_server_is_a_usage_error(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, compat: CompatServer
) -> None:
    monkeypatch.setenv("STREAMQ_TEST_SERVER", compat.key)
    result = project.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*STREAMQ_TEST_SERVER={compat.key} but no */no-such-server*"])
