"""The shipped schema, the migrations and the models describe the same tables."""

from __future__ import annotations

import json

from sqlalchemy import inspect, select

from georeference.models import Base, GeorefMap, RawMap, Transformation


def test_schema_matches_models(engine):
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        database_columns = {column["name"] for column in inspector.get_columns(table.name)}
        model_columns = {column.name for column in table.columns}
        assert database_columns == model_columns, table.name


def test_geometry_round_trip(session_factory):
    polygon = {"type": "Polygon",
               "coordinates": [[[10.0, 48.8], [10.2, 48.8], [10.2, 48.9], [10.0, 48.9],
                                [10.0, 48.8]]]}
    with session_factory() as session:
        session.add(RawMap(id=1, file_name="a", map_type="M", rel_path="a.tif"))
        session.flush()
        session.add(Transformation(id=5, params="{}", raw_map_id=1,
                                   clip=json.dumps(polygon)))
        session.flush()
        session.add(GeorefMap(raw_map_id=1, transformation_id=5, rel_path="m/a.tif",
                              extent=json.dumps(polygon)))
        session.commit()

    with session_factory() as session:
        extent = session.scalars(select(GeorefMap.extent)).one()
        clip = session.scalars(select(Transformation.clip)).one()
    assert json.loads(extent)["coordinates"] == polygon["coordinates"]
    assert json.loads(clip)["type"] == "Polygon"
