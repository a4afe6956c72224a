"""Benchmark the old gdalwarp + gdal2tiles tiling pipeline against build_tile_pyramid.

Runs the OLD pipeline (GCP VRT, gdalwarp -order 1, gdaladdo, gdal2tiles.py,
Pillow palette pass) as real commands and the NEW path (one warp from the raw
scan into the tile grid) in child processes, alternating them, and prints the
median seconds per stage, the old/new ratio, the peak RSS of each child, the
tiles and bytes written, and whether the two tile sets agree. It also times a
lower bound (PNG encoding of the same tiles from memory on all cores).

Usage (from the repository root):
    /tmp/venvtest/bin/python bench/bench_pipeline.py --repeat 3 --write-readme
    /tmp/venvtest/bin/python bench/bench_pipeline.py --max-zoom native --skip-old
    /tmp/venvtest/bin/python bench/bench_pipeline.py --large --skip-old

The NEW path is any callable ``module:function`` with the signature of
``tile_scan_directly`` below (``--new-callable``), so the full job can be
plugged in later.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from osgeo import gdal  # noqa: E402

from georeference.geo import tiles  # noqa: E402

logger = logging.getLogger(__name__)
gdal.UseExceptions()

SAMPLE_SCAN = "/work/shared/data/maps/test-mtb.tif"
SAMPLE_GCP_SRS = "EPSG:4314"
SAMPLE_GCPS: tuple[tuple[tuple[float, float], tuple[float, float]], ...] = (
    ((637, 652), (9.999999047035397, 48.90000152653428)),
    ((625, 7125), (9.999999047069203, 48.79999923774097)),
    ((7741, 7133), (10.166666985288636, 48.79999923771421)),
    ((7755, 668), (10.166666985254116, 48.90000152650738)),
)
LARGE_SIZE = (40000, 30000)
OPAQUE_ALPHA = 128
"""Alpha from which a pixel counts as opaque in the agreement checks."""
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"

GcpList = Sequence[tuple[tuple[float, float], tuple[float, float]]]
NewPath = Callable[[str, GcpList, str, str, int | None, int | None], str]


def tile_scan_directly(
    scan_path: str,
    gcps: GcpList,
    gcp_srs: str,
    output_dir: str,
    min_zoom: int | None,
    max_zoom: int | None,
) -> str:
    """Tile the raw scan with build_tile_pyramid from its GCPs (affine, order 1); return the tile directory."""
    vrt_path = os.path.join(os.path.dirname(output_dir), "scan_gcps_new.vrt")
    write_gcp_vrt(scan_path, gcps, gcp_srs, vrt_path)
    tiles.build_tile_pyramid(
        vrt_path,
        output_dir,
        transformer_options=["METHOD=GCP_POLYNOMIAL", "MAX_GCP_ORDER=1"],
        min_zoom=min_zoom,
        max_zoom=max_zoom,
        processes=2,
    )
    return output_dir


def write_gcp_vrt(scan_path: str, gcps: GcpList, gcp_srs: str, vrt_path: str) -> None:
    gcp_objects = [gdal.GCP(lon, lat, 0.0, x, y) for (x, y), (lon, lat) in gcps]
    gdal.Translate(vrt_path, scan_path, format="VRT", GCPs=gcp_objects, outputSRS=gcp_srs)


@dataclass
class StageRun:
    seconds: float
    peak_rss_mb: float


@dataclass
class PipelineRuns:
    stages: dict[str, list[StageRun]] = field(default_factory=dict)

    def add(self, stage: str, run: StageRun) -> None:
        self.stages.setdefault(stage, []).append(run)

    def median_seconds(self, stage: str) -> float:
        return statistics.median(run.seconds for run in self.stages[stage])

    def median_total(self) -> float:
        repeats = len(next(iter(self.stages.values())))
        totals = [sum(runs[i].seconds for runs in self.stages.values()) for i in range(repeats)]
        return statistics.median(totals)

    def peak_rss_mb(self, stage: str | None = None) -> float:
        names = [stage] if stage else list(self.stages)
        return max(run.peak_rss_mb for name in names for run in self.stages[name])


def run_child(arguments: Sequence[str]) -> StageRun:
    """Run a command, wait for it with wait4 and return its wall time and peak RSS (MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(list(arguments), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"Command failed with exit code {process.returncode}: {arguments}\n{stderr[-2000:]}")
    # ru_maxrss is in KiB on Linux and covers the child and the descendants it waited for.
    return StageRun(seconds, usage.ru_maxrss / 1024.0)


def run_old_pipeline(work_dir: Path, scan: str, gcps: GcpList, min_zoom: int, max_zoom: int) -> tuple[PipelineRuns, Path]:
    """Run the old pipeline once, stage by stage, as separate commands."""
    runs = PipelineRuns()
    vrt, warped, tile_dir = work_dir / "old_gcps.vrt", work_dir / "old_warped.tif", work_dir / "old_tiles"
    for path in (vrt, warped):
        path.unlink(missing_ok=True)
    shutil.rmtree(tile_dir, ignore_errors=True)

    translate = ["gdal_translate", "-q", "-of", "VRT", "-a_srs", SAMPLE_GCP_SRS]
    for (x, y), (lon, lat) in gcps:
        translate += ["-gcp", repr(x), repr(y), repr(lon), repr(lat)]
    runs.add("gcp_vrt", run_child(translate + [scan, str(vrt)]))
    runs.add("warp", run_child([
        "gdalwarp", "-q", "-overwrite", "-order", "1", "-r", "bilinear", "-dstalpha",
        "-t_srs", SAMPLE_GCP_SRS, "-co", "TILED=YES", str(vrt), str(warped),
    ]))
    runs.add("overviews", run_child(["gdaladdo", "-q", str(warped), "2", "4", "8", "16", "32"]))
    runs.add("gdal2tiles", run_child([
        "/usr/bin/python3", "/usr/bin/gdal2tiles.py", f"--zoom={min_zoom}-{max_zoom}", "--processes=2",
        "--resampling=average", "--webviewer=none", "--quiet", str(warped), str(tile_dir),
    ]))
    runs.add("palette_pass", run_child([sys.executable, __file__, "_palette-pass", str(tile_dir)]))
    return runs, tile_dir


def palette_pass(tile_dir: str) -> None:
    """Quantize every PNG in place to 256 colours, as the old pipeline's Pillow step does."""
    for path in Path(tile_dir).glob("*/*/*.png"):
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
        rgba.quantize(256, method=Image.Quantize.FASTOCTREE).save(path, format="PNG")


def run_new_path(work_dir: Path, callable_name: str, scan: str, gcps: GcpList, min_zoom: int | None, max_zoom: int | None) -> tuple[PipelineRuns, Path]:
    runs = PipelineRuns()
    tile_dir = work_dir / "new_tiles"
    shutil.rmtree(tile_dir, ignore_errors=True)
    request = json.dumps({
        "callable": callable_name, "scan": scan, "gcps": gcps,
        "output_dir": str(tile_dir), "min_zoom": min_zoom, "max_zoom": max_zoom,
    })
    runs.add("tiling", run_child([sys.executable, __file__, "_new-path", request]))
    return runs, tile_dir


def load_callable(name: str) -> NewPath:
    module_name, _, function_name = name.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def tile_stats(tile_dir: Path) -> tuple[int, int]:
    paths = list(tile_dir.glob("*/*/*.png"))
    return len(paths), sum(path.stat().st_size for path in paths)


def read_rgba(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


@dataclass
class Agreement:
    only_old: int
    only_new: int
    only_visible: int
    """Tiles in one set only whose opaque area is 1 % or more."""
    iou_by_zoom: dict[int, float]
    median_psnr_db: float

    @property
    def passed(self) -> bool:
        return self.only_visible == 0 and min(self.iou_by_zoom.values()) >= 0.98 and self.median_psnr_db >= 25.0


def compare_tile_sets(old_dir: Path, new_dir: Path) -> Agreement:
    """Compare two TMS tile sets: tile sets, opaque-mask IoU per zoom and PSNR on common opaque pixels."""
    old = {path.relative_to(old_dir) for path in old_dir.glob("*/*/*.png")}
    new = {path.relative_to(new_dir) for path in new_dir.glob("*/*/*.png")}
    only_visible = 0
    for relative, root in [(r, old_dir) for r in old - new] + [(r, new_dir) for r in new - old]:
        if (read_rgba(root / relative)[..., 3] >= OPAQUE_ALPHA).mean() >= 0.01:
            only_visible += 1

    intersections: dict[int, int] = {}
    unions: dict[int, int] = {}
    psnrs: list[float] = []
    for relative in sorted(old | new):
        zoom = int(relative.parts[0])
        old_mask, old_rgb = opaque_mask(old_dir / relative)
        new_mask, new_rgb = opaque_mask(new_dir / relative)
        intersections[zoom] = intersections.get(zoom, 0) + int((old_mask & new_mask).sum())
        unions[zoom] = unions.get(zoom, 0) + int((old_mask | new_mask).sum())
        both = old_mask & new_mask
        if both.any():
            mse = float(np.square(old_rgb[both].astype(np.float64) - new_rgb[both]).mean())
            psnrs.append(math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse))
    iou = {zoom: intersections[zoom] / unions[zoom] if unions[zoom] else 1.0 for zoom in sorted(unions)}
    return Agreement(len(old - new), len(new - old), only_visible, iou, statistics.median(psnrs) if psnrs else 0.0)


def opaque_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        return np.zeros((256, 256), dtype=bool), np.zeros((256, 256, 3), dtype=np.uint8)
    rgba = read_rgba(path)
    return rgba[..., 3] >= OPAQUE_ALPHA, rgba[..., :3]


def encode_share(paths: list[str], scratch: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    """Decode a share of the tiles, wait for the others, then time encoding them from memory."""
    arrays = [(os.path.join(scratch, f"{index}.png"), read_rgba(Path(path))) for index, path in enumerate(paths)]
    barrier.wait()
    start = time.perf_counter()
    tiles.encode_tiles(arrays)
    results.put(time.perf_counter() - start)


def encoding_lower_bound(tile_dir: Path, work_dir: Path, processes: int) -> float:
    """Return the wall time of encoding and writing the tile set's PNGs from memory on ``processes`` cores."""
    paths = sorted(str(path) for path in tile_dir.glob("*/*/*.png"))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = []
    for index in range(processes):
        scratch = work_dir / f"lower_bound_{index}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        worker = context.Process(target=encode_share, args=(paths[index::processes], str(scratch), barrier, results))
        worker.start()
        workers.append(worker)
    elapsed = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return max(elapsed)


def make_large_scan(work_dir: Path) -> tuple[str, GcpList]:
    """Write a ~40000 x 30000 VRT that repeats the sample scan, with corner GCPs at the sample's scale."""
    sample = gdal.Open(SAMPLE_SCAN)
    tile_width, tile_height = sample.RasterXSize, sample.RasterYSize
    width, height = LARGE_SIZE
    vrt_path = str(work_dir / "large_scan.vrt")
    driver = gdal.GetDriverByName("VRT")
    large = driver.Create(vrt_path, width, height, 0)
    for band_index in range(1, 4):
        large.AddBand(gdal.GDT_Byte)
        band = large.GetRasterBand(band_index)
        band.SetColorInterpretation(sample.GetRasterBand(band_index).GetColorInterpretation())
        xml = []
        for top in range(0, height, tile_height):
            for left in range(0, width, tile_width):
                w, h = min(tile_width, width - left), min(tile_height, height - top)
                xml.append(
                    f"<SimpleSource><SourceFilename>{SAMPLE_SCAN}</SourceFilename><SourceBand>{band_index}</SourceBand>"
                    f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="{left}" yOff="{top}" xSize="{w}" ySize="{h}"/></SimpleSource>'
                )
        band.SetMetadata({f"source_{i}": text for i, text in enumerate(xml)}, "new_vrt_sources")
    large = None

    (x0, y0), (lon0, lat0) = SAMPLE_GCPS[0]
    (x2, y2), (lon2, lat2) = SAMPLE_GCPS[2]
    lon_per_pixel = (lon2 - lon0) / (x2 - x0)
    lat_per_pixel = (lat2 - lat0) / (y2 - y0)
    west, north = 9.5, 49.2
    gcps = [((x, y), (west + x * lon_per_pixel, north + y * lat_per_pixel)) for x, y in ((0, 0), (width, 0), (width, height), (0, height))]
    return vrt_path, gcps


def print_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each pipeline, alternating (default 3)")
    parser.add_argument("--min-zoom", type=int, default=0, help="lowest zoom (default 0)")
    parser.add_argument("--max-zoom", default="15", help="highest zoom, or 'native' for the scan's native zoom (default 15)")
    parser.add_argument("--work-dir", default="/tmp/bench_pipeline", help="scratch directory, never committed (default /tmp/bench_pipeline)")
    parser.add_argument("--new-callable", default="bench.bench_pipeline:tile_scan_directly", help="NEW path as module:function")
    parser.add_argument("--skip-old", action="store_true", help="run only the NEW path")
    parser.add_argument("--large", action="store_true", help="tile a ~40000 x 30000 repeat of the sample with the NEW path and report its peak RSS")
    parser.add_argument("--write-readme", action="store_true", help="write the results table into bench/README.md")
    args = parser.parse_args(argv)

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    scan, gcps = SAMPLE_SCAN, SAMPLE_GCPS
    if args.large:
        scan, gcps = make_large_scan(work_dir)
    max_zoom = native_max_zoom(scan, gcps, work_dir) if args.max_zoom == "native" else int(args.max_zoom)
    print(f"source {scan}, zoom {args.min_zoom}-{max_zoom}, GDAL {gdal.__version__}, {os.cpu_count()} cores")

    old_runs, new_runs = PipelineRuns(), PipelineRuns()
    old_dir = new_dir = None
    for repetition in range(args.repeat):
        if not args.skip_old:
            runs, old_dir = run_old_pipeline(work_dir, scan, gcps, args.min_zoom, max_zoom)
            merge(old_runs, runs)
            print(f"old run {repetition + 1}: {sum(r[-1].seconds for r in runs.stages.values()):.2f} s")
        runs, new_dir = run_new_path(work_dir, args.new_callable, scan, gcps, args.min_zoom, max_zoom)
        merge(new_runs, runs)
        print(f"new run {repetition + 1}: {runs.median_total():.2f} s, peak RSS {runs.peak_rss_mb():.0f} MiB")

    assert new_dir is not None
    report = build_report(args, old_runs, new_runs, old_dir, new_dir, work_dir, max_zoom)
    if args.write_readme:
        write_readme(report)
    return 0


def merge(target: PipelineRuns, source: PipelineRuns) -> None:
    for stage, runs in source.stages.items():
        for run in runs:
            target.add(stage, run)


def native_max_zoom(scan: str, gcps: GcpList, work_dir: Path) -> int:
    vrt_path = str(work_dir / "native.vrt")
    write_gcp_vrt(scan, gcps, SAMPLE_GCP_SRS, vrt_path)
    source = tiles._open_source(vrt_path)
    _, resolution = tiles._mercator_footprint(source, ["METHOD=GCP_POLYNOMIAL", "MAX_GCP_ORDER=1"])
    return tiles.native_zoom(resolution)


def build_report(args: argparse.Namespace, old_runs: PipelineRuns, new_runs: PipelineRuns, old_dir: Path | None, new_dir: Path, work_dir: Path, max_zoom: int) -> str:
    new_total = new_runs.median_total()
    new_count, new_bytes = tile_stats(new_dir)
    rows = [["stage", "median s", "peak RSS MiB", "tiles", "bytes"]]
    if old_dir is not None:
        for stage in old_runs.stages:
            rows.append([f"old {stage}", f"{old_runs.median_seconds(stage):.2f}", f"{old_runs.peak_rss_mb(stage):.0f}", "", ""])
        old_count, old_bytes = tile_stats(old_dir)
        rows.append(["old total", f"{old_runs.median_total():.2f}", f"{old_runs.peak_rss_mb():.0f}", str(old_count), str(old_bytes)])
    rows.append(["new tiling (warp included)", f"{new_total:.2f}", f"{new_runs.peak_rss_mb():.0f}", str(new_count), str(new_bytes)])

    lower_bound = encoding_lower_bound(new_dir, work_dir, 2)
    rows.append(["lower bound: encode same PNGs from memory, 2 processes", f"{lower_bound:.2f}", "", "", ""])
    print()
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
        f"date {datetime.date.today().isoformat()}; GDAL {gdal.__version__}; "
        f"source {'large_scan.vrt (sample repeated to 40000 x 30000)' if args.large else os.path.basename(SAMPLE_SCAN)}; "
        f"zoom {args.min_zoom}-{max_zoom}; {args.repeat} repetitions, medians.",
        "",
        print_table(rows),
        "",
    ]
    lines.append(f"Ratio tiling / lower bound: {new_total / lower_bound:.2f} (target <= 2)")
    if old_dir is not None:
        lines.append(f"Ratio old total / new tiling: {old_runs.median_total() / new_total:.1f}x")
        lines.append(f"Ratio old gdal2tiles / new tiling: {old_runs.median_seconds('gdal2tiles') / new_total:.1f}x")
        agreement = compare_tile_sets(old_dir, new_dir)
        iou = ", ".join(f"z{zoom} {value:.3f}" for zoom, value in agreement.iou_by_zoom.items())
        lines += [
            f"Tile sets: {agreement.only_old} only in old, {agreement.only_new} only in new, "
            f"{agreement.only_visible} of those with >= 1 % opaque area (must be 0)",
            f"Opaque-mask IoU per zoom (must be >= 0.98): {iou}",
            f"Median per-tile PSNR on pixels opaque in both (must be >= 25 dB): {agreement.median_psnr_db:.1f} dB",
            f"Agreement: {'PASS' if agreement.passed else 'FAIL'}",
        ]
    for line in lines[4:]:
        print(line)
    return "\n".join(lines)


def write_readme(report: str) -> None:
    readme = Path(__file__).with_name("README.md")
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:start] + "\n" + report + "\n" + text[end:], encoding="utf-8")


def child_new_path(request_json: str) -> None:
    request = json.loads(request_json)
    new_path = load_callable(request["callable"])
    new_path(request["scan"], request["gcps"], SAMPLE_GCP_SRS, request["output_dir"], request["min_zoom"], request["max_zoom"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if len(sys.argv) > 2 and sys.argv[1] == "_palette-pass":
        palette_pass(sys.argv[2])
    elif len(sys.argv) > 2 and sys.argv[1] == "_new-path":
        child_new_path(sys.argv[2])
    else:
        sys.exit(main())
