"""Packaging of the georeference jobs runner.

GDAL's Python bindings are not listed here: they must match the system's libgdal, so
scripts/setup.sh installs them with the version that ``gdal-config --version`` prints.
"""

from setuptools import find_packages, setup

setup(
    name="georeference",
    version="0.1.0",
    description="Jobs runner that georeferences scanned maps and publishes them as "
                "GeoTIFF, TMS tiles, MapServer services and search documents",
    packages=find_packages(include=["georeference", "georeference.*"]),
    package_data={"georeference": ["templates/*"]},
    python_requires=">=3.10",
    install_requires=[
        "SQLAlchemy>=2.0,<2.1",
        "psycopg2-binary>=2.9",
        "python-daemon>=3.0",
        "PasteDeploy>=3.0",
        "numpy>=1.23,<2",
        "Pillow>=10",
        "elasticsearch>=8,<9",
        "alembic>=1.12",
    ],
    extras_require={
        "test": ["pytest>=7"],
    },
    entry_points={
        "console_scripts": [
            "georeference-runner = georeference.daemon.runner:main",
            "georeference-jobs = georeference.cli.jobs:main",
        ],
    },
)
