"""Settings: one frozen, validated record of everything an App is configured with.

Values come from keyword arguments first, then ``STREAMQ_*`` environment
variables, then defaults. Validation happens here, at the boundary, so a bad
option fails when the App is built rather than inside a running worker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio.connection import parse_url

from streamq.errors import ConfigError
from streamq.signing import check_keys, parse_env_keys

DEFAULT_PRIORITIES: tuple[str, ...] = ("high", "default", "low")
MAX_PARTITIONS = 1024
"""More partitions than this is a typo, not a design: each one costs every worker
two connections and a blocking read."""
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")  # no braces, colons or spaces: they shape keys


def check_name(kind: str, value: str) -> str:
    """Reject names that would break the key layout (hash tags, separators)."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigError(f"{kind} must match [A-Za-z0-9_.-]+, got {value!r}")
    return value


_QUERY_PASSWORD = re.compile(
    r"(?:(?<=[?&]password=)|(?<=[?&]ssl_password=)|(?<=[?&]sentinel_password=))[^&#]*"
)
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


def mask_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if sep:
        netloc, slash, tail = rest.partition("/")
        if "?" in netloc:  # redis://host?db=1: the query starts the tail
            netloc, question, query = netloc.partition("?")
            slash, tail = "", question + query + slash + tail
        userinfo, at, host = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if at and colon and password:
            netloc = f"{user}:***@{host}"
        url = f"{scheme}{sep}{netloc}{slash}{tail}"
    return _QUERY_PASSWORD.sub("***", url)


def check_redis_url(url: str) -> str:
    """Reject a URL redis-py cannot use, saying which rule it broke (password masked)."""
    shown = mask_url(url) if isinstance(url, str) else repr(url)

    def bad(rule: str) -> ConfigError:
        return ConfigError(f"redis_url {rule}, got {shown}")

    if not isinstance(url, str):
        raise bad("must be a string")
    if url.partition("://")[0].lower() in _SENTINEL_SCHEMES:
        from streamq.sentinel import parse_sentinel_url  # it imports this module

        parse_sentinel_url(url)
        return url
    parts = urlsplit(url)
    if parts.scheme in _CLUSTER_SCHEMES:  # a cluster's seed node: checked as its plain URL
        plain = _CLUSTER_SCHEMES[parts.scheme] + url[len(parts.scheme) :]
        try:
            check_redis_url(plain)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(mask_url(plain), shown)) from None
        return url
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise bad(
            "must start with redis://, rediss:// or unix:// (redis://host:6379/0), "
            "or redis+cluster:// naming any node of a Redis Cluster, "
            "or redis+sentinel://host:port[,host:port...]/service_name"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise bad("needs the socket's path (unix:///path/to/valkey.sock)")
    else:
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port is not None and not 1 <= port <= 65535:
            raise bad("port must be 1..65535")
    databases = parse_qs(parts.query).get("db", [])
    if parts.scheme != "unix" and unquote(parts.path).strip("/"):
        databases.append(unquote(parts.path).strip("/"))
    for db in databases:
        if not db.isdigit():
            raise bad(f"database must be an integer >= 0 (/0, ?db=0), not {db!r}")
    try:
        parse_url(url)
    except ValueError as exc:  # a query argument redis-py cannot parse
        raise bad(str(exc).rstrip(".")) from None
    check_tls_query(parts.scheme, parse_qs(parts.query), bad)
    return url


TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
"""URL query arguments naming a file (PEM) the TLS connection reads."""
TLS_OPTIONS = (
    *TLS_FILES, "ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_path", "ssl_ca_data",
    "ssl_password", "ssl_ciphers", "ssl_min_version", "ssl_include_verify_flags",
    "ssl_exclude_verify_flags",
)  # fmt: skip
"""The TLS options redis-py takes from a ``rediss://`` URL's query (its SSLConnection's)."""
_CERT_REQS = ("none", "optional", "required")


def check_tls_query(
    scheme: str, query: Mapping[str, list[str]], bad: Callable[[str], ConfigError]
) -> None:
    """TLS options belong to ``rediss://``, are spelled as redis-py spells them, and
    name files that exist: otherwise redis-py fails inside a connection attempt
    (a TypeError for a misspelt name) instead of here."""
    for name, values in query.items():
        if not name.startswith("ssl_"):
            continue
        if name not in TLS_OPTIONS:
            raise bad(f"has an unknown TLS option {name!r} (known: {', '.join(TLS_OPTIONS)})")
        if scheme != "rediss":
            raise bad(f"sets {name}, a TLS option: use a rediss:// URL for TLS")
        value = values[-1]
        if name in TLS_FILES and not os.path.isfile(value):
            raise bad(f"{name} names {value!r}, which is not a file")
        if name == "ssl_cert_reqs" and value.lower() not in _CERT_REQS:
            raise bad(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, not {value!r}")
    if "ssl_keyfile" in query and "ssl_certfile" not in query:
        raise bad("sets ssl_keyfile without ssl_certfile (the client certificate)")


@dataclass(frozen=True, slots=True)
class Settings:
    """An App's configuration. Durations carry their unit in the name."""

    redis_url: str | None = None
    """``None`` means the embedded valkey-server (see ``streamq.embedded``)."""
    prefix: str = "streamq"
    priorities: tuple[str, ...] = DEFAULT_PRIORITIES
    """Highest first."""
    result_ttl_s: float = 86_400.0
    """How long a finished job's hash (status, result, error) is kept."""
    events_maxlen: int | None = None
    """An explicit, approximate cap on the lifecycle events stream, applied by the
    janitor's trim (as ``retention_maxlen`` is for the priority streams). None:
    no count cap; the events stream is trimmed by ``retention_s`` only. Neither
    limit trims the last ``janitor.EVENTS_KEEP_S`` seconds of events."""
    max_payload_bytes: int = 1024 * 1024
    """Encoded arguments larger than this are refused at enqueue."""
    max_result_bytes: int = 1024 * 1024
    """A handler's encoded result larger than this fails its job (ResultTooLarge)."""
    max_pending: int | None = None
    """Backpressure: enqueue raises QueueFull once the queue holds this many unfinished
    jobs (unread + delivered-not-acked + delayed, over all priorities). None: no limit."""
    socket_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    """The bound on connecting to the server and on its answer to the first
    command: past it, connecting fails with ServerUnavailable instead of waiting."""
    max_connections: int = 64
    """Size of the connection pool; callers past it wait instead of failing."""
    max_retries: int = 3
    """Default for tasks that do not set their own."""
    task_timeout_s: float | None = 3600.0
    """Default handler timeout for tasks that set none; None: no limit. A bound
    by default, so a handler that hangs forever cannot hold a slot forever."""
    visibility_timeout_s: float = 300.0
    """A message pending this long without a heartbeat is reclaimed by another worker."""
    max_deliveries: int | None = None
    """Deliveries after which a message goes to the DLQ; None: the job's max_retries + 2."""
    janitor_interval_s: float = 1.0
    """How often the janitor promotes due delayed jobs and workers look for stuck ones."""
    consumer_idle_s: float = 3600.0
    """Consumers idle this long with nothing pending are removed from the group."""
    retention_s: float | None = 7 * 86_400.0
    """Acked history older than this is trimmed from the priority streams, and
    events older than this from the events stream (None: keep)."""
    retention_maxlen: int | None = None
    """Also trim each priority stream to about this many entries (None: no length
    limit; ``events_maxlen`` is the events stream's). Neither limit ever trims a
    pending or unread entry."""
    trim_interval_s: float = 10.0
    archive: str | None = None
    """A directory or fsspec URL (``pip install 'streamq[archive]'``) where the
    janitor copies history before retention trims it, and which ``Replay`` reads
    together with the live streams. None: trimmed history is gone."""
    archive_window_s: float = 3600.0
    """The archive's segments hold this much time each; history is trimmed only
    once its whole window is archived, so trimming may lag retention by one window."""
    lost_job_age_s: float = 3600.0
    """A job hash that is not final but whose message is gone (deleted or trimmed by
    hand, a delayed entry removed) is marked dead (``MessageLost``, with a TTL) by
    the janitor once its last change is this old. A live job is never marked."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    slot_ttl_s: float = 15.0
    """A concurrency slot (``concurrency=``, ``Limit(concurrency=)``) expires this long
    after its worker last renewed it (every third of it): a crashed worker's slots
    free within it."""
    signing_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    """Key id -> secret (>= 16 bytes) accepted on entries (``streamq.signing``); several
    for rotation. Env: ``STREAMQ_SIGNING_KEYS=kid1:base64secret,kid2:...``."""
    signing_key_id: str | None = None
    """The key producers sign every entry with (one of ``signing_keys``); None: no signing."""
    require_signatures: bool = False
    """Workers dead-letter entries without a valid signature instead of running them."""
    max_job_timeout_s: float = 86_400.0
    """The largest per-job ``timeout`` an entry may carry (``streamq.caps``)."""
    max_job_retries: int = 100
    """The largest per-job ``max_retries`` an entry may carry."""
    max_job_retry_interval_s: float = 7 * 86_400.0
    """The largest interval of a per-job ``retry_intervals`` schedule."""
    max_job_result_ttl_s: float = 30 * 86_400.0
    """The largest per-job ``result_ttl`` an entry may carry."""
    cluster: bool = False
    """Treat ``redis_url`` as any node of a Redis Cluster (as a ``redis+cluster://``
    URL does): the App then uses redis-py's cluster client (``streamq.cluster``)."""
    partitions: int = 1
    """Partitions of the queue (``streamq.partitions``): each its own hash tag and
    streams, so a hot queue spreads over a cluster's masters. 1: the plain layout."""
    durable: bool = False
    """After each enqueue, wait until ``durable_replicas`` replicas have the write
    (WAIT, and WAITAOF for the master's own fsync where it has AOF on and knows the
    command), or raise NotDurable (``streamq.durable``). Per call site:
    ``task.with_options(durable=...)``. Env: ``STREAMQ_DURABLE=1``."""
    durable_replicas: int = 1
    """How many replicas must confirm a durable enqueue."""
    durable_timeout_s: float = 1.0
    """How long a durable enqueue waits for them before raising NotDurable."""

    def __post_init__(self) -> None:
        if self.redis_url is not None:
            check_redis_url(self.redis_url)
        if self.cluster or (self.redis_url or "").partition("://")[0] in _CLUSTER_SCHEMES:
            from streamq.cluster import check_cluster_url  # it imports this module

            if self.redis_url is None:
                raise ConfigError("cluster=True needs a redis_url naming a node of the cluster")
            if self.redis_url.partition("://")[0].lower() in _SENTINEL_SCHEMES:
                raise ConfigError("cluster=True and a redis+sentinel:// URL: pick one")
            check_cluster_url(self.redis_url)
        check_name("prefix", self.prefix)
        if not self.priorities:
            raise ConfigError("priorities must name at least one priority")
        for name in self.priorities:
            check_name("priority", name)
        if len(set(self.priorities)) != len(self.priorities):
            raise ConfigError(f"priorities must be distinct, got {list(self.priorities)}")
        for name in (
            "result_ttl_s", "socket_timeout_s", "connect_timeout_s", "visibility_timeout_s",
            "janitor_interval_s", "consumer_idle_s", "trim_interval_s", "lost_job_age_s",
            "archive_window_s", "slot_ttl_s",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("max_payload_bytes", "max_result_bytes", "max_connections"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if self.retention_s is not None and not 0 <= self.retention_s < float("inf"):
            raise ConfigError(f"retention_s must be >= 0 or None, got {self.retention_s!r}")
        if self.events_maxlen is not None and (
            not isinstance(self.events_maxlen, int)
            or isinstance(self.events_maxlen, bool)
            or self.events_maxlen <= 0
        ):
            raise ConfigError(
                f"events_maxlen must be a positive integer or None, got {self.events_maxlen!r}"
            )
        if self.retention_maxlen is not None and (
            not isinstance(self.retention_maxlen, int) or self.retention_maxlen < 0
        ):
            raise ConfigError("retention_maxlen must be an integer >= 0 or None")
        if self.max_pending is not None and (
            not isinstance(self.max_pending, int) or self.max_pending < 1
        ):
            raise ConfigError(
                f"max_pending must be an integer >= 1 or None, got {self.max_pending!r}"
            )
        if self.task_timeout_s is not None and not 0 < self.task_timeout_s < float("inf"):
            raise ConfigError(
                f"task_timeout_s must be positive or None, got {self.task_timeout_s!r}"
            )
        if self.max_deliveries is not None and (
            not isinstance(self.max_deliveries, int) or self.max_deliveries < 1
        ):
            raise ConfigError(
                f"max_deliveries must be an integer >= 1, got {self.max_deliveries!r}"
            )
        self._check_signing_and_caps()
        if (
            not isinstance(self.partitions, int)
            or isinstance(self.partitions, bool)
            or not 1 <= self.partitions <= MAX_PARTITIONS
        ):
            raise ConfigError(
                f"partitions must be an integer from 1 to {MAX_PARTITIONS}, got {self.partitions!r}"
            )
        self._check_durable()

    def _check_durable(self) -> None:
        replicas = self.durable_replicas
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise ConfigError(f"durable_replicas must be an integer >= 1, got {replicas!r}")
        timeout = self.durable_timeout_s
        if not isinstance(timeout, int | float) or not 0 < timeout < float("inf"):
            raise ConfigError(f"durable_timeout_s must be positive seconds, got {timeout!r}")

    def _check_signing_and_caps(self) -> None:
        object.__setattr__(
            self,
            "signing_keys",
            check_keys(self.signing_keys, self.signing_key_id, self.require_signatures),
        )
        for name in ("max_job_timeout_s", "max_job_retry_interval_s", "max_job_result_ttl_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        retries = self.max_job_retries
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigError(f"max_job_retries must be an integer >= 0, got {retries!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``STREAMQ_*`` variables; explicit overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if url := env.get("STREAMQ_REDIS_URL"):
            values["redis_url"] = url
        if prefix := env.get("STREAMQ_PREFIX"):
            values["prefix"] = prefix
        if prios := env.get("STREAMQ_PRIORITIES"):
            values["priorities"] = tuple(p.strip() for p in prios.split(",") if p.strip())
        if ttl := env.get("STREAMQ_RESULT_TTL"):
            values["result_ttl_s"] = _number("STREAMQ_RESULT_TTL", ttl)
        if retention := env.get("STREAMQ_RETENTION"):
            values["retention_s"] = _number("STREAMQ_RETENTION", retention)
        if vis := env.get("STREAMQ_VISIBILITY_TIMEOUT"):
            values["visibility_timeout_s"] = _number("STREAMQ_VISIBILITY_TIMEOUT", vis)
        if archive := env.get("STREAMQ_ARCHIVE"):
            values["archive"] = archive
        if connect := env.get("STREAMQ_CONNECT_TIMEOUT"):
            values["connect_timeout_s"] = _number("STREAMQ_CONNECT_TIMEOUT", connect)
        values.update(_signing_env(env))
        if (cluster := env.get("STREAMQ_CLUSTER")) is not None and cluster.strip():
            values["cluster"] = cluster.strip().lower() in ("1", "true", "yes", "on")
        if (parts := env.get("STREAMQ_PARTITIONS")) is not None and parts.strip():
            try:
                values["partitions"] = int(parts)
            except ValueError:
                raise ConfigError(f"STREAMQ_PARTITIONS must be an integer, got {parts!r}") from None
        if (durable := env.get("STREAMQ_DURABLE")) is not None and durable.strip():
            values["durable"] = durable.strip().lower() in ("1", "true", "yes", "on")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "priorities" in values:
            values["priorities"] = tuple(values["priorities"])
        return cls(**values)

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _signing_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``STREAMQ_SIGNING_KEYS``, ``STREAMQ_SIGNING_KEY_ID``, ``STREAMQ_REQUIRE_SIGNATURES``."""
    values: dict[str, Any] = {}
    if keys := env.get("STREAMQ_SIGNING_KEYS"):
        values["signing_keys"] = parse_env_keys(keys)
    if key_id := env.get("STREAMQ_SIGNING_KEY_ID"):
        values["signing_key_id"] = key_id
    if required := env.get("STREAMQ_REQUIRE_SIGNATURES"):
        flag = required.strip().lower()
        if flag not in ("1", "true", "yes", "0", "false", "no"):
            raise ConfigError(
                f"STREAMQ_REQUIRE_SIGNATURES must be 1/true/yes or 0/false/no, got {required!r}"
            )
        values["require_signatures"] = flag in ("1", "true", "yes")
    return values


def _number(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
