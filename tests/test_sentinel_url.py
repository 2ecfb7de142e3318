"""Parsing ``redis+sentinel://`` URLs: what is accepted, and a clear ConfigError otherwise."""

from __future__ import annotations

import pytest

from streamq import ConfigError, Settings
from streamq.sentinel import parse_sentinel_url
from streamq.settings import mask_url


def test_a_sentinel_url_names_its_sentinels_service_database_and_credentials() -> None:
    url = "redis+sentinel://app:s3cret@10.0.0.1:26380,10.0.0.2,[::1]:5000/queues/2?sentinel_password=sp"
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 5000))
    assert (parsed.service, parsed.db, parsed.tls) == ("queues", 2, False)
    assert parsed.sentinel_password == "sp"
    # The data nodes are reached with the URL's user, password and database.
    assert parsed.node_url("10.0.0.9", 6380) == "redis://app:s3cret@10.0.0.9:6380/2"
    assert parse_sentinel_url("rediss+sentinel://h:1/m").node_url("n", 2) == "rediss://n:2/0"
    assert Settings(redis_url=url).redis_url == url
    shown = mask_url(url)
    assert "s3cret" not in shown and "=sp" not in shown


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel:///mymaster", "names no sentinel"),
        ("redis+sentinel://h:26379", "names no service"),
        ("redis+sentinel://h:26379/", "names no service"),
        ("redis+sentinel://h:99999/m", "sentinel port must be 1..65535"),
        ("redis+sentinel://h:x/m", "sentinel port must be 1..65535"),
        ("redis+sentinel://h:1,,h:2/m", "empty sentinel address"),
        ("redis+sentinel://h:1/m/zero", "database must be an integer"),
        ("redis+sentinel://h:1/m/0/extra", "more path than /service_name/db"),
        ("redis+sentinel://h:1/{m}", "service name"),
        ("redis+sentinel://h:1/m?ssl_certfile=/nonexistent", "TLS option: use a rediss://"),
        ("rediss+sentinel://h:1/m?ssl_ca_certs=/nonexistent", "not a file"),
    ],
)
def test_a_malformed_sentinel_url_is_a_config_error_saying_which_rule(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match="redis_url") as caught:
        Settings(redis_url=url)
    assert says in str(caught.value)
    assert "redis+sentinel://[user:pass@]host:port" in str(caught.value)


def test_a_sentinel_url_is_not_a_cluster() -> None:
    with pytest.raises(ConfigError, match="pick one"):
        Settings(redis_url="redis+sentinel://h:1/m", cluster=True)


def test_the_password_of_a_malformed_sentinel_url_is_masked() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(redis_url="redis+sentinel://u:hunter2@h:1/")
    assert "hunter2" not in str(caught.value)


def test_durable_settings_are_checked_and_read_from_the_environment() -> None:
    assert Settings.from_env({"STREAMQ_DURABLE": "1"}).durable is True
    assert Settings.from_env({"STREAMQ_DURABLE": "0"}).durable is False
    with pytest.raises(ConfigError, match="durable_replicas"):
        Settings(durable_replicas=0)
    with pytest.raises(ConfigError, match="durable_timeout_s"):
        Settings(durable_timeout_s=0)
