#!/usr/bin/env bash
# Set up what is missing, then run the test suite. The tests start a throwaway PostgreSQL +
# PostGIS cluster of their own and remove it afterwards; extra arguments go to pytest.
set -euo pipefail

project=$(cd "$(dirname "$0")/.." && pwd)
bash "$project/scripts/setup.sh"
cd "$project"
exec "$project/python_env/bin/python" -m pytest tests "$@"
