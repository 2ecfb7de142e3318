"""Settings: environment variables, overrides and validation at the boundary."""

from __future__ import annotations

import pytest

from streamq import ConfigError, Settings
from streamq.settings import mask_url


def test_from_env_reads_streamq_variables() -> None:
    settings = Settings.from_env(
        {
            "STREAMQ_REDIS_URL": "redis://127.0.0.1:6399/0",
            "STREAMQ_PREFIX": "jobs",
            "STREAMQ_PRIORITIES": "urgent, normal ,bulk",
            "STREAMQ_RESULT_TTL": "60",
        }
    )
    assert settings.redis_url == "redis://127.0.0.1:6399/0"
    assert settings.prefix == "jobs"
    assert settings.priorities == ("urgent", "normal", "bulk")
    assert settings.result_ttl_s == 60


def test_explicit_values_win_over_the_environment() -> None:
    settings = Settings.from_env({"STREAMQ_REDIS_URL": "redis://a"}, redis_url="redis://b")
    assert settings.redis_url == "redis://b"


def test_no_url_means_embedded() -> None:
    assert Settings.from_env({}).redis_url is None


@pytest.mark.parametrize(
    "env",
    [{"STREAMQ_RESULT_TTL": "soon"}, {"STREAMQ_RESULT_TTL": "-1"}, {"STREAMQ_PREFIX": "a b"}],
)
def test_bad_environment_is_a_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1",
        "redis://:secret@localhost:6380/15",
        "redis://user:secret@localhost:6380?db=3",
        "rediss://cache.example:6380/1",
        "unix:///run/valkey/valkey.sock",
        "unix:///run/valkey/valkey.sock?db=2",
    ],
)
def test_redis_urls_redis_py_understands_are_accepted(url: str) -> None:
    assert Settings(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0", "must start with redis://, rediss:// or unix://"),
        ("garbage", "must start with redis://, rediss:// or unix://"),
        ("redis://127.0.0.1:99999/0", "port must be 1..65535"),
        ("redis://127.0.0.1:0/0", "port must be 1..65535"),
        ("redis://127.0.0.1:port/0", "port must be 1..65535"),
        ("redis://127.0.0.1:6379/first", "database must be an integer >= 0"),
        ("redis://127.0.0.1:6379/-1", "database must be an integer >= 0"),
        ("redis://127.0.0.1:6379?db=x", "database must be an integer >= 0"),
        ("unix://", "needs the socket's path"),
        ("redis://127.0.0.1:6379/0?socket_timeout=soon", "'socket_timeout'"),
    ],
)
def test_a_bad_redis_url_is_a_config_error_that_says_why(url: str, message: str) -> None:
    """Checked when the settings are built, not on the first command: a typo in
    ``$STREAMQ_REDIS_URL`` fails at once, with the rule it broke."""
    with pytest.raises(ConfigError, match="redis_url") as caught:
        Settings(redis_url=url)
    assert message in str(caught.value)


def test_the_password_is_masked_in_url_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"STREAMQ_REDIS_URL": "redis://app:hunter2@db.internal:70000/0"})
    assert "hunter2" not in str(caught.value)
    assert "redis://app:***@db.internal:70000/0" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://app:hunter2@db:6379/0", "redis://app:***@db:6379/0"),
        ("redis://:hunter2@db:6379", "redis://:***@db:6379"),
        ("unix://:hunter2@/run/v.sock?db=1", "unix://:***@/run/v.sock?db=1"),
        ("redis://db:6379/0?password=hunter2&db=1", "redis://db:6379/0?password=***&db=1"),
        ("redis://app@db:6379/0", "redis://app@db:6379/0"),
        ("unix:///run/v.sock", "unix:///run/v.sock"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_connect_timeout_comes_from_the_environment_and_must_be_positive() -> None:
    assert Settings().connect_timeout_s == 5.0
    assert Settings.from_env({"STREAMQ_CONNECT_TIMEOUT": "0.5"}).connect_timeout_s == 0.5
    with pytest.raises(ConfigError, match="connect_timeout_s must be positive"):
        Settings(connect_timeout_s=0)
    with pytest.raises(ConfigError, match="STREAMQ_CONNECT_TIMEOUT"):
        Settings.from_env({"STREAMQ_CONNECT_TIMEOUT": "soon"})
