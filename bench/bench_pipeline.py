"""Benchmark the old gdalwarp + gdal2tiles pipeline against the transformation_process job.

In one run, alternating, ``--repeat`` times each on the same scan and zoom range:

- OLD: GCP VRT, gdalwarp -order 1, gdaladdo 2 4 8 16 32, gdal2tiles.py --processes=2
  --resampling=average, Pillow palette pass; real commands, one child process per stage;
- JOB: the whole ``transformation_process`` job (geo image with overviews, tiles, mapfile,
  search document) through the real job loop in a child process (``job_pipeline.py``);
- TILES: ``build_tile_pyramid`` alone from the raw scan's GCPs in a child process.

Printed: median seconds per stage and in total, the old/new ratios, the peak memory of each
child, and the tiles and bytes written. Also printed: a lower bound for tiling (encoding the same
PNGs from memory on both cores) and whether the old and new tile sets agree.

Usage (from the repository root):
    python_env/bin/python bench/bench_pipeline.py --repeat 3 --write-readme
    python_env/bin/python bench/bench_pipeline.py --max-zoom native --repeat 2 --write-readme
    python_env/bin/python bench/bench_pipeline.py --large --paths job --repeat 1 --write-readme
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
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from osgeo import gdal  # noqa: E402

from georeference.geo import tiles  # noqa: E402

logger = logging.getLogger(__name__)
gdal.UseExceptions()

SAMPLE_SCAN = str(Path(__file__).resolve().parent.parent / "sample_data" / "raw" / "mtb" / "test-mtb.tif")
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
README_MARKERS = {"sample": "results", "native": "native", "large": "large"}
"""Name of the README section (``<!-- NAME:start -->`` … ``<!-- NAME:end -->``) per kind of run."""
MEMORY_SAMPLE_SECONDS = 0.1
"""Interval at which the memory of a child's process tree is sampled."""
DECODED_BOUND_RUNS = 3
"""Runs of the comparison bound that encodes tiles decoded from the written PNGs."""
PATHS = ("old", "job", "tiles")

GcpList = Sequence[tuple[tuple[float, float], tuple[float, float]]]
NewPath = Callable[[str, GcpList, str, str, int | None, int | None], "str | dict[str, Any]"]
"""A NEW path: returns its tile folder, or a dict with ``tile_dir`` and figures of its own."""


def tile_scan_directly(
    scan_path: str,
    gcps: GcpList,
    gcp_srs: str,
    output_dir: str,
    min_zoom: int | None,
    max_zoom: int | None,
) -> dict[str, Any]:
    """Tile the raw scan with build_tile_pyramid from its GCPs (affine, order 1).

    Returns the tile directory and the seconds of the GCP VRT and the build, timed in this
    process like the lower bound, so that interpreter start-up and imports are left out.
    """
    started = time.perf_counter()
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
    return {"tile_dir": output_dir, "tiling_seconds": time.perf_counter() - started}


def write_gcp_vrt(scan_path: str, gcps: GcpList, gcp_srs: str, vrt_path: str) -> None:
    gcp_objects = [gdal.GCP(lon, lat, 0.0, x, y) for (x, y), (lon, lat) in gcps]
    gdal.Translate(vrt_path, scan_path, format="VRT", GCPs=gcp_objects, outputSRS=gcp_srs)


@dataclass
class StageRun:
    """One child process: wall time and memory."""

    seconds: float
    max_rss_mb: float
    """ru_maxrss from wait4: the largest single process of the child's tree."""
    tree_pss_mb: float
    """Peak of the summed PSS of the child and all its descendants, sampled every 0.1 s."""


@dataclass
class PipelineRuns:
    """Runs of one pipeline, stage by stage, in repetition order."""

    stages: dict[str, list[StageRun]] = field(default_factory=dict)

    def add(self, stage: str, run: StageRun) -> None:
        self.stages.setdefault(stage, []).append(run)

    def seconds(self, stage: str) -> list[float]:
        return [run.seconds for run in self.stages[stage]]

    def median_seconds(self, stage: str) -> float:
        return statistics.median(self.seconds(stage))

    def totals(self) -> list[float]:
        repeats = len(next(iter(self.stages.values())))
        return [sum(runs[i].seconds for runs in self.stages.values()) for i in range(repeats)]

    def median_total(self) -> float:
        return statistics.median(self.totals())

    def max_rss_mb(self, stage: str | None = None) -> float:
        names = [stage] if stage else list(self.stages)
        return max(run.max_rss_mb for name in names for run in self.stages[name])

    def tree_pss_mb(self, stage: str | None = None) -> float:
        names = [stage] if stage else list(self.stages)
        return max(run.tree_pss_mb for name in names for run in self.stages[name])


def _descendants(root: int) -> list[int]:
    """Return ``root`` and every live process below it, from the parent pids in /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # The command name in parentheses may hold spaces; fields after it are fixed.
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue.extend(parents.get(pid, ()))
    return tree


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class TreeMemorySampler(threading.Thread):
    """Sample the summed PSS of a process tree until stopped; keep the peak.

    ru_maxrss only reports the largest single process, but a job runs a main process and
    encoder workers side by side. PSS splits pages shared after a fork among the sharers,
    so the sum is the tree's real footprint rather than a double count.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(MEMORY_SAMPLE_SECONDS):
            total = sum(_pss_kib(pid) for pid in _descendants(self.pid))
            self.peak_kib = max(self.peak_kib, total)

    def stop(self) -> float:
        """Stop sampling and return the peak in MiB."""
        self._stop_event.set()
        self.join()
        return self.peak_kib / 1024.0


def source_state() -> str:
    """Return the commit the package is at and whether its files differ from it, for the report.

    Figures only mean something together with the code they measured, and the package may
    change while a benchmark runs.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                                capture_output=True, text=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "georeference"], cwd=root,
                                 check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "package version unknown (git failed)"
    return f"package at commit {commit}" + (" with uncommitted changes in georeference/" if changed else "")


def settle_disk() -> None:
    """Write out what earlier runs left in the page cache, before the next timed run.

    The old pipeline writes a 400 MB GeoTIFF. Without this, the kernel writes it back while
    the next child is timed, and that run pays for the previous one.
    """
    os.sync()


def run_child(arguments: Sequence[str]) -> StageRun:
    """Run a command, wait for it with wait4 and return its wall time and memory."""
    settle_disk()
    start = time.perf_counter()
    process = subprocess.Popen(list(arguments), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = TreeMemorySampler(process.pid)
    sampler.start()
    # stderr is read in a thread, so a chatty child cannot block on a full pipe.
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(process.stderr.read()), daemon=True)
    reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    tree_pss = sampler.stop()
    reader.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = b"".join(stderr_chunks).decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"Command failed with exit code {process.returncode}: {arguments}\n{stderr[-2000:]}")
    # ru_maxrss is in KiB on Linux and covers the child and the descendants it waited for.
    return StageRun(seconds, usage.ru_maxrss / 1024.0, tree_pss)


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


@dataclass
class NewRun:
    """One run of a NEW path: the child's measurement and what the path reported itself."""

    child: StageRun
    tile_dir: Path
    details: dict[str, Any]


def run_new_path(work_dir: Path, name: str, callable_name: str, scan: str, gcps: GcpList,
                 min_zoom: int | None, max_zoom: int | None) -> NewRun:
    """Run a NEW path in a child process; its result dict comes back through a JSON file."""
    tile_dir = work_dir / f"{name}_tiles"
    result_path = work_dir / f"{name}_result.json"
    shutil.rmtree(tile_dir, ignore_errors=True)
    result_path.unlink(missing_ok=True)
    request = json.dumps({
        "callable": callable_name, "scan": scan, "gcps": gcps, "output_dir": str(tile_dir),
        "min_zoom": min_zoom, "max_zoom": max_zoom, "result_path": str(result_path),
    })
    child = run_child([sys.executable, __file__, "_new-path", request])
    details = json.loads(result_path.read_text(encoding="utf-8"))
    return NewRun(child, Path(details["tile_dir"]), details)


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


def load_tile_array(path: str) -> np.ndarray:
    """Return an RGBA tile from a PNG (decoded) or from a .npy file (as the tiler held it)."""
    return np.load(path) if path.endswith(".npy") else read_rgba(Path(path))


def encode_share(paths: list[str], scratch: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    """Load a share of the tiles, wait for the others, then time encoding them from memory."""
    arrays = [(os.path.join(scratch, f"{index}.png"), load_tile_array(path)) for index, path in enumerate(paths)]
    barrier.wait()
    start = time.perf_counter()
    tiles.encode_tiles(arrays)
    results.put(time.perf_counter() - start)


def encoding_lower_bound(paths: list[str], work_dir: Path, processes: int) -> float:
    """Return the wall time of encoding and writing the given tiles as PNGs from memory on ``processes`` cores."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = []
    for index in range(processes):
        scratch = work_dir / f"lower_bound_{index}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        worker = context.Process(target=encode_share, args=(paths[index::processes], str(scratch), barrier, results))
        workers.append(worker)
    settle_disk()
    for worker in workers:
        worker.start()
    elapsed = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return max(elapsed)


def capture_tile_arrays(scan: str, gcps: GcpList, output_dir: str, min_zoom: int | None,
                        max_zoom: int | None) -> list[str]:
    """Build the tile-only pyramid once more, saving every RGBA tile the tiler hands to its encoder.

    Runs in a child process: ``tiles.encode_tiles`` is replaced there by a function that
    stores each tile as a .npy file instead of encoding it. Returns the .npy paths.
    """
    array_dir = Path(output_dir) / "arrays"
    shutil.rmtree(output_dir, ignore_errors=True)
    array_dir.mkdir(parents=True)
    request = json.dumps({"scan": scan, "gcps": gcps, "output_dir": output_dir,
                          "min_zoom": min_zoom, "max_zoom": max_zoom})
    run_child([sys.executable, __file__, "_capture-tiles", request])
    return sorted(str(path) for path in array_dir.glob("*.npy"))


def child_capture_tiles(request_json: str) -> None:
    request = json.loads(request_json)
    array_dir = Path(request["output_dir"]) / "arrays"
    lock = threading.Lock()
    counter = iter(range(10**9))

    def save_batch(batch: Sequence[tuple[str, np.ndarray]]) -> tuple[int, int]:
        for _, rgba in batch:
            with lock:
                index = next(counter)
            np.save(array_dir / f"{index:06d}.npy", rgba)
        return len(batch), 0

    tiles.encode_tiles = save_batch
    tile_scan_directly(request["scan"], request["gcps"], SAMPLE_GCP_SRS,
                       str(Path(request["output_dir"]) / "tiles"), request["min_zoom"], request["max_zoom"])


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
    """Return rows as a Markdown table with padded columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each path, alternating (default 3)")
    parser.add_argument("--min-zoom", type=int, default=0, help="lowest zoom (default 0)")
    parser.add_argument("--max-zoom", default="15", help="highest zoom, or 'native' for the scan's native zoom (default 15)")
    parser.add_argument("--work-dir", default="/tmp/bench_pipeline", help="scratch directory, never committed (default /tmp/bench_pipeline)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated paths to run, of {', '.join(PATHS)} (default all)")
    parser.add_argument("--job-callable", default="bench.job_pipeline:run_transformation_job", help="the job path as module:function")
    parser.add_argument("--tiles-callable", default="bench.bench_pipeline:tile_scan_directly", help="the tile-only path as module:function")
    parser.add_argument("--large", action="store_true", help="use a ~40000 x 30000 repeat of the sample as the scan")
    parser.add_argument("--geotiff-compression", choices=("DEFLATE", "ZSTD", "LZW"),
                        help="GeoTIFF compression of the job (default: the project's default)")
    parser.add_argument("--write-readme", action="store_true", help="write the results into bench/README.md")
    args = parser.parse_args(argv)
    if args.geotiff_compression:
        # The job runs in a child process; job_pipeline.py reads the choice from here.
        os.environ["BENCH_GEOTIFF_COMPRESSION"] = args.geotiff_compression
    paths = [name.strip() for name in args.paths.split(",") if name.strip()]
    if not paths or set(paths) - set(PATHS):
        parser.error(f"--paths takes a comma-separated subset of {', '.join(PATHS)}")

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    scan, gcps = SAMPLE_SCAN, SAMPLE_GCPS
    if args.large:
        scan, gcps = make_large_scan(work_dir)
    max_zoom = native_max_zoom(scan, gcps, work_dir) if args.max_zoom == "native" else int(args.max_zoom)
    load = os.getloadavg()
    print(f"source {scan}, zoom {args.min_zoom}-{max_zoom}, GDAL {gdal.__version__}, {os.cpu_count()} cores, "
          f"load average before {load[0]:.2f}")

    old_runs = PipelineRuns()
    new_runs: dict[str, list[NewRun]] = {"job": [], "tiles": []}
    callables = {"job": args.job_callable, "tiles": args.tiles_callable}
    old_dir: Path | None = None
    capture_request = (scan, gcps, str(work_dir / "captured"), args.min_zoom, max_zoom)
    # The tiler's own RGBA tiles, captured once. The bound is then timed in every repetition
    # right after the tile-only run, so that both see the machine in the same state.
    arrays = capture_tile_arrays(*capture_request) if "tiles" in paths else []
    lower_bounds: list[float] = []
    for repetition in range(args.repeat):
        if "old" in paths:
            runs, old_dir = run_old_pipeline(work_dir, scan, gcps, args.min_zoom, max_zoom)
            merge(old_runs, runs)
            print(f"run {repetition + 1} old:   {runs.totals()[0]:7.2f} s")
        for name in ("job", "tiles"):
            if name not in paths:
                continue
            run = run_new_path(work_dir, name, callables[name], scan, gcps, args.min_zoom, max_zoom)
            new_runs[name].append(run)
            inside = run.details.get("job_seconds")
            print(f"run {repetition + 1} {name + ':':6} {run.child.seconds:7.2f} s child"
                  + (f", {inside:.2f} s job" if inside is not None else "")
                  + f", max RSS {run.child.max_rss_mb:.0f} MiB, tree PSS {run.child.tree_pss_mb:.0f} MiB")
        if arrays:
            lower_bounds.append(encoding_lower_bound(arrays, work_dir, 2))
            print(f"run {repetition + 1} bound: {lower_bounds[-1]:7.2f} s")

    report = build_report(args, paths, old_runs, old_dir, new_runs, work_dir, max_zoom, load[0],
                          arrays, lower_bounds)
    print()
    print(report)
    if args.write_readme:
        kind = "sample"
        if args.large:
            kind = "large"
        elif args.max_zoom == "native":
            kind = "native"
        write_readme(README_MARKERS[kind], report)
    return 0


def merge(target: PipelineRuns, source: PipelineRuns) -> None:
    for stage, runs in source.stages.items():
        for run in runs:
            target.add(stage, run)


def native_max_zoom(scan: str, gcps: GcpList, work_dir: Path) -> int:
    """Return the zoom build_tile_pyramid picks by default for the scan (its native resolution)."""
    vrt_path = str(work_dir / "native.vrt")
    write_gcp_vrt(scan, gcps, SAMPLE_GCP_SRS, vrt_path)
    source = tiles._open_source(vrt_path)
    _, resolution = tiles._mercator_footprint(source, ["METHOD=GCP_POLYNOMIAL", "MAX_GCP_ORDER=1"])
    return tiles.native_zoom(resolution)


def _memory_text(mib: float) -> str:
    """Return a sampled memory figure, or a dash when the child ended before the first sample."""
    return f"{mib:.0f}" if mib > 0 else "-"


def _runs_text(values: Sequence[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def _median_of(runs: list[NewRun], key: str) -> float:
    return statistics.median(float(run.details[key]) for run in runs)


def build_report(args: argparse.Namespace, paths: list[str], old_runs: PipelineRuns, old_dir: Path | None,
                 new_runs: dict[str, list[NewRun]], work_dir: Path, max_zoom: int, load_before: float,
                 arrays: list[str], lower_bounds: list[float]) -> str:
    """Return the results as Markdown: the timing table, ratios, the job's steps and the agreement."""
    header = ["path / stage", "median s", "runs s", "max RSS 1 proc MiB", "tree PSS MiB", "tiles", "bytes"]
    rows = [header]
    if old_dir is not None:
        for stage in old_runs.stages:
            rows.append([f"old {stage}", f"{old_runs.median_seconds(stage):.2f}", _runs_text(old_runs.seconds(stage)),
                         f"{old_runs.max_rss_mb(stage):.0f}", _memory_text(old_runs.tree_pss_mb(stage)), "", ""])
        old_count, old_bytes = tile_stats(old_dir)
        warped_bytes = (work_dir / "old_warped.tif").stat().st_size
        rows.append(["**old total**", f"**{old_runs.median_total():.2f}**", _runs_text(old_runs.totals()),
                     f"{old_runs.max_rss_mb():.0f}", f"{old_runs.tree_pss_mb():.0f}", str(old_count),
                     f"{old_bytes} tiles + {warped_bytes} GeoTIFF"])
    job_runs, tile_runs = new_runs["job"], new_runs["tiles"]
    if job_runs:
        job_count, job_bytes = tile_stats(job_runs[-1].tile_dir)
        details = job_runs[-1].details
        rows.append(["**new job, in-process** (JobLoop.run_pending)", f"**{_median_of(job_runs, 'job_seconds'):.2f}**",
                     _runs_text([run.details["job_seconds"] for run in job_runs]), "", "", str(job_count),
                     f"{job_bytes} tiles + {details['geo_image_bytes']} COG + {details['mapfile_bytes']} mapfile"])
        rows.append(["new job child (interpreter start-up, schema set-up, job)",
                     f"{statistics.median(run.child.seconds for run in job_runs):.2f}",
                     _runs_text([run.child.seconds for run in job_runs]),
                     f"{max(run.child.max_rss_mb for run in job_runs):.0f}",
                     f"{max(run.child.tree_pss_mb for run in job_runs):.0f}", "", ""])
    lower_bound = None
    if tile_runs:
        tile_count, tile_bytes = tile_stats(tile_runs[-1].tile_dir)
        rows.append(["**new tiling, in-process** (GCP VRT + build_tile_pyramid)",
                     f"**{_median_of(tile_runs, 'tiling_seconds'):.2f}**",
                     _runs_text([run.details["tiling_seconds"] for run in tile_runs]), "", "",
                     str(tile_count), str(tile_bytes)])
        rows.append(["new tile-only child (interpreter start-up, imports, tiling)",
                     f"{statistics.median(run.child.seconds for run in tile_runs):.2f}",
                     _runs_text([run.child.seconds for run in tile_runs]),
                     f"{max(run.child.max_rss_mb for run in tile_runs):.0f}",
                     f"{max(run.child.tree_pss_mb for run in tile_runs):.0f}", "", ""])
        lower_bound = statistics.median(lower_bounds)
        rows.append([f"lower bound: encode the tiler's own {len(arrays)} RGBA tiles from memory, 2 processes",
                     f"**{lower_bound:.2f}**", _runs_text(lower_bounds), "", "", str(len(arrays)), ""])
        pngs = sorted(str(path) for path in tile_runs[-1].tile_dir.glob("*/*/*.png"))
        decoded_bounds = [encoding_lower_bound(pngs, work_dir, 2) for _ in range(DECODED_BOUND_RUNS)]
        decoded_bound = statistics.median(decoded_bounds)
        rows.append(["the same from the written PNGs decoded again (fewer colours to quantize)",
                     f"{decoded_bound:.2f}", _runs_text(decoded_bounds), "", "", str(len(pngs)), ""])

    load_after = os.getloadavg()[0]
    source = "large_scan.vrt (the sample repeated to 40000 x 30000)" if args.large else os.path.basename(SAMPLE_SCAN)
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
        f"date {datetime.date.today().isoformat()}; GDAL {gdal.__version__}; source {source}; "
        f"zoom {args.min_zoom}-{max_zoom}; {args.repeat} repetition(s) of {', '.join(paths)}, alternating; medians; "
        f"1-minute load average {load_before:.2f} before, {load_after:.2f} after; {source_state()}.",
        "",
        print_table(rows),
        "",
    ]
    if job_runs:
        steps = job_runs[-1].details["steps"]
        phases = job_runs[-1].details["geo_image_phases"]
        lines.append("Job steps, seconds after run_pending() started (last run; the geo image and the tiles run "
                     "side by side): " + ", ".join(f"{action} {at:.2f}" for action, at in steps.items())
                     + (f"; geo image phases: warp {phases[0]:.2f}, overviews {phases[1]:.2f}, COG copy {phases[2]:.2f}"
                        if len(phases) == 3 else ""))
    if old_dir is not None and job_runs:
        old_total = old_runs.median_total()
        lines.append(f"Ratio old total / new job in-process: **{old_total / _median_of(job_runs, 'job_seconds'):.1f}x** (target >= 8x)")
        lines.append(f"Ratio old total / new job child: {old_total / statistics.median(r.child.seconds for r in job_runs):.1f}x")
        # Runs of one repetition follow each other closely, so their ratio suffers less from
        # load that changes over the run than the ratio of medians does.
        pairs = [old / run.details["job_seconds"] for old, run in zip(old_runs.totals(), job_runs)]
        lines.append("Ratio old total / new job in-process per repetition: "
                     + ", ".join(f"{ratio:.1f}x" for ratio in pairs) + f" (median {statistics.median(pairs):.1f}x)")
    if old_dir is not None and tile_runs:
        old_tiling = old_runs.median_seconds("gdal2tiles") + old_runs.median_seconds("palette_pass")
        lines.append(f"Ratio old gdal2tiles + palette / new tiling in-process: "
                     f"{old_tiling / _median_of(tile_runs, 'tiling_seconds'):.1f}x")
    if lower_bound is not None:
        tiling = _median_of(tile_runs, "tiling_seconds")
        child = statistics.median(r.child.seconds for r in tile_runs)
        lines.append(f"Ratio tiling in-process / lower bound: **{tiling / lower_bound:.2f}** (target <= 2); "
                     f"tile-only child / lower bound: {child / lower_bound:.2f}; "
                     f"tiling in-process / bound from decoded PNGs: {tiling / decoded_bound:.2f}")
        # The bound is timed right after the tile-only run of the same repetition.
        pairs = [run.details["tiling_seconds"] / bound for run, bound in zip(tile_runs, lower_bounds)]
        lines.append("Ratio tiling in-process / lower bound per repetition: "
                     + ", ".join(f"{ratio:.2f}" for ratio in pairs) + f" (median {statistics.median(pairs):.2f})")
    if old_dir is not None:
        for name, runs in (("job", job_runs), ("tile-only", tile_runs)):
            if runs:
                lines += agreement_lines(f"old vs new {name}", compare_tile_sets(old_dir, runs[-1].tile_dir))
    return "\n".join(lines)


def agreement_lines(title: str, agreement: Agreement) -> list[str]:
    """Return the agreement figures as report lines."""
    iou = ", ".join(f"z{zoom} {value:.3f}" for zoom, value in agreement.iou_by_zoom.items())
    return [
        "",
        f"Agreement, {title}: **{'PASS' if agreement.passed else 'FAIL'}**",
        f"- tiles only in old {agreement.only_old}, only in new {agreement.only_new}; "
        f"of those with >= 1 % opaque area: {agreement.only_visible} (must be 0)",
        f"- opaque-mask IoU per zoom (min {min(agreement.iou_by_zoom.values()):.3f}, must be >= 0.98): {iou}",
        f"- median per-tile PSNR on pixels opaque in both: {agreement.median_psnr_db:.1f} dB (must be >= 25)",
    ]


def write_readme(section: str, report: str) -> None:
    """Replace one results section of bench/README.md with the report."""
    readme = Path(__file__).with_name("README.md")
    text = readme.read_text(encoding="utf-8")
    start_marker, end_marker = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    start, end = text.index(start_marker) + len(start_marker), text.index(end_marker)
    readme.write_text(text[:start] + "\n" + report + "\n" + text[end:], encoding="utf-8")


def child_new_path(request_json: str) -> None:
    """Run a NEW path in this (child) process and write what it returns to the result file."""
    request = json.loads(request_json)
    new_path = load_callable(request["callable"])
    result = new_path(request["scan"], request["gcps"], SAMPLE_GCP_SRS, request["output_dir"],
                      request["min_zoom"], request["max_zoom"])
    details = result if isinstance(result, dict) else {"tile_dir": result}
    Path(request["result_path"]).write_text(json.dumps(details), encoding="utf-8")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if len(sys.argv) > 2 and sys.argv[1] == "_palette-pass":
        palette_pass(sys.argv[2])
    elif len(sys.argv) > 2 and sys.argv[1] == "_capture-tiles":
        child_capture_tiles(sys.argv[2])
    elif len(sys.argv) > 2 and sys.argv[1] == "_new-path":
        child_new_path(sys.argv[2])
    else:
        sys.exit(main())
