"""Entry point for one peer's adapter: ``python adapter.py bench_<peer> <command> ...``.

The adapter module is imported by its own name (never run as ``__main__``), so
task names that a library derives from the module path are the same in the
producer and in the worker.
"""

import sys

from _common import main

if __name__ == "__main__":
    sys.exit(main())
