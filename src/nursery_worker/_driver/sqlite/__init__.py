"""The embedded engine: the only package that imports sqlite3.

``_queries`` holds the SQL, ``_connection`` the connections and transactions, ``_time`` the time
codec, ``_flow`` the flow-control claim and triggers written in Python, ``_driver`` the driver
interface's methods, ``_listener`` the events poller; ``migrations/`` the schema's versions.
"""

from ._connection import MIGRATIONS as MIGRATIONS
from ._connection import SCHEMA_VERSION as SCHEMA_VERSION
from ._connection import check_sqlite_version as check_sqlite_version
from ._driver import SqliteDriver as SqliteDriver
from ._listener import SqliteListener as SqliteListener
