"""Shared fixtures: a vkdb on SQLite and on a throwaway PostgreSQL/PostGIS cluster.

Tests that take the ``db_url`` fixture run once per database. The PostgreSQL cluster starts
once per test session; each test gets a fresh database cloned from a template that already
has the schema.
"""

from __future__ import annotations

import itertools
import os
from typing import Iterator

import pytest
from sqlalchemy import text

from georeference.database import create_schema, make_engine, make_session_factory
from georeference.settings import Settings, build_settings
from tests.pgcluster import PostgresCluster

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_SCAN = os.path.join(PROJECT, "sample_data", "raw", "mtb", "test-mtb.tif")
TEMPLATE_DATABASE = "vkdb_template"

_database_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.init()
    cluster.start()
    try:
        engine = make_engine(cluster.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {TEMPLATE_DATABASE}"))
        engine.dispose()
        template_engine = make_engine(cluster.url_for(TEMPLATE_DATABASE))
        create_schema(template_engine)
        template_engine.dispose()
        yield cluster
    finally:
        cluster.remove()


def new_pg_database(cluster: PostgresCluster) -> str:
    """Create a fresh database with the vkdb schema and return its URL."""
    name = f"vkdb_test_{os.getpid()}_{next(_database_counter)}"
    engine = make_engine(cluster.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DATABASE}"))
    engine.dispose()
    return cluster.url_for(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """URL of an empty vkdb with the full schema, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/vkdb.sqlite"
        engine = make_engine(url)
        create_schema(engine)
        engine.dispose()
        return url
    return new_pg_database(request.getfixturevalue("pg_cluster"))


@pytest.fixture
def settings(db_url: str, tmp_path) -> Settings:
    """Settings whose roots all lie in the test's own temporary folder."""
    config = {
        "sqlalchemy.url": db_url,
        "georeference.image_root": str(tmp_path / "raw"),
        "georeference.georef_root": str(tmp_path / "georef"),
        "georeference.tms_root": str(tmp_path / "tms"),
        "georeference.mapfile_root": str(tmp_path / "mapfiles"),
        "georeference.tmp_root": str(tmp_path / "tmp"),
        "georeference.daemon.sleep_time": "0.2",
        "georeference.daemon.pidfile": str(tmp_path / "runner.pid"),
    }
    return build_settings(config, str(tmp_path))


@pytest.fixture
def engine(settings: Settings):
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine):
    return make_session_factory(engine)
