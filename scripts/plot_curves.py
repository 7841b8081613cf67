"""Training curves of runs from their Lightning CSV logs (every logs/version_*/metrics.csv of a run,
later versions winning for the same step, so resumed runs read as one), one metric per PNG.

    python scripts/plot_curves.py --metric val/token_acc --out docs/curves/classifier_token_acc.png \
        "attempt 1=/work/cadenza-runs/classifier_small" "attempt 3=/work/cadenza-runs/classifier_small_v3"

A run is NAME=RUN_DIR (or just RUN_DIR). `--smooth K` averages K logged points (for noisy train metrics).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from cadenza.core.plots import curves_png


def read_metric(run_dir: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `metric` over all log versions of a run; a later version wins a repeated step."""
    values: dict[int, float] = {}
    files = sorted(run_dir.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for path in files:
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get(metric):
                    values[int(row["step"])] = float(row[metric])
    steps = np.array(sorted(values))
    return steps, np.array([values[s] for s in steps])


def smooth(steps: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of consecutive groups of k points (at each group's last step)."""
    n = len(values) // k * k
    if k <= 1 or n == 0:
        return steps, values
    return steps[k - 1:n:k], values[:n].reshape(-1, k).mean(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR or RUN_DIR")
    parser.add_argument("--metric", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--smooth", type=int, default=1)
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    series = {}
    for spec in args.runs:
        name, _, path = spec.rpartition("=")
        steps, values = smooth(*read_metric(Path(path), args.metric), args.smooth)
        if len(steps) == 0:
            raise SystemExit(f"{path}: no '{args.metric}' in its logs")
        series[name or Path(path).name] = (steps, values)
    print(curves_png(series, args.out, title=args.title or args.metric, ylabel=args.metric))


if __name__ == "__main__":
    main()
