"""The PostgreSQL engine: the only package that imports psycopg.

``_queries`` holds the SQL, ``_connection`` the pool and the ways a statement runs, ``_driver``
the driver interface's methods, ``_listener`` LISTEN; ``migrations/`` the schema's versions.
"""

from ._driver import MIGRATIONS as MIGRATIONS
from ._driver import SCHEMA_VERSION as SCHEMA_VERSION
from ._driver import PostgresDriver as PostgresDriver
from ._listener import PostgresListener as PostgresListener
