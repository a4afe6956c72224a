"""A geometry column type that serves PostGIS and the embedded SQLite database alike.

Python code always reads and writes GeoJSON text in EPSG:4326. On PostgreSQL the column is a PostGIS
``geometry(…, 4326)`` and values pass through ``ST_GeomFromGeoJSON``/``ST_AsGeoJSON``. On SQLite
the column is plain text, and ``install_sqlite_functions`` registers those two SQL functions
(and ``ST_SetSRID``) as identities, so one code path and one set of queries serves both.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.types import UserDefinedType

WGS84_SRID = 4326


class Geometry(UserDefinedType):
    """A PostGIS geometry in EPSG:4326, exchanged with Python as GeoJSON text."""

    cache_ok = True

    def __init__(self, geometry_type: str = "GEOMETRY") -> None:
        self.geometry_type = geometry_type

    def get_col_spec(self, **kw: Any) -> str:
        return f"geometry({self.geometry_type}, {WGS84_SRID})"

    def bind_expression(self, bindvalue: Any) -> Any:
        return func.ST_SetSRID(func.ST_GeomFromGeoJSON(bindvalue), WGS84_SRID)

    def column_expression(self, column: Any) -> Any:
        return func.ST_AsGeoJSON(column)


@compiles(Geometry, "sqlite")
def _compile_geometry_sqlite(type_: Geometry, compiler: Any, **kw: Any) -> str:
    return "TEXT"


def install_sqlite_functions(connection: sqlite3.Connection) -> None:
    """Register the PostGIS functions the models use as identities on a SQLite connection."""
    connection.create_function("ST_GeomFromGeoJSON", 1, lambda text: text, deterministic=True)
    connection.create_function("ST_AsGeoJSON", 1, lambda text: text, deterministic=True)
    connection.create_function("ST_SetSRID", 2, lambda text, srid: text, deterministic=True)
