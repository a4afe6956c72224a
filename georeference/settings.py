"""Settings of the runner: defaults, and loading them from a PasteDeploy ini file.

Every key can be set in the ini's ``[app:main]`` section. The settings object is built once
in the entry point and passed down; nothing reads the ini or the environment at import time.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from georeference.errors import ConfigurationError

SEARCH_BACKENDS = ("database", "elasticsearch")
TILE_LAYOUTS = ("tms", "xyz")
GEOTIFF_COMPRESSIONS = ("DEFLATE", "ZSTD", "LZW")

# Each entry: ini key -> (attribute name, parser, default). Defaults containing ``{here}``
# are resolved against the ini file's folder, like PasteDeploy's ``%(here)s``.
_KEYS: dict[str, tuple[str, str, Any]] = {
    "sqlalchemy.url": ("database_url", "str", "sqlite:///{here}/var/vkdb.sqlite"),
    "georeference.image_root": ("image_root", "path", "{here}/var/data/raw"),
    "georeference.georef_root": ("georef_root", "path", "{here}/var/data/georef"),
    "georeference.tms_root": ("tms_root", "path", "{here}/var/data/tms"),
    "georeference.mapfile_root": ("mapfile_root", "path", "{here}/var/data/mapfiles"),
    "georeference.tmp_root": ("tmp_root", "path", "{here}/var/tmp"),
    # Poll interval in seconds between two looks at the jobs table.
    "georeference.daemon.sleep_time": ("sleep_time", "float", 10.0),
    "georeference.daemon.pidfile": ("pidfile", "path", "{here}/var/georeference-runner.pid"),
    "georeference.daemon.initialize_on_start": ("initialize_on_start", "bool", True),
    "georeference.search.backend": ("search_backend", "str", "database"),
    "georeference.search.url": ("search_url", "str", "http://localhost:9200"),
    "georeference.search.index": ("search_index", "str", "vk20-maps"),
    "georeference.search.id_template": (
        "search_id_template", "str", "oai:de:slub-dresden:vk:id-{map_id}"),
    # Seconds the runner waits for the search index before it queues the update for later.
    "georeference.search.timeout": ("search_timeout", "float", 10.0),
    "georeference.url.tms": ("url_tms", "str", "http://localhost/tms/{map_type}/{file_name}"),
    "georeference.url.wms": ("url_wms", "str", "http://localhost/cgi-bin/mapserv?map={mapfile}"),
    "georeference.url.wcs": ("url_wcs", "str", "http://localhost/cgi-bin/mapserv?map={mapfile}"),
    "georeference.url.slub": (
        "url_slub", "str", "https://digital.slub-dresden.de/{ppn}"),
    "georeference.tms.min_zoom": ("tms_min_zoom", "optional_int", None),
    "georeference.tms.max_zoom": ("tms_max_zoom", "optional_int", None),
    "georeference.tms.layout": ("tms_layout", "str", "tms"),
    # PNG encoder threads and GDAL warp threads for the tiles.
    "georeference.tms.processes": ("tms_processes", "int", 2),
    # Compression of the georeferenced GeoTIFFs: DEFLATE (any GDAL or libtiff reader),
    # ZSTD (faster and smaller, needs GDAL 2.3+ built with zstd) or LZW.
    "georeference.geotiff.compression": ("geotiff_compression", "str", "DEFLATE"),
    # A warp whose output would exceed this many pixels on a side is rejected as bad GCPs.
    "georeference.warp.max_size": ("warp_max_size", "int", 50000),
    # A claimed job's lease, in seconds: a runner renews it while it works, and a job whose
    # lease ran out (its runner died) is claimed again.
    "georeference.job.lease_seconds": ("lease_seconds", "float", 60.0),
    # Claims after which a job whose runners keep dying is marked failed instead.
    "georeference.job.max_attempts": ("max_attempts", "int", 3),
    # Seconds a job may run before it is stopped and marked failed.
    "georeference.job.time_limit": ("time_limit", "float", 3600.0),
    # Maximum delay, in seconds, before a job that hit a transient error is tried again.
    "georeference.job.retry_backoff_max": ("retry_backoff_max", "float", 300.0),
    # GDAL block cache for warping and tiling, in megabytes.
    "georeference.gdal.cache_mb": ("gdal_cache_mb", "int", 128),
}


@dataclass(frozen=True)
class Settings:
    """The runner's configuration, one attribute per ini key (see ``_KEYS``)."""

    ini_path: str | None
    here: str
    database_url: str
    image_root: str
    georef_root: str
    tms_root: str
    mapfile_root: str
    tmp_root: str
    sleep_time: float
    pidfile: str
    initialize_on_start: bool
    search_backend: str
    search_url: str
    search_index: str
    search_id_template: str
    search_timeout: float
    url_tms: str
    url_wms: str
    url_wcs: str
    url_slub: str
    tms_min_zoom: int | None
    tms_max_zoom: int | None
    tms_layout: str
    tms_processes: int
    geotiff_compression: str
    warp_max_size: int
    lease_seconds: float
    max_attempts: int
    time_limit: float
    retry_backoff_max: float
    gdal_cache_mb: int

    def replace(self, **changes: Any) -> "Settings":
        """Return a copy with some attributes changed (used by tests and tools)."""
        return dataclasses.replace(self, **changes)


def _parse_bool(key: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"invalid value for {key}: {text!r} (expected true or false)")


def _parse_number(key: str, text: str, kind: Callable[[str], Any], unit: str) -> Any:
    try:
        value = kind(text.strip())
    except ValueError:
        raise ConfigurationError(f"invalid value for {key}: {text!r} (expected {unit})") from None
    if value < 0:
        raise ConfigurationError(f"invalid value for {key}: {text!r} (must not be negative)")
    return value


def _parse_value(key: str, parser: str, text: str) -> Any:
    if parser in ("str", "path"):
        return text.strip()
    if parser == "bool":
        return _parse_bool(key, text)
    if parser == "int":
        return _parse_number(key, text, int, "a whole number")
    if parser == "float":
        return _parse_number(key, text, float, "a number")
    if parser == "optional_int":
        if text.strip() == "":
            return None
        return _parse_number(key, text, int, "a whole number or nothing")
    raise AssertionError(f"unknown parser {parser}")


def _check_choices(values: Mapping[str, Any]) -> None:
    if values["search_backend"] not in SEARCH_BACKENDS:
        raise ConfigurationError(
            f"invalid value for georeference.search.backend: {values['search_backend']!r} "
            f"(expected one of {', '.join(SEARCH_BACKENDS)})")
    if values["tms_layout"] not in TILE_LAYOUTS:
        raise ConfigurationError(
            f"invalid value for georeference.tms.layout: {values['tms_layout']!r} "
            f"(expected one of {', '.join(TILE_LAYOUTS)})")
    if values["geotiff_compression"] not in GEOTIFF_COMPRESSIONS:
        raise ConfigurationError(
            f"invalid value for georeference.geotiff.compression: "
            f"{values['geotiff_compression']!r} (expected one of "
            f"{', '.join(GEOTIFF_COMPRESSIONS)})")
    if values["sleep_time"] <= 0:
        raise ConfigurationError("invalid value for georeference.daemon.sleep_time: must be > 0")
    if values["lease_seconds"] < 5:
        raise ConfigurationError("invalid value for georeference.job.lease_seconds: must be >= 5")
    if values["max_attempts"] < 1:
        raise ConfigurationError("invalid value for georeference.job.max_attempts: must be >= 1")
    if values["tms_processes"] < 1:
        raise ConfigurationError("invalid value for georeference.tms.processes: must be >= 1")
    if not values["database_url"]:
        raise ConfigurationError("missing value for sqlalchemy.url")


def build_settings(
    config: Mapping[str, str], here: str, ini_path: str | None = None
) -> Settings:
    """Build settings from ``[app:main]`` values, filling in defaults.

    Raises:
        ConfigurationError: a key under ``georeference.`` is unknown, or a value is invalid.
    """
    unknown = sorted(
        key for key in config if key.startswith("georeference.") and key not in _KEYS)
    if unknown:
        raise ConfigurationError(
            f"unknown key(s) in {ini_path or 'configuration'}: {', '.join(unknown)}")

    values: dict[str, Any] = {}
    for key, (attribute, parser, default) in _KEYS.items():
        if key in config:
            value = _parse_value(key, parser, config[key])
        elif isinstance(default, str):
            value = default.replace("{here}", here)
        else:
            value = default
        if parser == "path" and value:
            value = os.path.abspath(os.path.join(here, value))
        values[attribute] = value

    _check_choices(values)
    return Settings(ini_path=ini_path, here=here, **values)


def app_factory(global_config: Mapping[str, str], **local_config: str) -> Settings:
    """PasteDeploy factory named by ``use = call:georeference.settings:app_factory``."""
    here = global_config.get("here", os.getcwd())
    return build_settings(local_config, here, global_config.get("__file__"))


def load_settings(ini_path: str) -> Settings:
    """Load the ``[app:main]`` section of a PasteDeploy ini file.

    Raises:
        ConfigurationError: the file is missing, cannot be parsed, or contains a bad value.
    """
    from paste.deploy import loadapp

    path = os.path.abspath(ini_path)
    if not os.path.isfile(path):
        raise ConfigurationError(f"configuration file not found: {path}")
    try:
        settings = loadapp(f"config:{path}")
    except ConfigurationError as exc:
        message = str(exc)
        if path in message:
            raise
        raise ConfigurationError(f"{path}: {message}") from None
    except (configparser.Error, LookupError, ValueError, ImportError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigurationError(f"cannot read configuration file {path}: {reason}") from exc
    if not isinstance(settings, Settings):
        raise ConfigurationError(
            f"{path}: [app:main] must say 'use = call:georeference.settings:app_factory'")
    return settings


def default_settings(here: str) -> Settings:
    """Return the built-in defaults for a project folder, as if the ini set nothing."""
    return build_settings({}, here)
