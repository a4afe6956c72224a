"""Compare the tile-only build of two checkouts side by side, alternating runs.

A change to the tiler is measured against the code before it in one run, because this
machine drifts by ±10 % from minute to minute. Each run is a fresh child process that
imports the ``georeference`` package of one checkout and times ``tile_scan_directly`` from
that checkout's ``bench/bench_pipeline.py`` (sample scan, zoom 0-15 by default, 2 encoder threads),
as the pipeline benchmark's tile-only path does. It prints the median wall and CPU seconds
of each checkout and the ratio of the medians.

Usage, with a second checkout made by ``git worktree add /tmp/before <commit>``::

    python_env/bin/python bench/bench_ab_tiles.py /tmp/before . --repeat 9
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys, time
tree, output, max_zoom = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, os.path.join(tree, "bench"))
import bench_pipeline
import georeference
if not os.path.abspath(georeference.__file__).startswith(tree + os.sep):
    raise SystemExit(f"imported {georeference.__file__}, not the package of {tree}")
before = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
bench_pipeline.tile_scan_directly(bench_pipeline.SAMPLE_SCAN, bench_pipeline.SAMPLE_GCPS,
                                  "EPSG:4314", os.path.join(output, "tiles"), 0, max_zoom)
wall = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
print(json.dumps({"wall": wall, "cpu": cpu}))
"""


def run_once(tree: str, scratch: str, max_zoom: int) -> dict[str, float]:
    """Build the tiles once with ``tree``'s code in a child process; return wall and CPU seconds."""
    output = os.path.join(scratch, "run")
    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(output)
    result = subprocess.run([sys.executable, "-c", CHILD, tree, output, str(max_zoom)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"tile build with {tree} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="checkout with the code before the change")
    parser.add_argument("after", help="checkout with the change")
    parser.add_argument("--repeat", type=int, default=7, help="runs of each checkout (default 7)")
    parser.add_argument("--max-zoom", type=int, default=15, help="highest zoom (default 15; 16 is the native zoom)")
    args = parser.parse_args()
    trees = [os.path.realpath(args.before), os.path.realpath(args.after)]
    for tree in trees:
        if not os.path.isfile(os.path.join(tree, "bench", "bench_pipeline.py")):
            raise SystemExit(f"{tree} has no bench/bench_pipeline.py")

    runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as scratch:
        for _ in range(args.repeat):
            for tree in trees:
                runs[tree].append(run_once(tree, scratch, args.max_zoom))

    medians = {}
    for label, tree in zip(("before", "after"), trees):
        walls = [run["wall"] for run in runs[tree]]
        cpus = [run["cpu"] for run in runs[tree]]
        medians[label] = (statistics.median(walls), statistics.median(cpus))
        print(f"{label:6} {tree}: wall median {medians[label][0]:.2f} s "
              f"({', '.join(f'{value:.2f}' for value in walls)}), "
              f"CPU median {medians[label][1]:.2f} s")
    print(f"after / before: wall {medians['after'][0] / medians['before'][0]:.2f}, "
          f"CPU {medians['after'][1] / medians['before'][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
