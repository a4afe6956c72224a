"""Database engine, sessions and schema set-up for PostgreSQL/PostGIS and SQLite."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from georeference.errors import ConfigurationError, StorageError
from georeference.models import Base
from georeference.models.geometry import install_sqlite_functions

logger = logging.getLogger(__name__)

SCHEMA_SQL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "database", "vkdb-schema.sql")
MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
REQUIRED_TABLES = ("raw_maps", "metadata", "transformations", "georef_maps", "jobs",
                   "jobs_history", "search_documents", "search_outbox", "runners")


def safe_url(url: str) -> str:
    """Return the database URL with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for a vkdb URL; SQLite gets the PostGIS shims and a busy timeout.

    Raises:
        ConfigurationError: the URL is malformed or names a driver that is not installed.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"invalid sqlalchemy.url {url!r}: {exc}") from None

    if parsed.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {"timeout": 30})
    elif parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"unsupported database in sqlalchemy.url {safe_url(url)!r}: "
            "expected postgresql+psycopg2:// or sqlite://")
    else:
        # No pre-ping: it costs a round trip per checkout, and the job loop treats a dropped
        # connection as a transient error, after which the pool reconnects.
        kwargs.setdefault("connect_args", {"connect_timeout": 10})
        # Batch executemany UPDATEs into a few round trips.
        kwargs.setdefault("executemany_mode", "values_plus_batch")

    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise ConfigurationError(f"cannot use sqlalchemy.url {safe_url(url)!r}: {exc}") from None

    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _on_sqlite_connect)
    return engine


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    install_sqlite_functions(dbapi_connection)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def is_postgresql(engine: Engine) -> bool:
    """Return True when the engine talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


def check_database(engine: Engine) -> None:
    """Connect once and check that the vkdb tables exist.

    Raises:
        StorageError: the database cannot be reached, or tables are missing.
    """
    url = safe_url(str(engine.url.render_as_string(hide_password=False)))
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:" \
            and not os.path.isfile(database):
        raise StorageError(f"SQLite database {database} not found; check sqlalchemy.url, or "
                           "create it with 'georeference-runner init-db'")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            tables = set(inspect(connection).get_table_names())
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise StorageError(f"cannot connect to database {url}: {reason}") from exc

    missing = [name for name in REQUIRED_TABLES if name not in tables]
    if missing:
        raise StorageError(
            f"database {url} lacks the vkdb table(s) {', '.join(missing)}; "
            "run 'georeference-runner init-db' to create them")


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    return config


def create_schema(engine: Engine) -> None:
    """Bring a database to the runner's schema; safe to run on an existing vkdb.

    On PostgreSQL the shipped vkdb SQL creates the web service's tables where missing and the
    Alembic migrations add the runner's columns and tables. On SQLite the models create
    everything at once and Alembic records the result as the newest revision.
    """
    from alembic import command

    try:
        _create_schema(engine, command)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise StorageError(
            f"cannot create the schema in {safe_url(str(engine.url))}: {reason}") from exc
    logger.info("schema ready on %s", safe_url(str(engine.url)))


def _create_schema(engine: Engine, command: Any) -> None:
    if is_postgresql(engine):
        with open(SCHEMA_SQL, encoding="utf-8") as schema_file:
            sql = schema_file.read()
        with engine.begin() as connection:
            connection.exec_driver_sql(sql)
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "head")
    else:
        Base.metadata.create_all(engine)
        with engine.begin() as connection:
            command.stamp(_alembic_config(connection), "head")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory whose objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextlib.contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Open a session that commits on success and rolls back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
