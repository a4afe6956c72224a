#!/usr/bin/env bash
# Install what the runner needs and is missing: GDAL, PostgreSQL with PostGIS and MapServer
# from the system's packages (as root, with apt), then the virtualenv python_env/ with GDAL's
# Python bindings matching the installed libgdal and the runner itself. Safe to run again.
set -euo pipefail

project=$(cd "$(dirname "$0")/.." && pwd)
venv="$project/python_env"
python=${PYTHON:-python3}

apt_packages=(gdal-bin libgdal-dev postgresql postgresql-15-postgis-3 cgi-mapserver mapserver-bin)

missing=()
for package in "${apt_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing system packages: ${missing[*]}; run this script as root or install them" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup: creating $venv"
    "$python" -m venv "$venv"
fi

gdal_version=$(gdal-config --version)
if ! "$venv/bin/python" -c "from osgeo import gdal, gdal_array; import sys; sys.exit(gdal.__version__ != '$gdal_version')" 2>/dev/null; then
    echo "setup: installing GDAL $gdal_version Python bindings"
    "$venv/bin/pip" install -q --upgrade pip setuptools wheel
    # The bindings compile against numpy; GDAL releases before 3.9 need numpy 1.x headers.
    "$venv/bin/pip" install -q "numpy>=1.23,<2"
    "$venv/bin/pip" install -q --no-build-isolation "GDAL==$gdal_version"
fi

"$venv/bin/pip" install -q -e "$project[test]"
echo "setup: done; python_env is $venv"
