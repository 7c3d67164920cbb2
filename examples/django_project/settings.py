"""Settings of the example project: one PostgreSQL database for the ORM and the jobs.

The jobs must live in the database the ORM writes to, so that a job enqueued inside
``transaction.atomic()`` commits or rolls back with the ORM's writes: one DSN serves both.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

#: The one database of the project (``$NURSERY_WORKER_DSN``, as the CLI reads it).
DATABASE_URL = os.environ.get("NURSERY_WORKER_DSN", "postgresql://postgres@127.0.0.1:5432/test")
#: The schema of the example's tables and its jobs (one schema, so that dropping it cleans up).
SCHEMA = os.environ.get("NURSERY_WORKER_SCHEMA", "example_django")

_url = urlsplit(DATABASE_URL)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["examples.django_project.shop"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3: Django 4.2+
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "",
        "PORT": str(_url.port or ""),
        "OPTIONS": {"options": f"-c search_path={SCHEMA}"},
    }
}

#: Read by shop/tasks.py to build the nursery-worker App.
NURSERY_WORKER_DSN = DATABASE_URL
NURSERY_WORKER_SCHEMA = SCHEMA
