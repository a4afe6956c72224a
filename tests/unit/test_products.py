"""Staged products replace published ones whole, and a failed commit puts the old ones back."""

from __future__ import annotations

import os

import pytest

from georeference.publish.products import StagedProducts


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as output:
        output.write(text)


def _read(path):
    with open(path, encoding="utf-8") as source:
        return source.read()


def _tile_folder(root, version):
    folder = os.path.join(root, f"tiles-{version}")
    _write(os.path.join(folder, "15", "1", "2.png"), f"tile {version}")
    _write(os.path.join(folder, "tilemapresource.xml"), f"xml {version}")
    return folder


@pytest.fixture
def published(tmp_path):
    """Old versions of a geo image file and a tile folder, as a first job left them."""
    first = StagedProducts(str(tmp_path / "scratch"))
    image = str(tmp_path / "georef" / "m" / "map.tif")
    tiles = str(tmp_path / "tms" / "m" / "map")
    staged_image = os.path.join(first.staging_dir, "geo.tif")
    _write(staged_image, "image old")
    first.replace(staged_image, image)
    first.replace(_tile_folder(first.staging_dir, "old"), tiles)
    first.install()
    first.finish()
    return image, tiles


def test_install_then_finish_replaces(tmp_path, published):
    image, tiles = published
    job = StagedProducts(str(tmp_path / "scratch"))
    staged_image = os.path.join(job.staging_dir, "geo.tif")
    _write(staged_image, "image new")
    job.replace(staged_image, image)
    job.replace(_tile_folder(job.staging_dir, "new"), tiles)

    job.install()
    assert _read(image) == "image new"
    assert _read(os.path.join(tiles, "15", "1", "2.png")) == "tile new"
    assert os.path.islink(tiles)

    job.finish()
    siblings = sorted(os.listdir(os.path.dirname(tiles)))
    assert siblings == sorted([os.readlink(tiles), "map"])
    assert sorted(os.listdir(os.path.dirname(image))) == ["map.tif"]
    assert os.listdir(tmp_path / "scratch") == []


def test_restore_puts_old_back(tmp_path, published):
    image, tiles = published
    job = StagedProducts(str(tmp_path / "scratch"))
    staged_image = os.path.join(job.staging_dir, "geo.tif")
    _write(staged_image, "image new")
    job.replace(staged_image, image)
    job.replace(_tile_folder(job.staging_dir, "new"), tiles)
    job.install()

    job.restore()
    assert _read(image) == "image old"
    assert _read(os.path.join(tiles, "15", "1", "2.png")) == "tile old"
    assert sorted(os.listdir(os.path.dirname(image))) == ["map.tif"]
    assert len(os.listdir(os.path.dirname(tiles))) == 2
    assert os.listdir(tmp_path / "scratch") == []


def test_remove_and_restore(tmp_path, published):
    image, tiles = published
    job = StagedProducts(str(tmp_path / "scratch"))
    job.remove(image)
    job.remove(tiles)
    job.install()
    assert not os.path.lexists(image)
    assert not os.path.lexists(tiles)

    job.restore()
    assert _read(image) == "image old"
    assert _read(os.path.join(tiles, "tilemapresource.xml")) == "xml old"


def test_remove_then_finish_deletes_versions(tmp_path, published):
    image, tiles = published
    job = StagedProducts(str(tmp_path / "scratch"))
    job.remove(image)
    job.remove(tiles)
    job.install()
    job.finish()
    assert os.listdir(os.path.dirname(image)) == []
    assert os.listdir(os.path.dirname(tiles)) == []


def test_failed_install_undoes_earlier_changes(tmp_path, published):
    image, tiles = published
    job = StagedProducts(str(tmp_path / "scratch"))
    staged_image = os.path.join(job.staging_dir, "geo.tif")
    _write(staged_image, "image new")
    job.replace(staged_image, image)
    job.replace(os.path.join(job.staging_dir, "missing-folder"), tiles)

    with pytest.raises(OSError):
        job.install()
    assert _read(image) == "image old"
    assert _read(os.path.join(tiles, "15", "1", "2.png")) == "tile old"


def test_database_only_job_makes_no_folder(tmp_path):
    job = StagedProducts(str(tmp_path / "scratch"))
    job.install()
    job.finish()
    assert not os.path.exists(tmp_path / "scratch")
