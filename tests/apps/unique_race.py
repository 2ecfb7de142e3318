"""A producer for the unique-key race: enqueue one job per key, as fast as it can.

argv: queue name, number of keys. Prints one JSON line: {"jobs": {key: job id}}.
Started twice at once by tests/test_unique.py; both must get the same job per key.
"""

from __future__ import annotations

import json
import sys

import anyio

from streamq import App


async def main(queue: str, keys: int) -> None:
    app = App(queue)

    @app.task(name="unique.work")
    async def work(n: int) -> None: ...

    async with app:
        await app.redis()
        print(json.dumps({"ready": True}), flush=True)  # noqa: T201 - the test waits for it
        sys.stdin.readline()  # both producers start together
        jobs = {}
        for n in range(keys):
            job = await work.with_options(key=f"k{n}").enqueue(n)
            jobs[f"k{n}"] = job.id
        print(json.dumps({"jobs": jobs}), flush=True)  # noqa: T201 - the result


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]))
