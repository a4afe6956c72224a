#!/usr/bin/env bash
# Quick start on the embedded default (SQLite, search index in the database): set up, create
# the vkdb, load the sample map, queue its transformation_process job and run it.
set -euo pipefail

project=$(cd "$(dirname "$0")/.." && pwd)
bash "$project/scripts/setup.sh"
cd "$project"

bin="$project/python_env/bin"
config="$project/production.ini"

"$bin/georeference-runner" --config "$config" init-db
"$bin/python" -m georeference.sample --config "$config"
"$bin/georeference-runner" --config "$config" run --once

echo
echo "Georeferenced GeoTIFF: $project/var/data/georef/m/test-mtb.tif (open it in QGIS)"
echo "TMS tiles:             $project/var/data/tms/m/test-mtb/"
echo "Mapfile:               $project/var/data/mapfiles/1.map"
echo "Tile viewer:           $project/viewer/index.html"
echo "Jobs:                  $bin/georeference-jobs --config $config list"

# MapServer 8 reads a configuration file that must allow the mapfile folder.
mapserver_conf="$project/var/mapserver.conf"
cat > "$mapserver_conf" <<CONF
CONFIG
  ENV
    MS_MAP_PATTERN "^$project/var/data/mapfiles/[0-9]+\\.map\$"
  END
END
CONF
echo "MapServer config:      $mapserver_conf"
echo "Try the WMS:           MAPSERVER_CONFIG_FILE=$mapserver_conf REQUEST_METHOD=GET \\"
echo "  QUERY_STRING='map=$project/var/data/mapfiles/1.map&SERVICE=WMS&REQUEST=GetCapabilities' /usr/lib/cgi-bin/mapserv"
