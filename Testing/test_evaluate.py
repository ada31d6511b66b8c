"""Evaluation: honest classical baselines (oracle-tuned and estimated sigma, Slicer's diffusion
filters), every method on the same slices and window, and the noise-power-spectrum check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from medgan_training import baselines, evaluate
from medgan_training.degradations import CT_KERNELS, simulate_ct_noise
from medgan_training.metrics import CT_WINDOW, differentiable_ssim, slice_metrics, summarize, window_for

CT_SCALING = baselines.Scaling(-1024.0, 4096.0)
WINDOW = window_for("CT", np.zeros((2, 2)))


def phantom(size: int = 64) -> np.ndarray:
    """Soft tissue (40 HU) in air with a brighter insert (120 HU) and a darker one (-60 HU)."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    clean = np.where(np.hypot(yy, xx) < size * 0.45, 40.0, -1000.0).astype(np.float32)
    clean[np.hypot(yy - size / 8, xx) < size / 10] = 120.0
    clean[np.hypot(yy + size / 8, xx - size / 8) < size / 12] = -60.0
    return clean


def noisy_stack(slices: int = 2, size: int = 64, hu: float = 25.0, blur: float = 0.0, seed: int = 0):
    """(noisy, clean) stacks; blur > 0 low-pass filters the noise (correlated, as CT noise)."""
    rng = np.random.default_rng(seed)
    clean = np.stack([phantom(size)] * slices)
    noise = rng.normal(size=clean.shape)
    if blur:
        noise = np.stack([gaussian_filter(n, blur) for n in noise])
    noise *= hu / noise.std()
    return (clean + noise).astype(np.float32), clean


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


def test_metrics_use_the_window_and_report_bias():
    clean = np.zeros((32, 32), np.float32)
    m = slice_metrics(clean + 10, clean, window_for("CT", clean))
    assert m["bias"] == pytest.approx(10) and m["rmse"] == pytest.approx(10)
    assert m["psnr"] == pytest.approx(20 * np.log10(400 / 10))
    assert window_for("CT", clean).label("HU") == "[-160, 240] HU" and CT_WINDOW == (-160.0, 240.0)
    summary = summarize([m, m])
    assert summary["psnr_std"] == 0 and summary["slices"] == 2


def test_the_differentiable_ssim_is_the_evaluation_ssim_and_its_gradient_raises_it():
    import torch

    rng = np.random.default_rng(3)
    clean = np.clip(gaussian_filter(rng.normal(40, 60, (48, 56)), 1.0), -150, 230)  # inside the window
    smoothed = gaussian_filter(clean, 2.0)
    as_batch = lambda a: torch.from_numpy(a).float()[None, None]
    expected = slice_metrics(smoothed, clean, window_for("CT", clean))["ssim"]
    assert float(differentiable_ssim(as_batch(smoothed), as_batch(clean), 400.0)) == pytest.approx(expected, abs=1e-5)

    estimate = as_batch(smoothed).requires_grad_(True)
    optimizer = torch.optim.Adam([estimate], lr=1.0)
    for _ in range(30):
        optimizer.zero_grad()
        (1 - differentiable_ssim(estimate, as_batch(clean), 400.0)).backward()
        optimizer.step()
    improved = estimate.detach().double().numpy()[0, 0]
    assert slice_metrics(improved, clean, window_for("CT", clean))["ssim"] > expected + 0.05


@pytest.mark.parametrize("peak", [40.0, 500.0])
def test_multiplier_search_extends_past_the_grid_edge_and_refines(peak):
    # beyond the grid's top (16): the search must extend to find it, far when the estimate it
    # scales is far off (240x on OSEM-smoothed PET noise)
    tuning = baselines.tune_multiplier(lambda m: -np.log(m / peak) ** 2)
    step = baselines.SIGMA_GRID[1] / baselines.SIGMA_GRID[0]
    assert abs(np.log(tuning.best / peak)) < np.log(step) / 3
    assert tuning.psnr == max(tuning.tried.values())
    extensions = int(np.ceil(np.log(peak / max(baselines.SIGMA_GRID)) / np.log(step))) + 1
    assert len(tuning.tried) <= len(baselines.SIGMA_GRID) + extensions + 4


@pytest.mark.parametrize("key", ["nlm", "bm3d"])
def test_oracle_sigma_beats_every_grid_point_and_the_estimate_on_correlated_noise(key):
    noisy, clean = noisy_stack(slices=1, blur=1.2)  # one slice: BM3D costs ~0.6 s a call even at 64 x 64
    oracle = baselines.BASELINES[f"{key}-oracle"].run(noisy, clean, CT_SCALING, WINDOW, tune_crop=64)
    estimated = baselines.BASELINES[key].run(noisy, clean, CT_SCALING, WINDOW)
    # every coarse grid point, scored independently of the search: none beats its choice
    scaled = [CT_SCALING.forward(s) for s in noisy]
    sigmas = [baselines.estimated_sigma(s) for s in scaled]
    denoise = baselines.bm3d_filter if key == "bm3d" else baselines.nlm_filter
    for m in baselines.SIGMA_GRID:
        psnr = np.mean([slice_metrics(CT_SCALING.inverse(denoise(s, m * sigma)), c, WINDOW)["psnr"]
                        for s, sigma, c in zip(scaled, sigmas, clean)])
        assert oracle.details["tuning_psnr"] >= psnr - 1e-6, m
    # the white-noise estimate undershoots correlated noise: the oracle picks a larger sigma and wins
    assert oracle.details["multiplier"] > 1.5
    psnr_oracle = np.mean([slice_metrics(o, c, WINDOW)["psnr"] for o, c in zip(oracle.denoised, clean)])
    psnr_estimated = np.mean([slice_metrics(o, c, WINDOW)["psnr"] for o, c in zip(estimated.denoised, clean)])
    assert psnr_oracle > psnr_estimated + 1.0
    assert "x estimate" in oracle.setting and oracle.details["oracle"] == baselines.ORACLE_NOTE


@pytest.mark.parametrize("key, iterations", [("cad", 1), ("gad", 5)])
def test_slicer_diffusion_baselines_change_the_image_and_reduce_the_error(key, iterations):
    noisy, clean = noisy_stack(slices=1, hu=20.0)
    run = baselines.BASELINES[key].run(noisy, clean, CT_SCALING, WINDOW)
    assert run.details == {"conductance": 1.0, "iterations": iterations, "time_step": 0.0625}  # Slicer's defaults
    assert np.abs(run.denoised - noisy).max() > 1.0
    assert rmse(run.denoised, clean) < 0.95 * rmse(noisy, clean)


def test_per_slice_tuning_gives_each_slice_of_a_mixed_stack_its_own_best_setting():
    quiet, _ = noisy_stack(slices=1, size=48, hu=4.0, seed=1)
    loud, clean = noisy_stack(slices=1, size=48, hu=60.0, seed=2)
    noisy, clean = np.concatenate([quiet, loud]), np.concatenate([clean, clean])
    cad = baselines.BASELINES["cad-oracle"]  # an exhaustive grid: each slice's own best is at least the shared one
    shared = cad.run(noisy, clean, CT_SCALING, WINDOW, tune_slices=2, tune_crop=48)
    each = cad.run(noisy, clean, CT_SCALING, WINDOW, tune_crop=48, per_slice=True)
    settings = [d["iterations"] for d in each.details["per_slice"]]
    assert [d["slice"] for d in each.details["per_slice"]] == [0, 1]
    assert settings[0] < settings[1], "the quiet slice wants less smoothing than the loud one"
    psnr = lambda run: [slice_metrics(o, c, WINDOW)["psnr"] for o, c in zip(run.denoised, clean)]
    assert all(e >= s - 1e-9 for e, s in zip(psnr(each), psnr(shared)))
    assert sum(psnr(each)) > sum(psnr(shared)) + 0.1
    assert each.setting.startswith("tuned on each slice: ") and each.setting.count("iterations") == 2
    summaries, _, _ = evaluate.evaluate(noisy, clean, "CT", methods=("noisy", "cad-oracle"), tune_crop=48,
                                        tune_per_slice=True, log=lambda *_: None)
    row = summaries[cad.label]
    assert row["per_slice"]["psnr"] == pytest.approx(psnr(each))
    assert row["psnr"] == pytest.approx(np.mean(psnr(each)))
    table = evaluate.per_slice_table(summaries).splitlines()
    assert table[2] == "| method | slice 0 | slice 1 |"
    cad_row = next(line for line in table if line.startswith(f"| {cad.label} |"))
    expected = [f"{p:.2f} / {q:.3f}" for p, q in zip(row["per_slice"]["psnr"], row["per_slice"]["ssim"])]
    assert cad_row.strip("| ").split(" | ") == [cad.label, *expected]
    assert evaluate.per_slice_table({name: {**s, "slices": 1} for name, s in summaries.items()}) == ""


def test_every_method_has_a_row_in_the_table(tiny_model_dir):
    noisy, clean = noisy_stack(slices=2, size=48, hu=20.0)
    summaries, outputs, window = evaluate.evaluate(noisy, clean, "CT", models=["tiny-ct"], models_dirs=(str(tiny_model_dir),),
                                                   device="cpu", tune_slices=1, tune_crop=48,
                                                   log=lambda *_: None)
    labels = ["noisy input", *(b.label for b in baselines.BASELINES.values()), "model tiny-ct",
              "model tiny-ct: content branch c", "model tiny-ct: x - n branch"]
    assert list(summaries) == labels
    assert all(o.shape == clean.shape for o in outputs.values())
    assert all(s["slices"] == 2 for s in summaries.values())
    table = evaluate.markdown_table(summaries, window, "HU")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [row.split(" | ")[0][2:] for row in rows] == labels
    assert "[-160, 240] HU" in table and "(*) oracle" in table
    assert {name for name, s in summaries.items() if s["oracle"]} == {b.label for b in baselines.BASELINES.values() if b.oracle}
    # on white noise the oracle BM3D is far better than the input
    assert summaries["BM3D, oracle-tuned sigma (*)"]["psnr"] > summaries["noisy input"]["psnr"] + 3


def test_methods_option_chooses_a_subset_and_rejects_unknown_names():
    assert evaluate.parse_methods(["cad,noisy", "model"]) == ("noisy", "cad", "model")
    assert evaluate.parse_methods(None) == evaluate.METHODS
    with pytest.raises(ValueError, match="bm4d"):
        evaluate.parse_methods("bm3d,bm4d")


def test_real_pair_command_writes_the_noise_power_spectrum(tmp_path, tiny_model_dir, capsys):
    # a synthetic "real" pair whose quarter-dose noise is the simulator's Hann-kernel noise at 25 HU
    clean = phantom(96)
    hann_noise = simulate_ct_noise(clean, 25.0, kernel="hann", rng=np.random.default_rng(5)) - clean
    np.save(tmp_path / "full_dose_hu.npy", clean)
    np.save(tmp_path / "quarter_dose_hu.npy", clean + np.sqrt(1.25) * hann_noise)
    out = tmp_path / "eval"
    code = evaluate.main(["--real-ldct-pair", str(tmp_path), "--methods", "noisy,cad,model", "--model", "tiny-ct",
                          "--models-dir", str(tiny_model_dir), "--device", "cpu", "--out", str(out)])
    assert code == 0
    assert (out / "nps.png").stat().st_size > 5000 and (out / "comparison.png").stat().st_size > 1000
    report = json.loads((out / "metrics.json").read_text())
    spectra = report["noise_power_spectrum"]
    assert spectra["noise_hu"] == pytest.approx(25.0, rel=0.02)  # the sqrt(1.25) correction
    distances = {k: v["l1"] for k, v in spectra["kernels"].items()}
    assert set(distances) == set(CT_KERNELS)
    assert min(distances, key=distances.get) == "hann" and distances["ramp"] > 3 * distances["hann"]
    printed = capsys.readouterr().out
    assert all(f"kernel {k}" in printed for k in CT_KERNELS)
    table = (out / "table.md").read_text()
    assert "curvature anisotropic diffusion, Slicer defaults" in table and "model tiny-ct" in table
    assert "BM3D" not in table and report["window"] == "[-160, 240] HU"


def test_strength_scales_the_models_removed_noise_and_names_the_row(tiny_model_dir, capsys):
    noisy, clean = noisy_stack(slices=2, size=48, hu=20.0)
    runs = {strength: evaluate.evaluate(noisy, clean, "CT", methods=("model",), models=["tiny-ct"], models_dirs=(str(tiny_model_dir),),
                                        device="cpu", branches=False, strength=strength, log=lambda *_: None)[1]
            for strength in (1.0, 0.4)}
    full, partial = runs[1.0]["model tiny-ct"], runs[0.4]["model tiny-ct, strength 0.4"]
    assert np.abs(noisy - full).max() > 1.0
    np.testing.assert_allclose(noisy - partial, 0.4 * (noisy - full), atol=1e-3)
    assert evaluate.main(["--clean", "x.nii.gz", "--strength", "1.5"]) == 2
    assert "--strength must be between 0 and 1, got 1.5" in capsys.readouterr().err


def test_the_self_ensemble_reaches_the_models_and_names_the_row(tmp_path):
    from conftest import write_tiny_model

    from MedGANDenoiseLib.engine import denoise_volume
    from MedGANDenoiseLib.registry import ModelRegistry, load_model

    folder = write_tiny_model(tmp_path / "models", jitter=0.05)
    noisy, clean = noisy_stack(slices=2, size=48, hu=20.0)
    summaries, outputs, _ = evaluate.evaluate(noisy, clean, "CT", methods=("model",), models=["tiny-ct"], models_dirs=(str(folder),),
                                              device="cpu", branches=False, ensemble=4, log=lambda *_: None)
    assert list(outputs) == ["model tiny-ct, self-ensemble x4"] and summaries["model tiny-ct, self-ensemble x4"]["ensemble"] == 4
    model = load_model(ModelRegistry.from_folders([folder]).get("tiny-ct"))
    expected = {n: denoise_volume(noisy, model, "CT", device="cpu", ensemble=n).denoised for n in (1, 4)}
    np.testing.assert_allclose(outputs["model tiny-ct, self-ensemble x4"], expected[4], atol=1e-3)
    assert np.abs(expected[4] - expected[1]).max() > 0.1, "the ensemble is another computation than one pass"
    with pytest.raises(SystemExit):
        evaluate.main(["--clean", "x.nii.gz", "--ensemble", "3"])


def test_command_reports_an_unknown_method_or_model(tmp_path, tiny_model_dir, capsys):
    noisy, clean = noisy_stack(slices=1, size=48)
    np.save(tmp_path / "quarter_dose_hu.npy", noisy[0])
    np.save(tmp_path / "full_dose_hu.npy", clean[0])
    assert evaluate.main(["--real-ldct-pair", str(tmp_path), "--methods", "bm4d", "--out", str(tmp_path / "a")]) == 2
    assert "bm4d" in capsys.readouterr().err
    assert evaluate.main(["--real-ldct-pair", str(tmp_path), "--methods", "model", "--model", "nope",
                          "--models-dir", str(tiny_model_dir), "--out", str(tmp_path / "b")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_a_two_d_image_is_degraded_whole_and_cut_into_tiles(tmp_path):
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    image = (rng.random((1, 100, 130)) * 400 + 100).astype(np.float32)
    path = tmp_path / "xray.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    noisy, clean = evaluate.simulated_stack(str(path), "gaussian:sigma=0.05", ":", seed=3, tile=48)
    assert clean.shape == (4, 48, 48), "2 x 2 whole tiles fit in 100 x 130; the remainder is left out"
    np.testing.assert_array_equal(clean[1], image[0, 0:48, 48:96])
    whole, _ = evaluate.simulated_stack(str(path), "gaussian:sigma=0.05", ":", seed=3)
    np.testing.assert_array_equal(noisy[3], whole[0, 48:96, 48:96])  # the same noise as the whole image's
    with pytest.raises(ValueError, match="larger than"):
        evaluate.simulated_stack(str(path), "gaussian:sigma=0.05", ":", seed=3, tile=120)
    image[0, :48, :48] = 250.0  # a constant region, as a detector's saturated background
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    noisy, clean = evaluate.simulated_stack(str(path), "gaussian:sigma=0.05", ":", seed=3, tile=48)
    assert clean.shape == (3, 48, 48) and not np.any([np.ptp(c) == 0 for c in clean]), "the blank tile is left out"


def test_noise_draws_follow_one_another_with_consecutive_seeds(tmp_path, capsys):
    import SimpleITK as sitk

    rng = np.random.default_rng(1)
    volume = (rng.random((2, 100, 100)) * 200 + 20).astype(np.float32)
    path = tmp_path / "us.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path))
    spec = "us_speckle:strength=0.5,db=60"
    first, clean_one = evaluate.simulated_stack(str(path), spec, ":", seed=5, tile=48)
    second, _ = evaluate.simulated_stack(str(path), spec, ":", seed=6, tile=48)
    both, clean_both = evaluate.simulated_stack(str(path), spec, ":", seed=5, tile=48, draws=2)
    assert len(clean_one) == 8 and len(both) == 16, "2 slices x 4 tiles, twice"
    np.testing.assert_array_equal(both[:8], first)
    np.testing.assert_array_equal(both[8:], second)
    np.testing.assert_array_equal(clean_both, np.concatenate([clean_one, clean_one]))
    assert not np.array_equal(first, second), "each draw has its own noise"
    with pytest.raises(ValueError, match="at least 1"):
        evaluate.simulated_stack(str(path), spec, ":", seed=5, draws=0)
    out = tmp_path / "eval"
    assert evaluate.main(["--clean", str(path), "--modality", "US", "--slices", ":", "--tile", "48", "--degradation", spec,
                          "--draws", "2", "--methods", "noisy,cad", "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert "2 noise draws (seeds 1234-1235" in table and "over 16 slices" in table
    report = json.loads((out / "metrics.json").read_text())
    assert len(report["methods"]["noisy input"]["per_slice"]["psnr"]) == 16
