"""Loaded by every Python process started with this directory on PYTHONPATH: see bench/redis_count.py."""

import os
import sys

if os.environ.get("BENCH_REDIS_COUNT_DIR"):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        import redis_count

        redis_count.install(os.environ["BENCH_REDIS_COUNT_DIR"])
    finally:
        sys.path.pop()
