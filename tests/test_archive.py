"""The archive: segments that round-trip byte-exact, exports that re-export and never
skip (whatever kills them when), reads that open only what they need, and one
history from the archive and the live stream.

Streams here get entries with explicit ids (``XADD key <ms>-<seq>``), so which
time window, hence which segment, an entry falls into is decided by the test.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import cast

import anyio
import pytest
from redis.asyncio import Redis

from streamq import App, ConfigError
from streamq.archive import Archive, FormatError, archive_before_trim, history
from streamq.archive.format import INDEX
from tests.apps.process import python_child
from tests.conftest import subprocess_env

pytestmark = pytest.mark.anyio

HOUR_MS = 3_600_000
BASE_MS = 1_762_000_000_000 - 1_762_000_000_000 % HOUR_MS
"""A UTC hour boundary in November 2025."""
Entry = tuple[str, dict[bytes, bytes]]


def entries_over(hours: int, per_hour: int, start_ms: int = BASE_MS) -> list[Entry]:
    """``per_hour`` entries in each of ``hours`` hours, ids increasing."""
    step = HOUR_MS // per_hour
    return [
        (f"{start_ms + h * HOUR_MS + i * step}-{i % 3}", {b"n": str(h * per_hour + i).encode()})
        for h in range(hours)
        for i in range(per_hour)
    ]


async def add(redis: Redis, key: str, entries: list[Entry]) -> None:
    for i in range(0, len(entries), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for entry_id, fields in entries[i : i + 1000]:
                pipe.xadd(key, cast(dict[bytes | str, bytes | str | int | float], fields), entry_id)
            await pipe.execute()


async def live(redis: Redis, key: str) -> list[Entry]:
    found: list[Entry] = []
    start = "-"
    while True:
        page = await redis.xrange(key, start, "+", count=1000)
        found += [(entry_id.decode(), fields) for entry_id, fields in page]
        if len(page) < 1000:
            return found
        start = "(" + page[-1][0].decode()


def temporaries(location: Path) -> list[Path]:
    return [path for path in location.rglob("*") if path.name.startswith(".partial-")]


def age(paths: list[Path], hours: float) -> None:
    then = time.time() - hours * 3600
    for path in paths:
        os.utime(path, (then, then))


def just_after(entry_id: str) -> str:
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


async def read_all(archive: Archive, key: str, start: str = "-", end: str = "+") -> list[Entry]:
    return await anyio.to_thread.run_sync(lambda: list(archive.read(key, start, end)))


async def export_all(archive: Archive, redis: Redis, key: str, until: str = "+") -> int:
    total = 0
    for _ in range(1000):
        result = await archive.export(redis, key, until)
        total += result.entries
        if result.done:
            return total
    raise AssertionError("export never finished")


async def test_round_trip_is_byte_exact(app: App, tmp_path: Path) -> None:
    redis = await app.redis()
    key = app.keys.events
    odd: list[Entry] = [
        (f"{BASE_MS}-1", {b"payload": b"\x80\x81\xfe\xff\x00binary", b"ct": b"msgpack"}),
        (f"{BASE_MS}-2", {b"text": "héllo ✓ 𝄞 日本".encode(), b"empty": b"", b"nul": b"a\x00b"}),
        (f"{BASE_MS}-3", {b"\xff\xfename": b"value", b"ok": b"\xc3\x28"}),  # a name not UTF-8
        (f"{BASE_MS}-4", {b"json": b'{"a": [1, "\\u00e9", null]}', b"lone": b"\xed\xa0\x80"}),
        (f"{BASE_MS + 1}-0", {f"f{i}".encode(): bytes([i]) * i for i in range(256)}),
        (f"{BASE_MS + 2}-0", {b"big": bytes(range(256)) * 4000}),
    ]
    await add(redis, key, odd)
    archive = Archive(tmp_path / "archive")

    assert await export_all(archive, redis, key) == len(odd)

    assert await read_all(archive, key) == await live(redis, key) == odd
    # A person can read a segment with zcat: JSON lines, text as text.
    [segment] = archive.segments(key)
    path = tmp_path / "archive" / archive.directory(key) / segment.name
    lines = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    assert lines[1] == {
        "id": f"{BASE_MS}-2",
        "fields": {"text": "héllo ✓ 𝄞 日本", "empty": "", "nul": "a\x00b"},
    }
    assert lines[0]["fields"]["payload"] == {"b64": "gIH+/wBiaW5hcnk="}
    assert "pairs" in lines[2]
    assert segment.count == len(odd) and segment.first == f"{BASE_MS}-1"


async def test_export_is_idempotent_and_continues_from_the_watermark(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = await app.redis()
    key = app.keys.events
    first = entries_over(hours=3, per_hour=50)
    await add(redis, key, first)
    archive = Archive(tmp_path)

    result = await archive.export(redis, key)
    assert (result.entries, len(result.segments), result.done) == (150, 3, True)
    assert result.watermark == first[-1][0] == archive.watermark(key)
    again = await archive.export(redis, key)
    assert (again.entries, again.segments, again.watermark) == (0, [], first[-1][0])

    more = entries_over(hours=1, per_hour=20, start_ms=BASE_MS + 3 * HOUR_MS)
    await add(redis, key, more)
    third = await archive.export(redis, key)
    assert (third.entries, len(third.segments)) == (20, 1)
    assert await read_all(archive, key) == first + more
    status = archive.status(key)
    assert (status.entries, status.unindexed, status.oldest) == (170, 0, first[0][0])

    # Nothing new: no listing (object stores bill LISTs; the janitor calls often).
    listings: list[str] = []
    original = archive.store.list
    monkeypatch.setattr(archive.store, "list", lambda d: listings.append(d) or original(d))
    assert (await archive.export(redis, key)).entries == 0
    assert listings == []
    # Another writer moved the watermark on: this one finds out, and repeats nothing.
    latest = entries_over(hours=1, per_hour=10, start_ms=BASE_MS + 4 * HOUR_MS)
    await add(redis, key, latest)
    assert (await Archive(tmp_path).export(redis, key)).entries == 10
    result = await archive.export(redis, key)
    assert (result.entries, result.watermark) == (0, latest[-1][0])
    assert listings, "a stale watermark was trusted"
    assert await read_all(archive, key) == first + more + latest


async def test_one_call_is_bounded_and_whole_windows_wait_for_their_end(
    app: App, tmp_path: Path
) -> None:
    redis = await app.redis()
    key = app.keys.events
    entries = entries_over(hours=2, per_hour=300)
    await add(redis, key, entries)
    archive = Archive(tmp_path)

    step = await archive.export(redis, key, max_entries=250)
    assert (step.entries, step.done, step.watermark) == (250, False, entries[249][0])
    # Up to the middle of the second hour, whole windows only: the first hour's rest.
    middle = entries[450][0]
    step = await archive.export(redis, key, middle, whole_windows=True)
    assert (step.entries, step.done, step.watermark) == (50, True, entries[299][0])
    assert [s.count for s in archive.segments(key)] == [250, 50]
    step = await archive.export(redis, key, "(" + middle)
    assert (step.entries, step.watermark) == (150, entries[449][0])
    assert await read_all(archive, key) == entries[:450]


async def test_a_read_opens_only_the_segments_overlapping_its_range(
    app: App, tmp_path: Path
) -> None:
    redis = await app.redis()
    key = app.keys.events
    entries = entries_over(hours=5, per_hour=40)
    await add(redis, key, entries)
    archive = Archive(tmp_path)
    await export_all(archive, redis, key)
    segments = archive.segments(key)
    assert len(segments) == 5
    assert [(s.first, s.last, s.count) for s in segments] == [
        (entries[h * 40][0], entries[h * 40 + 39][0], 40) for h in range(5)
    ]
    index = json.loads((tmp_path / archive.directory(key) / INDEX).read_text())
    assert [s["name"] for s in index["segments"]] == [s.name for s in segments]

    # The range [hour 1 + 10th entry, hour 2 + 5th entry] overlaps hours 1 and 2 only.
    start, end = entries[50][0], entries[85][0]
    assert [s.name for s in archive.segments(key, start, end)] == [
        segments[1].name,
        segments[2].name,
    ]
    # Proof that the others are not opened: damage them, and the range still reads.
    for other in (segments[0], segments[3], segments[4]):
        (tmp_path / archive.directory(key) / other.name).write_bytes(b"not gzip")
    assert await read_all(archive, key, start, end) == entries[50:86]
    assert await read_all(archive, key, "(" + start, "(" + end) == entries[51:85]
    with pytest.raises(FormatError, match="damaged"):
        await read_all(archive, key)


async def test_a_segment_the_index_does_not_list_is_found_and_used(
    app: App, tmp_path: Path
) -> None:
    redis = await app.redis()
    key = app.keys.events
    entries = entries_over(hours=3, per_hour=30)
    await add(redis, key, entries)
    archive = Archive(tmp_path)
    await export_all(archive, redis, key)
    index_path = tmp_path / archive.directory(key) / INDEX
    index = json.loads(index_path.read_text())
    index["segments"] = index["segments"][:1]  # as if a crash came after two segments' writes
    index_path.write_text(json.dumps(index))

    status = archive.status(key)
    assert (len(status.segments), status.unindexed, status.entries) == (3, 2, None)
    assert archive.watermark(key) == entries[-1][0]
    assert await read_all(archive, key) == entries
    assert (await archive.export(redis, key)).entries == 0, "re-exported what was there"

    index_path.write_text("{torn")  # a damaged index is only a cache
    assert await read_all(archive, key) == entries
    assert archive.rebuild_index(key).entries == 90
    assert archive.status(key).unindexed == 0
    index_path.unlink()
    assert archive.status(key).entries is None
    assert archive.indexed(key).entries == 90


async def test_overlapping_segments_yield_each_entry_once(app: App, tmp_path: Path) -> None:
    """Two exports at once (the CLI beside the janitor) may write the same entries twice."""
    redis = await app.redis()
    key = app.keys.events
    entries = entries_over(hours=2, per_hour=100)
    await add(redis, key, entries)
    one, other = Archive(tmp_path / "one"), Archive(tmp_path / "other")
    await one.export(redis, key, entries[149][0])
    await other.export(redis, key, entries[60][0])
    await other.export(redis, key)
    for segment in other.segments(key):
        source = tmp_path / "other" / other.directory(key) / segment.name
        target = tmp_path / "one" / one.directory(key) / segment.name
        target.write_bytes(source.read_bytes())
    assert len(one.segments(key)) == 5
    assert await read_all(one, key) == entries
    assert await read_all(one, key, entries[110][0], entries[160][0]) == entries[110:161]


@pytest.mark.parametrize("stop", ["index", "segment", "none"])
async def test_a_kill_in_the_middle_of_an_export_loses_and_repeats_nothing(
    app: App, tmp_path: Path, redis_url: str, stop: str
) -> None:
    redis = await app.redis()
    key = app.keys.events
    # 30,000 entries over 6 windows of 10 minutes; the child writes 2,000 per call.
    entries = [
        (f"{BASE_MS + i * 120}-0", {b"n": str(i).encode(), b"pad": b"x" * (i % 50)})
        for i in range(30_000)
    ]
    await add(redis, key, entries)
    location = str(tmp_path / "archive")
    args = ["-m", "tests.apps.archive_export", redis_url, key, location, "600", stop]
    async with python_child(args, subprocess_env(redis_url)) as child:
        expected = "stopped" if stop != "none" else "call "
        await child.wait_for_line(lambda line: line.startswith(expected), 60, expected)
        child.signal(signal.SIGKILL)
        assert await child.wait(10) == -signal.SIGKILL, child.output()
    archive = Archive(location, window_s=600)
    before = archive.status(key)
    if stop == "index":  # the first segment is in place, and no index names it
        assert (len(before.segments), before.unindexed) == (1, 1)
        assert before.watermark is not None
    if stop == "segment":  # a temporary file only
        assert before.segments == []
        assert temporaries(Path(location)), "the child was not writing a segment"
    if stop == "none":  # killed after its first call, somewhere in a later one
        assert before.watermark is not None

    age(temporaries(Path(location)), hours=2)  # the next export removes stale ones
    while not (await archive.export(redis, key, max_entries=7_000)).done:
        pass

    assert await read_all(archive, key) == entries
    status = archive.status(key)
    assert status.entries == 30_000 and status.unindexed == 0
    assert not temporaries(Path(location))
    # Contiguous: each segment starts right after the previous one ends.
    ids = [entry_id for entry_id, _ in entries]
    for previous, following in zip(status.segments, status.segments[1:], strict=False):
        assert ids.index(following.first) == ids.index(previous.last) + 1


async def test_an_fsspec_url_holds_an_archive(app: App) -> None:
    pytest.importorskip("fsspec")
    redis = await app.redis()
    key = app.keys.stream("default")
    entries = entries_over(hours=2, per_hour=10)
    entries[3] = (entries[3][0], {b"payload": b"\xff\x00"})
    await add(redis, key, entries)
    url = f"memory://streamq-test-{uuid.uuid4().hex}/archive"
    archive = Archive(url)

    assert await export_all(archive, redis, key) == 20
    assert await export_all(archive, redis, key) == 0
    assert await read_all(archive, key) == entries
    assert await read_all(archive, key, entries[12][0]) == entries[12:]
    status = archive.status(key)
    assert (len(status.segments), status.entries, status.unindexed) == (2, 20, 0)
    assert status.directory == f"streamq/{app.name}/stream/default"
    assert Archive(url).watermark(key) == entries[-1][0]


async def test_a_url_without_fsspec_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)
    monkeypatch.setitem(sys.modules, "fsspec.core", None)
    with pytest.raises(ConfigError, match=r"pip install 'streamq\[archive\]'"):
        Archive("s3://bucket/history")
    Archive("/tmp/local-needs-no-fsspec")  # a path does not import it


async def test_a_url_nothing_can_open_is_a_config_error() -> None:
    pytest.importorskip("fsspec")
    with pytest.raises(ConfigError, match="nosuchprotocol"):
        Archive("nosuchprotocol://x/y")


async def test_stream_directories_cannot_escape_the_location(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    assert archive.directory("streamq:{..}:stream:a/b") == "streamq/%2E./stream/a%2Fb"
    assert archive.directory("p:{q}:dlq") == "p/q/dlq"
    assert archive.directory("not-a-streamq-key") == "_keys/not-a-streamq-key"


async def test_trimming_at_the_safe_cut_keeps_one_history(app: App, tmp_path: Path) -> None:
    redis = await app.redis()
    key = app.keys.events
    entries = entries_over(hours=4, per_hour=100)
    await add(redis, key, entries)
    archive = Archive(tmp_path)

    # The retention cut falls in the third hour: whole windows export hours 1 and 2.
    cut = entries[250][0]
    safe = await archive_before_trim(archive, redis, key, cut)
    assert archive.watermark(key) == entries[199][0]
    assert safe == just_after(entries[199][0]), "trim up to just after the watermark"
    await redis.xtrim(key, minid=safe)
    assert (await live(redis, key))[0][0] == entries[200][0]

    joined = [entry async for entry in history(redis, archive, key)]
    assert joined == entries
    ranged = [
        entry async for entry in history(redis, archive, key, entries[150][0], entries[260][0])
    ]
    assert ranged == entries[150:261]
    assert [e async for e in history(redis, None, key)] == entries[200:]

    # Without holding for whole windows, up to the cut; nothing archived: 0-0.
    safe = await archive_before_trim(archive, redis, key, cut, whole_windows=False)
    assert safe == just_after(entries[249][0]) and archive.watermark(key) == entries[249][0]
    empty = Archive(tmp_path / "empty")
    assert await archive_before_trim(empty, redis, key, "1-0") == "0-0"


async def test_a_trim_between_pages_of_history_skips_and_repeats_nothing(
    app: App, tmp_path: Path
) -> None:
    redis = await app.redis()
    key = app.keys.events
    entries = entries_over(hours=3, per_hour=100)
    await add(redis, key, entries)
    archive = Archive(tmp_path)
    await archive.export(redis, key)

    seen: list[Entry] = []
    async for entry in history(redis, archive, key, page=25):
        seen.append(entry)
        if len(seen) == 30:  # the reader is in live entries: trim past where it is
            await redis.xtrim(key, minid=entries[240][0])
    assert seen == entries
    await redis.delete(key)  # the stream gone: all from the archive
    assert [e async for e in history(redis, archive, key, entries[5][0])] == entries[5:]


async def test_contains_finds_one_jobs_entries_in_archive_and_live_alike(
    app: App, tmp_path: Path
) -> None:
    redis = await app.redis()
    key = app.keys.events
    jobs = ["4f1c2a", 'odd "id" \\ é', "other"]
    entries: list[Entry] = [
        (f"{BASE_MS + i * 1000}-0", {b"kind": b"started", b"job": jobs[i % 3].encode()})
        for i in range(60)
    ]
    entries.append((f"{BASE_MS + 60_000}-0", {b"payload": b"\xff4f1c2a"}))  # binary: not text
    entries.append((f"{BASE_MS + 61_000}-0", {b"note": b"about 4f1c2a and more"}))
    await add(redis, key, entries)
    archive = Archive(tmp_path)
    await archive.export(redis, key, entries[40][0])  # the first 41 archived
    await redis.xtrim(key, minid=entries[30][0])  # and 30 of them trimmed

    for job in jobs:
        expected = [e for e in entries[:60] if e[1][b"job"] == job.encode()]
        archived = [e for e in expected if id_key_of(e) <= id_key_of(entries[40])]
        assert await read_all_containing(archive, key, job) == archived
        found = [e async for e in history(redis, archive, key, contains=job)]
        if job == jobs[0]:
            expected.append(entries[-1])
        assert found == expected, job


def id_key_of(entry: Entry) -> tuple[int, int]:
    ms, seq = entry[0].split("-")
    return int(ms), int(seq)


async def read_all_containing(archive: Archive, key: str, text: str) -> list[Entry]:
    return await anyio.to_thread.run_sync(lambda: list(archive.read(key, contains=text)))
