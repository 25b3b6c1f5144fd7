"""The embedded store's file: what makes a file a recallq store, and how it is opened.

A serving worker opens its store read-only and never writes a byte into whatever
sits at its path: a file renamed in under it may be anything (another program's
database, a truncated copy), and a reader that wrote (a journal-mode change, a
schema) would change that file, and its WAL could reach the next file renamed in.
Only `ingest` and `init` create, stamp or migrate a store, and they leave its
write-ahead log empty when they finish, so a finished store can be renamed.

A recallq store is marked in the SQLite header itself: `application_id` (offset
68) is APPLICATION_ID and `user_version` (offset 60) its schema version. Both are
read from the first 100 bytes before SQLite opens the file, so a foreign file is
recognised without SQLite ever opening it (or its stale -wal, or its -shm).
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import structlog

from schemas.memory import FIELD_NAMES, FIELDS, MEMORY_FIELDS, Kind, MemoryField
from worker.errors import StoreUnavailable

log = structlog.get_logger(__name__)

APPLICATION_ID = 0x72636C71  # "rclq"
# 1: the first marked stores; 2: last_accessed; 3: the groups table (each (type, memory_id)
# group's size and the rowid its vector file holds rows through) and the store's id. A
# writer (ingest, init) migrates an older store, or an unmarked one (its columns are
# version 1's), in one transaction.
SCHEMA_VERSION = 3
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100

# The table's columns are a memory's fields (schemas.memory), in its order, and the
# embedding. A field without a default is NOT NULL: every memory here came through
# ingest, which requires a time. Tags are a JSON array.
SQL_TYPES: dict[Kind, str] = {"text": "TEXT", "number": "REAL", "tags": "TEXT"}
MEMORY_COLUMNS = FIELD_NAMES
JSON_COLUMNS = tuple(f.name for f in MEMORY_FIELDS if f.kind == "tags")
COLUMNS = (*MEMORY_COLUMNS, "embedding")
# The schema version that added each column after the first (always nullable: ALTER TABLE
# ADD COLUMN cannot fill a NOT NULL column in the rows already there).
ADDED_IN = {"last_accessed": 2}


def _column(spec: MemoryField) -> str:
    return f"{spec.name} {SQL_TYPES[spec.kind]}" + (" NOT NULL" if spec.required else "")


COLUMN_DEFINITIONS = {spec.name: _column(spec) for spec in MEMORY_FIELDS}
if added_not_null := [name for name in ADDED_IN if FIELDS[name].required]:
    raise TypeError(f"columns added by a migration must be nullable: {added_not_null}")
SCHEMA_STATEMENTS = (
    "CREATE TABLE IF NOT EXISTS memories (\n    "
    + ",\n    ".join([*COLUMN_DEFINITIONS.values(), "embedding BLOB NOT NULL"])
    + ",\n    PRIMARY KEY (memory_type, id)\n)",
    "CREATE INDEX IF NOT EXISTS memories_by_owner ON memories (memory_type, memory_id)",
    # Kept by the writer in the transaction that writes the rows: a reader learns a group's
    # size, and whether a vector file serves it, from one lookup.
    "CREATE TABLE IF NOT EXISTS groups (\n    memory_type TEXT NOT NULL,\n"
    "    memory_id TEXT NOT NULL,\n    size INTEGER NOT NULL,\n"
    "    indexed_through INTEGER,\n    PRIMARY KEY (memory_type, memory_id)\n) WITHOUT ROWID",
    # store_id: the random id a vector file names its store by, so that a file renamed in
    # at the path never meets another store's vector files.
    "CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
TABLES = ("memories", "groups", "store_info")
FILL_GROUPS = (
    "INSERT OR REPLACE INTO groups (memory_type, memory_id, size) "
    "SELECT memory_type, memory_id, count(*) FROM memories GROUP BY memory_type, memory_id"
)
SCHEMA = "".join(f"{statement};\n" for statement in SCHEMA_STATEMENTS)


def columns_of_version(version: int) -> tuple[str, ...]:
    """The columns a store of schema `version` has (an unmarked store: version 1's)."""
    return tuple(name for name in COLUMNS if ADDED_IN.get(name, 1) <= version)


HOW_TO_CREATE = "create it with `recallq worker ingest FILE` or `recallq worker init`"

Identity = tuple[int, int]  # (st_dev, st_ino): which file sits at the path


def identity(path: Path) -> Identity:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def what_is_at(path: Path) -> str | None:
    """None when `path` holds a recallq store of this schema version; else what it holds,
    read from the header alone (SQLite does not open the file)."""
    try:
        header = _header(path)
    except (FileNotFoundError, NotADirectoryError):
        return f"missing ({_missing_why(path)}): {HOW_TO_CREATE}"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not header:
        return "an empty file (0 bytes), not a recallq store"
    if len(header) < HEADER_BYTES or not header.startswith(SQLITE_MAGIC):
        return "not a SQLite database"
    application, version = _marks(header)
    if application != APPLICATION_ID:
        return (
            f"a SQLite database that is not a recallq store (application_id {application:#x}); "
            "a store made before recallq marked its stores is marked by `recallq worker init`"
        )
    if version > SCHEMA_VERSION:
        return f"a recallq store of schema {version}, newer than this worker's {SCHEMA_VERSION}"
    if version < SCHEMA_VERSION:
        return f"a recallq store of schema {version}: migrate it with `recallq worker init`"
    return None


def open_for_reading(path: Path, busy_timeout_s: float) -> tuple[sqlite3.Connection, Identity]:
    """A read-only connection to the recallq store at `path` (SQLite's `mode=ro`: no
    journal-mode change, no schema, no checkpoint), and the file's identity; anything
    else at the path is StoreUnavailable saying what was found."""
    before = _identity_or_unavailable(path)
    if (found := what_is_at(path)) is not None:
        raise StoreUnavailable(f"sqlite {path} is {found}")
    uri = path.absolute().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s)
    try:
        _check_schema(conn, path)
        if _identity_or_unavailable(path) != before:
            raise StoreUnavailable(f"sqlite {path} was replaced while it was opened; retrying")
    except BaseException:
        conn.close()
        raise
    return conn, before


def open_for_writing(path: Path, busy_timeout_s: float) -> tuple[sqlite3.Connection, Identity]:
    """A read-write connection for ingest and init: creates the store (marked, in WAL
    mode) where nothing is, marks a store made before marks existed, migrates a store of
    an older schema, and refuses any other file rather than write into it."""
    _make_directory(path.parent)
    fresh = not path.exists() or path.stat().st_size == 0
    found = None if fresh else what_is_at(path)
    upgradable = found is not None and (_older_store(path) or _unmarked_store(path))
    if found is not None and not upgradable:
        raise StoreUnavailable(f"sqlite {path} is {found}: refusing to write into it")
    conn = sqlite3.connect(path, timeout=busy_timeout_s)
    try:
        if fresh or upgradable:
            _mark(conn, path, created=fresh)
        conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for this writer
        conn.execute("PRAGMA synchronous=NORMAL")
        _check_schema(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn, identity(path)


def close_writer(conn: sqlite3.Connection, path: Path) -> None:
    """Checkpoint the whole write-ahead log into the file and empty it, then close: a
    finished store leaves no WAL frames at its path for a rename to strand."""
    try:
        emptied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    except sqlite3.DatabaseError:
        emptied = False
    conn.close()
    if not emptied:
        log.warning(
            "sqlite: the write-ahead log could not be emptied (readers held it, or the file "
            "failed); do not rename this file before `recallq worker init` has run on it",
            path=str(path),
        )


def _mark(conn: sqlite3.Connection, path: Path, *, created: bool) -> None:
    """Schema, the columns a store of an older schema lacks, and marks, in one transaction
    (for a new file a rollback-journal one, before WAL mode is on), then checkpointed, so
    they are in the file itself (the header check reads them). What the store was is
    read under the write lock: a writer that migrated it meanwhile leaves nothing to do."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        marked = conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        version = conn.execute("PRAGMA user_version").fetchone()[0] if marked else 1
        for statement in SCHEMA_STATEMENTS:  # IF NOT EXISTS: an existing table stays
            conn.execute(statement)
        present = _columns(conn)
        for name, added in ADDED_IN.items():
            if added > version and name not in present:
                conn.execute(f"ALTER TABLE memories ADD COLUMN {COLUMN_DEFINITIONS[name]}")
        if version < 3:  # the groups table was just made: count what the store holds
            conn.execute(FILL_GROUPS)
        conn.execute(
            "INSERT OR IGNORE INTO store_info (key, value) VALUES ('store_id', ?)",
            (uuid.uuid4().hex,),
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # an old store in WAL mode: into the file
    if created:
        log.info("sqlite store created", path=str(path), schema=SCHEMA_VERSION)
    elif not marked:
        log.info("sqlite store marked", path=str(path), schema=SCHEMA_VERSION)
    elif version < SCHEMA_VERSION:
        log.info("sqlite store migrated", path=str(path), schema=SCHEMA_VERSION, was=version)


def _older_store(path: Path) -> bool:
    """A recallq store of an older schema, which a writer migrates."""
    application, version = _marks(_header(path))
    return application == APPLICATION_ID and 1 <= version < SCHEMA_VERSION


def _unmarked_store(path: Path) -> bool:
    """A store written before recallq marked its stores: unmarked, with the memories table."""
    header = _header(path)
    if not header.startswith(SQLITE_MAGIC) or header[60:72] != bytes(12):
        return False
    conn = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True)
    try:
        return set(columns_of_version(1)) <= _columns(conn)
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def _header(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(HEADER_BYTES)


def _marks(header: bytes) -> tuple[int, int]:
    """(application_id, user_version) from a database header."""
    return int.from_bytes(header[68:72], "big"), int.from_bytes(header[60:64], "big")


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """What SQLite reads (through the WAL) must be the store the header promised."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    missing = set(COLUMNS) - _columns(conn)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing |= {f"table {name}" for name in TABLES if name not in tables}
    if version != SCHEMA_VERSION or missing:
        raise StoreUnavailable(
            f"sqlite {path} is marked as a recallq store but reads as schema {version}"
            + (f" without {sorted(missing)}" if missing else "")
        )


def _columns(conn: sqlite3.Connection) -> set[str]:
    return {row[1] for row in conn.execute("PRAGMA table_info(memories)")}


def _identity_or_unavailable(path: Path) -> Identity:
    try:
        return identity(path)
    except (FileNotFoundError, NotADirectoryError):
        raise StoreUnavailable(
            f"sqlite {path} is missing ({_missing_why(path)}): {HOW_TO_CREATE}"
        ) from None
    except OSError as exc:
        raise StoreUnavailable(f"sqlite {path} cannot be read ({exc.strerror})") from None


def _missing_why(path: Path) -> str:
    nearest = path.parent
    while not nearest.exists():  # ends at the root at the latest
        nearest = nearest.parent
    if not nearest.is_dir():
        return f"{nearest} is not a directory"
    return "no such file" if nearest == path.parent else f"no directory {path.parent}"


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"sqlite: cannot create the directory {directory} ({exc.strerror})"
        ) from None


def store_id(conn: sqlite3.Connection) -> str:
    """The store's random id (schema 3), which its vector files carry."""
    row = conn.execute("SELECT value FROM store_info WHERE key = 'store_id'").fetchone()
    if row is None:
        raise StoreUnavailable("sqlite store has no store_id: run `recallq worker init`")
    return str(row[0])
