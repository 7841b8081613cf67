"""PNG plots: piano roll with sections, spectrogram, and the Staria helper."""

import ast
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import cadenza.core.plots as plots
from cadenza.core.plots import curves_png, piano_roll_png, spectrogram_png
from cadenza.staria.cache import TokenCache

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_piano_roll_png(tmp_path):
    onset = np.arange(40) * 250
    out = piano_roll_png(onset, np.full(40, 200), 60 + onset // 250 % 12, onset // 5000, tmp_path / "roll.png",
                         sections=[(0, 5000, "A"), (5000, 10000, "B")], title="two sections")
    assert out.read_bytes()[:8] == PNG_MAGIC
    height, width = imread(out).shape[:2]
    assert width >= 800 and height >= 400
    with pytest.raises(ValueError, match="differ in length"):
        piano_roll_png([0, 1], [1], [60], [0], tmp_path / "bad.png")


def test_spectrogram_png(tmp_path):
    sr = 16000
    t = np.arange(sr) / sr
    out = spectrogram_png(np.sin(2 * np.pi * 440 * t), sr, tmp_path / "spec.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    stereo = np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1)
    assert spectrogram_png(stereo, sr, tmp_path / "stereo.png").exists()


def test_staria_piano_roll_of_a_synthetic_piece(synthetic_corpus, tmp_path):
    from cadenza.staria.plots import piano_roll

    cache = TokenCache(synthetic_corpus)
    k = next(i for i, row in enumerate(cache.rows) if row["form"] == "ABAC")
    out = piano_roll(np.asarray(cache.ids(k)), tmp_path / "piece.png", title="ABAC")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_core_plots_do_not_import_staria():
    tree = ast.parse(Path(plots.__file__).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not any("staria" in m or "higgs_audio" in m for m in modules)


def test_training_curves_merge_resumed_log_versions(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_curves", Path(__file__).parent.parent / "scripts/plot_curves.py")
    plot_curves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_curves)
    for version, rows in enumerate([["0,0.5,", "10,0.4,", "20,0.3,"], ["20,0.25,", "30,,0.9", "40,0.2,"]]):
        log = tmp_path / f"logs/version_{version}/metrics.csv"
        log.parent.mkdir(parents=True)
        log.write_text("step,val/mel,train/x\n" + "\n".join(rows) + "\n")
    steps, values = plot_curves.read_metric(tmp_path, "val/mel")
    assert steps.tolist() == [0, 10, 20, 40] and values.tolist() == [0.5, 0.4, 0.25, 0.2]  # the resumed run wins
    assert plot_curves.smooth(steps, values, 2)[1].tolist() == [0.45, 0.225]
    out = curves_png({"run": (steps, values)}, tmp_path / "curve.png", title="t", ylabel="val/mel")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
