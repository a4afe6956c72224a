"""Settings from PasteDeploy ini files: defaults, %(here)s, and clear errors for bad values."""

from __future__ import annotations

import os

import pytest

from georeference.errors import ConfigurationError
from georeference.settings import load_settings


def _ini(tmp_path, *lines):
    path = tmp_path / "site.ini"
    path.write_text("\n".join(["[app:main]", "use = call:georeference.settings:app_factory",
                               *lines, ""]))
    return str(path)


def test_defaults_resolve_against_ini_folder(tmp_path):
    settings = load_settings(_ini(tmp_path))
    assert settings.database_url == f"sqlite:///{tmp_path}/var/vkdb.sqlite"
    assert settings.georef_root == os.path.join(str(tmp_path), "var", "data", "georef")
    assert settings.sleep_time == 10.0
    assert settings.search_backend == "database"
    assert settings.tms_max_zoom is None
    assert settings.ini_path == str(tmp_path / "site.ini")


def test_values_and_here_are_read(tmp_path):
    settings = load_settings(_ini(
        tmp_path, "georeference.tms_root = %(here)s/tiles", "georeference.daemon.sleep_time = 2.5",
        "georeference.tms.max_zoom = 14", "georeference.search.backend = elasticsearch",
        "georeference.daemon.initialize_on_start = no", "georeference.mapfile_root = maps"))
    assert settings.tms_root == f"{tmp_path}/tiles"
    assert settings.mapfile_root == os.path.join(str(tmp_path), "maps")
    assert settings.sleep_time == 2.5
    assert settings.tms_max_zoom == 14
    assert settings.search_backend == "elasticsearch"
    assert settings.initialize_on_start is False


@pytest.mark.parametrize("line, message", [
    ("georeference.search.backend = solr", "georeference.search.backend: 'solr'"),
    ("georeference.tms.layout = quadkey", "georeference.tms.layout: 'quadkey'"),
    ("georeference.daemon.sleep_time = 0", "georeference.daemon.sleep_time: must be > 0"),
    ("georeference.daemon.sleep_time = -3", "must not be negative"),
    ("georeference.tms.max_zoom = high", "georeference.tms.max_zoom: 'high'"),
    ("georeference.daemon.initialize_on_start = maybe", "expected true or false"),
    ("georeference.geotiff.compression = JPEG", "georeference.geotiff.compression: 'JPEG'"),
    ("georeference.tiles.max_zom = 3", "unknown key(s)"),
])
def test_bad_value_names_key(tmp_path, line, message):
    with pytest.raises(ConfigurationError) as raised:
        load_settings(_ini(tmp_path, line))
    assert message in str(raised.value)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(ConfigurationError, match="configuration file not found: .*nothing.ini"):
        load_settings(str(tmp_path / "nothing.ini"))


def test_shipped_production_ini_loads():
    project = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    settings = load_settings(os.path.join(project, "production.ini"))
    assert settings.image_root == os.path.join(project, "sample_data", "raw")
    assert settings.database_url.startswith("sqlite:///")
    assert settings.tms_layout == "tms"
