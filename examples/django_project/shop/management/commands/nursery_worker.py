"""``manage.py nursery_worker ARGS...``: nursery-worker's CLI in a process where Django is set up.

    python manage.py nursery_worker run --app examples.django_project.jobs:app --queues receipts
    python manage.py nursery_worker jobs list --app examples.django_project.jobs:app

It takes the same arguments as ``nursery-worker`` (``--help`` included) and exits as it does.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


def run_cli(args: list[str]) -> None:
    """Run ``python -m nursery_worker ARGS`` in this process (so the tasks see Django set up)."""
    sys.argv = ["nursery-worker", *args]
    runpy.run_module("nursery_worker", run_name="__main__", alter_sys=True)


class Command(BaseCommand):
    help = "Run nursery-worker's CLI (run, migrate, status, jobs ...) with this project's settings loaded."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="nursery-worker's command and its options")

    def run_from_argv(self, argv: list[str]) -> None:
        # Everything after the command's name goes to nursery-worker's own parser, options included.
        run_cli(argv[2:])

    def handle(self, *args: Any, **options: Any) -> None:
        # call_command("nursery_worker", "run", ...) lands here.
        run_cli(list(args))
