"""Evaluation: every method on the same slices, window and range; table, JSON and figure written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medgan_training import evaluate
from medgan_training.metrics import CT_WINDOW, slice_metrics, summarize, window_for


def phantom_stack(slices=2, size=48, sigma=20.0, seed=0):
    yy, xx = np.mgrid[:size, :size] - size / 2
    clean = np.where(np.hypot(yy, xx) < size * 0.4, 40.0, -1000.0).astype(np.float32)
    clean[np.hypot(yy - 5, xx) < 6] = 120.0
    clean = np.stack([clean] * slices)
    noisy = clean + np.random.default_rng(seed).normal(0, sigma, clean.shape).astype(np.float32)
    return noisy, clean


def test_metrics_use_the_window_and_report_bias():
    clean = np.zeros((32, 32), np.float32)
    shifted = clean + 10
    m = slice_metrics(shifted, clean, window_for("CT", clean))
    assert m["bias"] == pytest.approx(10) and m["rmse"] == pytest.approx(10)
    assert m["psnr"] == pytest.approx(20 * np.log10(400 / 10))
    assert window_for("CT", clean).label("HU") == "[-160, 240] HU" and CT_WINDOW == (-160.0, 240.0)
    summary = summarize([m, m])
    assert summary["psnr_std"] == 0 and summary["slices"] == 2


def test_every_method_is_measured_on_the_same_slices(tiny_model_dir):
    noisy, clean = phantom_stack()
    summaries, outputs, window = evaluate.evaluate(noisy, clean, "CT", models_dirs=(str(tiny_model_dir),), device="cpu")
    expected = {"noisy input", *evaluate.CLASSICAL, "model tiny-ct"}
    assert expected <= set(summaries)
    assert all(o.shape == clean.shape for o in outputs.values())
    assert all(s["slices"] == 2 for s in summaries.values())
    # with the true noise level BM3D must beat the noisy input on white noise
    assert summaries["BM3D (oracle sigma)"]["psnr"] > summaries["noisy input"]["psnr"] + 3
    assert evaluate.oracle_sigma((noisy[0] + 1024) / 4096, (clean[0] + 1024) / 4096) == pytest.approx(20 / 4096, rel=0.1)


def test_command_writes_table_json_and_figure(tmp_path, tiny_model_dir):
    noisy, clean = phantom_stack(slices=1)
    np.save(tmp_path / "quarter_dose_hu.npy", noisy[0])
    np.save(tmp_path / "full_dose_hu.npy", clean[0])
    out = tmp_path / "eval"
    code = evaluate.main(["--real-ldct-pair", str(tmp_path), "--models-dir", str(tiny_model_dir), "--device", "cpu", "--out", str(out)])
    assert code == 0
    table = (out / "table.md").read_text()
    assert "[-160, 240] HU" in table and "model tiny-ct" in table and "BM3D (estimated sigma)" in table
    assert json.loads((out / "metrics.json").read_text())["window"] == "[-160, 240] HU"
    assert (out / "comparison.png").stat().st_size > 1000
