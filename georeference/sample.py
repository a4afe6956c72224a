"""Load the sample map into a vkdb and queue its georeferencing: the quick start's data.

The sample is a Messtischblatt (Prussian 1:25,000 topographic sheet) scanned by the Saxon
State and University Library Dresden, with its four neatline corners as GCPs in EPSG:4314.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from osgeo import osr
from sqlalchemy.orm import Session

from georeference.database import check_database, make_engine
from georeference.errors import ConfigurationError, StorageError
from georeference.models import Job, Metadata, RawMap, Transformation

SAMPLE_MAP_ID = 1
SAMPLE_FILE_NAME = "test-mtb"
SAMPLE_REL_PATH = "mtb/test-mtb.tif"

# Neatline corners: scan pixel (x, y) -> (lon, lat) in EPSG:4314 (DHDN).
NEATLINE_GCPS = (
    ((637, 652), (9.999999047035397, 48.90000152653428)),
    ((625, 7125), (9.999999047069203, 48.79999923774097)),
    ((7741, 7133), (10.166666985288636, 48.79999923771421)),
    ((7755, 668), (10.166666985254116, 48.90000152650738)),
)


def sample_params(algorithm: str = "affine") -> dict:
    """Return the sample's transformation parameters in the vkdb's JSON form."""
    return {"source": "pixel", "target": "EPSG:4314", "algorithm": algorithm,
            "gcps": [{"source": list(pixel), "target": list(lonlat)}
                     for pixel, lonlat in NEATLINE_GCPS]}


def neatline_clip_geojson() -> str:
    """Return the neatline rectangle as a GeoJSON polygon in EPSG:4326, as the vkdb stores it."""
    source = osr.SpatialReference()
    source.ImportFromEPSG(4314)
    source.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    target = osr.SpatialReference()
    target.ImportFromEPSG(4326)
    target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(source, target)
    corners = [transform.TransformPoint(lon, lat)[:2] for _, (lon, lat) in NEATLINE_GCPS]
    ring = [list(corner) for corner in corners] + [list(corners[0])]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


def load_sample(session: Session, queue_job: bool = True) -> int:
    """Insert the sample map, its metadata and a transformation; queue its processing.

    Returns the transformation's id. Rows that exist already are left as they are.
    """
    if session.get(RawMap, SAMPLE_MAP_ID) is None:
        session.add(RawMap(id=SAMPLE_MAP_ID, file_name=SAMPLE_FILE_NAME, enabled=True,
                           map_type="M", default_crs=4314, rel_path=SAMPLE_REL_PATH,
                           map_scale=25000, allow_download=True))
        session.flush()
        # Catalogue values of the sample are placeholders: the scan shows the country around
        # Aalen (Wuerttemberg), and the links point to example.org, not to a real catalogue.
        session.add(Metadata(
            raw_map_id=SAMPLE_MAP_ID, title="Messtischblatt, Aalen (sample scan)",
            title_short="Aalen (sample)", title_serie="Messtischblatt 1:25 000",
            description="Topographic map sheet 1:25,000 with its neatline corners as GCPs",
            measures="8382 x 9089 px", type="Messtischblatt", technic="Lithografie",
            ppn="sample-test-mtb", permalink="https://example.org/vk/sample/test-mtb",
            license="CC-BY-SA 4.0", owner="SLUB Dresden / Deutsche Fotothek",
            link_zoomify="https://example.org/vk/sample/test-mtb/ImageProperties.xml",
            time_of_publication=None,
            link_thumb_small="https://example.org/vk/sample/test-mtb-small.jpg",
            link_thumb_mid="https://example.org/vk/sample/test-mtb-mid.jpg"))

    transformation = session.query(Transformation).filter_by(raw_map_id=SAMPLE_MAP_ID).first()
    if transformation is None:
        transformation = Transformation(
            params=json.dumps(sample_params()), target_crs=None, validation="missing",
            raw_map_id=SAMPLE_MAP_ID, overwrites=0, user_id="sample",
            comment="neatline corners", clip=neatline_clip_geojson())
        session.add(transformation)
        session.flush()
    if queue_job:
        session.add(Job(type="transformation_process",
                        description=json.dumps({"transformation_id": transformation.id}),
                        user_id="sample"))
    session.commit()
    return transformation.id


def main(argv: Sequence[str] | None = None) -> int:
    from georeference.daemon.runner import default_config_path
    from georeference.settings import load_settings

    parser = argparse.ArgumentParser(
        prog="python -m georeference.sample",
        description="Load the sample map into the vkdb and queue its transformation_process job.")
    parser.add_argument("--config", default=None, help="PasteDeploy ini file")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config or default_config_path())
        engine = make_engine(settings.database_url)
        check_database(engine)
        with Session(engine) as session:
            transformation_id = load_sample(session)
    except (ConfigurationError, StorageError) as exc:
        print(f"georeference.sample: {exc}", file=sys.stderr)
        return 2
    print(f"sample map {SAMPLE_MAP_ID} loaded; transformation_process queued for "
          f"transformation {transformation_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
