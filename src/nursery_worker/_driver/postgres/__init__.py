"""The PostgreSQL engine: the only package that imports psycopg.

``_queries`` holds the SQL, ``_connection`` the pool and the ways a statement runs, ``_driver``
the driver interface's methods, ``_listener`` LISTEN; ``migrations/`` the schema's versions.

psycopg and psycopg-pool are optional dependencies (the ``postgres`` and ``postgres-binary``
extras): this package is imported only when a PostgreSQL DSN is used, and says how to install
them if they are missing.
"""

from ..._errors import ConfigurationError

try:
    import psycopg  # noqa: F401  (the check; the modules below use it)
    import psycopg_pool  # noqa: F401
except ImportError as exc:
    raise ConfigurationError(
        f"a PostgreSQL DSN needs psycopg 3 and psycopg-pool, which cannot be imported ({exc}): install the "
        "'postgres-binary' extra, pip install 'nursery-worker[postgres-binary]' (from a checkout: "
        "pip install -e '.[postgres-binary]'), or 'postgres' to use a psycopg built against your libpq; "
        "without a DSN, App() uses the embedded SQLite engine, which needs neither"
    ) from exc

from ._driver import MIGRATIONS as MIGRATIONS
from ._driver import SCHEMA_VERSION as SCHEMA_VERSION
from ._driver import PostgresDriver as PostgresDriver
from ._listener import PostgresListener as PostgresListener
