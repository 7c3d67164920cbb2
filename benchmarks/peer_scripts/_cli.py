"""Argument parsing and output shared by the peer scripts (standard library only)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument(
        "--workload", required=True, choices=["version", "setup", "enqueue-single", "enqueue-bulk", "throughput"]
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    return parser.parse_args()


def emit(**data: Any) -> None:
    print(json.dumps(data), flush=True)
    sys.exit(0)
