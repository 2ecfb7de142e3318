"""``streamq doctor`` on a partitioned queue (``streamq.partitions``).

The plain checks look at partition 0 (the queue's own hash tag). These add:
the configured count and the high-water mark (and what partitions beyond the
count still hold), the consumer group of every partition's streams, the key
types of partitions 1 and up, and in cluster mode which master holds each
partition, with a warning when every partition lands on one master of a
multi-master cluster (a partitioned queue then scales no further than one).

Read-only, like the other checks: the mark is read, never recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import RedisError, ResponseError

from streamq.doctor import Check, Status, check_key_types
from streamq.keys import GROUP
from streamq.partitions import read_mark, unfinished

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster

    from streamq.app import App


async def check_partitions(app: App) -> list[Check]:
    """The partition checks; none for a queue that never had more than one partition."""
    root = app.root
    try:
        mark = await read_mark(root)
    except RedisError as exc:
        return [Check("partitions", Status.WARN, f"cannot read the high-water mark: {exc}",
                      "grant +zscore so doctor can check")]  # fmt: skip
    count = max(root.partitions, mark)
    if count <= 1:
        return []
    views = [root.partition(i) for i in range(count)]
    beyond: dict[int, dict[str, int]] = {}
    for view in views[root.partitions :]:
        try:
            held = await unfinished(view)
        except ResponseError:  # a wrong-typed key: "partition keys" names it
            continue
        if any(held.values()):
            beyond[view.partition_index] = held
    checks = [
        check_count(root.partitions, mark, beyond),
        await _check_groups(views),
        await _check_keys(views[1:]),
    ]
    if root.is_cluster:
        checks.append(await _check_placement(root, views))
    return checks


def check_count(configured: int, mark: int, beyond: Mapping[int, Mapping[str, int]]) -> Check:
    """The configured count, the mark, and partitions beyond the count still holding jobs."""
    covered = max(configured, mark)
    detail = (
        f"configured {configured}; high-water mark {mark or 'not recorded yet'}; "
        f"workers and tools cover {covered}"
    )
    if beyond:
        held = "; ".join(
            f"partition {i}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
            for i, counts in sorted(beyond.items())
        )
        return Check(
            "partitions", Status.WARN,
            f"{detail}; partitions beyond the configured count still hold jobs ({held})",
            "keep workers running (they drain every partition up to the mark), then "
            "`streamq queue partitions APP --reset`",
        )  # fmt: skip
    if mark > configured:
        return Check(
            "partitions", Status.WARN,
            f"{detail}; partitions {configured} to {mark - 1} are empty but still read",
            "`streamq queue partitions APP --reset` lowers the mark to the configured count",
        )  # fmt: skip
    return Check("partitions", Status.OK, detail)


async def _check_groups(views: list[App]) -> Check:
    """Every existing stream of every partition has the workers' group."""
    missing: list[str] = []
    try:
        for view in views:
            redis = await view.redis()
            for stream in view.streams:
                if not await redis.exists(stream):
                    continue
                try:
                    groups: list[dict[str, Any]] = await redis.xinfo_groups(stream)
                except ResponseError:
                    groups = []
                if not any(g["name"] in (GROUP, GROUP.encode()) for g in groups):
                    length = int(await redis.xlen(stream))
                    missing.append(f"{stream} ({length} entries)")
    except RedisError as exc:
        return Check("partition groups", Status.WARN, f"cannot read the groups: {exc}",
                     "grant +xinfo +exists +xlen so doctor can check")  # fmt: skip
    if missing:
        return Check(
            "partition groups", Status.WARN,
            f"no worker has read these streams yet (no group {GROUP!r}): {', '.join(missing)}",
            "start a worker without --partitions (it reads every partition), or make the "
            "workers' --partitions assignments cover every partition",
        )  # fmt: skip
    return Check(
        "partition groups", Status.OK,
        f"every existing stream of the {len(views)} partitions has the group {GROUP!r}",
    )  # fmt: skip


async def _check_keys(views: list[App]) -> Check:
    """``doctor.check_key_types`` on partitions 1 and up (partition 0 is ``keys``)."""
    total = 0
    for view in views:
        found = await check_key_types(await view.node_redis(), view.keys)
        if found.status is not Status.OK:
            return Check(
                "partition keys", found.status,
                f"partition {view.partition_index}: {found.detail}", found.fix,
            )  # fmt: skip
        total += int(found.detail.split(" ", 1)[0])
    return Check(
        "partition keys", Status.OK,
        f"{total} keys in partitions 1 to {len(views)}, each of the type streamq keeps there",
    )  # fmt: skip


async def _check_placement(root: App, views: list[App]) -> Check:
    from streamq.cluster import cluster_state

    router = cast("RedisCluster", await root.redis())
    places: dict[int, str] = {}
    for view in views:
        node = router.get_node_from_key(view.keys.events)
        places[view.partition_index] = node.name if node is not None else "none"
    state = await cluster_state(router)
    return check_placement(places, state.masters)


def check_placement(places: Mapping[int, str], masters: int) -> Check:
    """Which master holds each partition; a warning when several partitions of a
    multi-master cluster all land on one master."""
    by_node: dict[str, list[int]] = {}
    for index, node in sorted(places.items()):
        by_node.setdefault(node, []).append(index)
    detail = "; ".join(
        f"{node}: partition{'s' if len(parts) > 1 else ''} {', '.join(map(str, parts))}"
        for node, parts in sorted(by_node.items())
    )
    used = f"{len(by_node)} of {masters} masters"
    if masters > 1 and len(places) > 1 and len(by_node) == 1:
        return Check(
            "partition placement", Status.WARN,
            f"all {len(places)} partitions are on one master ({detail}): the queue "
            f"scales no further than that master",
            "move some partitions' slots to other masters (valkey-cli --cluster reshard, or "
            "CLUSTER SETSLOT), or change the partition count",
        )  # fmt: skip
    return Check("partition placement", Status.OK, f"{used} hold the partitions ({detail})")
