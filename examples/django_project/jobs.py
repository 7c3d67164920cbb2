"""The App for the worker: ``nursery-worker run --app examples.django_project.jobs:app``.

The tasks use the ORM, so the process that runs them must set Django up before it imports them.
This module does, which is what lets the plain CLI (and each child of ``--processes N``) load the
app; under ``manage.py nursery_worker`` Django is already set up and this is a no-op.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")
django.setup()

from .shop.tasks import app  # noqa: E402 - after django.setup(), which the models need

__all__ = ["app"]
