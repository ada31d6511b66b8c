"""Real training runs on a tiny scan: export, metrics reproduction, resume, torchrun with gloo."""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedGANDenoiseLib.engine import denoise_volume
from MedGANDenoiseLib.registry import ModelRegistry, load_model
from medgan_training import train as training
from medgan_training.metrics import slice_metrics, summarize, window_for


def write_phantom(path: Path, slices: int = 12, size: int = 40) -> Path:
    """A small CT-like scan in HU: air around a water disc holding a bone ring and a dense dot."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    radius = np.hypot(yy, xx)
    volume = np.full((slices, size, size), -1000.0, dtype=np.float32)
    for k in range(slices):
        volume[k][radius < size * 0.42] = 40.0
        volume[k][(radius > size * 0.30) & (radius < size * 0.36)] = 900.0
        volume[k][np.hypot(yy - 3 + k % 3, xx + 4) < 3] = 200.0
    image = sitk.GetImageFromArray(volume.astype(np.int16))
    image.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(image, str(path))
    return path


def tiny_args(scan: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--clean", str(scan), "--modality", "CT", "--degradation", "gaussian:sigma=0.03",
        "--patch-size", "32", "--batch-size", "4", "--samples-per-epoch", "16", "--variants-per-slice", "1",
        "--width", "4", "--depth", "2", "--disc-width", "8", "--val-slices", "2", "--val-fraction", "0.25",
        "--out", str(out), "--sim-cache", str(out.parent / "sim_cache"), *extra,
    ]


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    return write_phantom(tmp_path_factory.mktemp("scan") / "phantom.nii.gz")


def test_run_writes_log_pictures_checkpoint_and_exported_model_reproduces_metrics(scan, tmp_path):
    export = tmp_path / "models"
    args = tiny_args(scan, tmp_path / "run", "--epochs", "2", "--warmup-epochs", "1", "--export", str(export), "--model-id", "tiny-ct")
    training.main(args)

    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["loss_d"]) > 0, "the adversarial term must be on after the warm-up epoch"
    assert float(rows[0]["loss_d"]) == 0, "the warm-up epoch trains with L1 only"
    assert all(r["window"] == "[-160, 240] HU" for r in rows)
    for name in ("loss_curve.png", "panel_epoch001.png", "panel_epoch002.png", "checkpoint.pt"):
        assert (tmp_path / "run" / name).stat().st_size > 0

    card = ModelRegistry.from_folders([export]).get("tiny-ct")
    assert card.modality == "CT" and card.variant == "unet"
    assert card.training["degradation"] == "gaussian:sigma=0.03"
    assert "medgan-train" in card.training["command"]
    model = load_model(card)
    # the same held-out slices, rebuilt from the same configuration, through the engine
    _, val_pairs, _ = training.build_training_data(training.parse_args(args))
    def engine_metrics(precision: str) -> dict[str, float]:
        return summarize([slice_metrics(denoise_volume(v.noisy, model, "CT", device="cpu", precision=precision,
                                                       normalization=v.params).denoised, v.clean,
                                        window_for("CT", v.clean)) for v in val_pairs])

    reproduced = engine_metrics("fp32")  # the card's metrics are measured in float32 on the stored (fp16) weights
    assert reproduced["psnr"] == pytest.approx(card.metrics["validation"]["psnr"], abs=1e-4)
    assert reproduced["ssim"] == pytest.approx(card.metrics["validation"]["ssim"], abs=1e-6)
    # what users run by default (bf16 predictors where the CPU has them) agrees closely
    assert engine_metrics("auto")["psnr"] == pytest.approx(reproduced["psnr"], abs=0.02)
    assert "content_psnr" in rows[1] and float(rows[1]["content_psnr"]) > 0, "each branch is logged"
    weights = torch.load(card.path, weights_only=True)
    assert any(v.dtype == torch.float16 for v in weights.values()), "convolution weights are stored as fp16"
    assert weights["fusion.weight"].dtype == torch.float32, "the fusion keeps float32"


@pytest.mark.parametrize("metric", ["psnr", "ssim"])
def test_the_exported_epoch_is_the_best_one_on_the_chosen_validation_metric(scan, tmp_path, metric):
    export = tmp_path / "models"
    training.main(tiny_args(scan, tmp_path / "run", "--epochs", "4", "--lr", "3e-3", "--gan-loss", "none", "--select-on",
                            metric, "--export", str(export), "--model-id", "tiny-ct", "--no-calibrate-fusion",
                            "--bn-recalibration-batches", "0"))
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    scores = [float(r[f"val_{metric}"]) for r in rows]
    card = ModelRegistry.from_folders([export]).get("tiny-ct")
    assert card.metrics["epoch"] == 1 + scores.index(max(scores))
    # the card's figures are measured again after export rounds the weights to float16 (a few 1e-6 dB
    # on this run), far below the gaps between epochs
    others = sorted(scores)[:-1]
    assert card.metrics["validation"][metric] == pytest.approx(max(scores), abs=1e-4)
    assert all(abs(card.metrics["validation"][metric] - s) > 1e-3 for s in others)


def test_select_on_last_exports_the_final_epoch_and_re_exports_a_finished_run(scan, tmp_path):
    common = ("--lr", "3e-3", "--gan-loss", "none", "--model-id", "tiny-ct", "--no-calibrate-fusion",
              "--bn-recalibration-batches", "0")
    training.main(tiny_args(scan, tmp_path / "run", "--epochs", "4", "--export", str(tmp_path / "best"), *common))
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    scores = [float(r["val_psnr"]) for r in rows]
    assert scores.index(max(scores)) != 3, "this run's best epoch is not its last"
    best = ModelRegistry.from_folders([tmp_path / "best"]).get("tiny-ct")
    assert best.metrics["epoch"] == 1 + scores.index(max(scores))
    # the finished run exported again with its final weights; nothing is trained
    training.main(tiny_args(scan, tmp_path / "run", "--epochs", "4", "--resume", "--select-on", "last",
                            "--export", str(tmp_path / "last"), *common))
    last = ModelRegistry.from_folders([tmp_path / "last"]).get("tiny-ct")
    assert last.metrics["epoch"] == 4 and len(list(csv.DictReader(open(tmp_path / "run" / "log.csv")))) == 4
    assert last.metrics["validation"]["psnr"] == pytest.approx(scores[3], abs=1e-3)
    final = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["generator"]
    exported = torch.load(last.path, weights_only=True)
    assert all(torch.equal(exported[k].float(), final[k].to(exported[k].dtype).float()) for k in exported)
    # and a run that selects the last epoch from the start exports it too
    training.main(tiny_args(scan, tmp_path / "direct", "--epochs", "3", "--select-on", "last",
                            "--export", str(tmp_path / "direct_export"), *common))
    assert ModelRegistry.from_folders([tmp_path / "direct_export"]).get("tiny-ct").metrics["epoch"] == 3


def test_selection_follows_the_chosen_metric_where_psnr_and_ssim_disagree():
    best = {"validation": {"psnr": 30.0, "ssim": 0.90}}
    sharper = {"psnr": 29.8, "ssim": 0.92}  # lower PSNR, higher SSIM
    assert training.improves_on(sharper, best, "ssim") and not training.improves_on(sharper, best, "psnr")
    assert training.improves_on(sharper, {}, "psnr"), "the first epoch always counts"


def test_an_unknown_selection_metric_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        training.parse_args(["--clean", "x.nii.gz", "--select-on", "loss"])
    assert "--select-on must be psnr, ssim or last" in capsys.readouterr().err


def write_mr_phantom(path: Path, slices: int = 24, size: int = 48) -> Path:
    """An MR-like scan in arbitrary units: dark background around a head of two tissues, the same
    anatomy on every slice so that a slab and the whole volume share their intensity statistics."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    radius = np.hypot(yy, xx)
    image = np.zeros((size, size), np.float32)
    image[radius < size * 0.42] = 300.0
    image[radius < size * 0.30] = 700.0
    image[(np.abs(yy) < 3) & (radius < size * 0.30)] = 450.0
    volume = np.repeat(image[None], slices, axis=0)
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path))
    return path


def test_normalisation_is_fitted_on_the_degraded_image_in_training_validation_and_inference(tmp_path):
    """The percentile normalisation of MR/PET: training patches, validation slices and the engine
    must all see the scale of the noisy image, the only one a user has."""
    from MedGANDenoiseLib.normalization import default_normalizer
    from medgan_training.degradations import make_degradation

    path = write_mr_phantom(tmp_path / "mr.nii.gz")
    spec = "rician:sigma=0.08"
    args = ["--clean", str(path), "--modality", "MR", "--degradation", spec, "--variants-per-slice", "1",
            "--val-fraction", "0.25", "--val-slices", "3", "--patch-size", "32", "--width", "4", "--depth", "2", "--sim-cache", "", "--out", str(tmp_path / "run")]
    dataset, val_pairs, _ = training.build_training_data(training.parse_args(args))
    train_params = dataset.pairs[0].params
    assert all(p.params == train_params for p in dataset.pairs), "one normalisation per scan"
    val_params = val_pairs[0].params

    clean = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    degrade = make_degradation(spec)
    rng = np.random.default_rng(7)
    noisy_volume = np.stack([degrade(s, rng) for s in clean])  # what a user brings to the engine
    normalizer = default_normalizer("MR")
    inference_params, clean_params = normalizer.fit(noisy_volume), normalizer.fit(clean)

    def relative_difference(a, b) -> float:
        return max(abs(a.offset - b.offset), abs(a.scale - b.scale)) / b.scale

    assert relative_difference(train_params, inference_params) < 0.02
    assert relative_difference(val_params, inference_params) < 0.02
    assert relative_difference(clean_params, inference_params) > 0.05, "the test must tell a clean-image fit apart"

    # the engine fits that same normalisation itself when none is given
    model_card = training.card_for(training.parse_args(args))
    from MedGANDenoiseLib.registry import LoadedModel
    from MedGANDenoiseLib.networks import build_generator

    generator = build_generator(**model_card.architecture).eval()
    model = LoadedModel(card=model_card, generator=generator)
    fitted = denoise_volume(noisy_volume, model, "MR", device="cpu", precision="fp32")
    given = denoise_volume(noisy_volume, model, "MR", device="cpu", precision="fp32", normalization=inference_params)
    other = denoise_volume(noisy_volume, model, "MR", device="cpu", precision="fp32", normalization=clean_params)
    np.testing.assert_array_equal(fitted.denoised, given.denoised)
    assert np.abs(other.denoised - fitted.denoised).max() > 0, "the normalisation given is the one used"


def test_two_d_images_train_on_some_images_and_validate_on_others(tmp_path):
    """X-ray and ultrasound come as single 2-D images: no slab can be held out of one, so whole
    images are held out with --val-clean and never trained on."""
    rng = np.random.default_rng(0)
    paths = []
    for name in ("train_a", "train_b", "held_out"):
        image = sitk.GetImageFromArray((rng.random((1, 64, 80)) * 500 + 100).astype(np.float32))
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
        paths.append(tmp_path / f"{name}.nii.gz")
    args = ["--clean", str(paths[0]), str(paths[1]), "--val-clean", str(paths[2]), "--modality", "XRAY",
            "--degradation", "gaussian:sigma=0.05", "--variants-per-slice", "2", "--patch-size", "32", "--sim-cache", "",
            "--out", str(tmp_path / "run")]
    dataset, val_pairs, info = training.build_training_data(training.parse_args(args))
    held_out = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[2])))[0]
    assert len(val_pairs) == 1 and np.array_equal(val_pairs[0].clean, held_out)
    assert len(dataset.pairs) == 4, "both training images, two degraded versions each"
    assert not any(np.array_equal(p.clean, held_out) for p in dataset.pairs)
    assert info["scans"][2]["validation_only"] and info["scans"][2]["train_slices"] == 0
    assert [p.scan for p in dataset.pairs] == [0, 0, 1, 1], "each pair knows the scan it was cut from"
    balanced, _, _ = training.build_training_data(training.parse_args(args + ["--balance-scans"]))
    assert balanced._pairs_of_scan == [[0, 1], [2, 3]] and dataset._pairs_of_scan is None
    with pytest.raises(ValueError, match="no validation slices"):
        training.build_training_data(training.parse_args(args[:3] + args[5:]))


def test_zoom_adds_each_training_image_at_a_coarser_pixel_and_leaves_validation_alone(tmp_path):
    """--zoom 1,0.5: every training image also enters at half its size, anti-aliased (its own
    fine texture averaged away, its mean kept); held-out images stay as they are."""
    rng = np.random.default_rng(1)
    paths = []
    for name in ("train", "held_out"):
        image = sitk.GetImageFromArray((rng.random((1, 96, 128)) * 200 + 20).astype(np.float32))
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
        paths.append(tmp_path / f"{name}.nii.gz")
    args = ["--clean", str(paths[0]), "--val-clean", str(paths[1]), "--modality", "US",
            "--degradation", "gaussian:sigma=0.05", "--variants-per-slice", "2", "--patch-size", "32", "--sim-cache", "",
            "--out", str(tmp_path / "run"), "--zoom", "1,0.5"]
    dataset, val_pairs, info = training.build_training_data(training.parse_args(args))
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[0])))[0]
    shapes = sorted({p.clean.shape for p in dataset.pairs})
    assert shapes == [(48, 64), (96, 128)] and len(dataset.pairs) == 4 and info["zoom"] == [1.0, 0.5]
    half = next(p.clean for p in dataset.pairs if p.clean.shape == (48, 64))
    assert abs(half.mean() - original.mean()) < 1.0, "resampling keeps the intensity level"
    assert half.std() < 0.7 * original.std(), "anti-aliasing averages the pixel-scale texture"
    half_pairs = [p for p in dataset.pairs if p.clean.shape == (48, 64)]
    assert not np.array_equal(half_pairs[0].noisy, half_pairs[1].noisy), "each version degraded on its own"
    assert val_pairs[0].clean.shape == (96, 128)
    with pytest.raises(ValueError, match="smaller than the 32-pixel patches"):
        training.build_training_data(training.parse_args(args[:-1] + ["1,0.25"]))
    finer, _, info = training.build_training_data(training.parse_args(args[:-1] + ["1.5"]))
    assert {p.clean.shape for p in finer.pairs} == {(144, 192)} and info["zoom"] == [1.5]
    assert abs(finer.pairs[0].clean.mean() - original.mean()) < 1.0, "upsampling keeps the intensity level"
    for bad in ("0", "2.5", "a,b"):
        with pytest.raises(SystemExit):
            training.parse_args(args[:-1] + [bad])


def test_gain_db_adds_each_training_image_with_its_display_lowered_and_clipped_at_the_floor(tmp_path, monkeypatch):
    """--gain-db 0,-12 (of a 60 dB display): every training image also enters 12/60 of its grey
    range darker, clipped at its floor, with a foreground threshold lowered with it; held-out
    images stay as they are."""
    rng = np.random.default_rng(2)
    paths = []
    for name in ("train", "held_out"):
        image = (rng.random((1, 64, 64)) * 200 + 20).astype(np.float32)
        image[0, :, :8] = 0.0  # the black outside an ultrasound sector: the display's floor
        sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / f"{name}.nii.gz"))
        paths.append(tmp_path / f"{name}.nii.gz")
    args = ["--clean", str(paths[0]), "--val-clean", str(paths[1]), "--modality", "US",
            "--degradation", "us_speckle:strength=0.5,db=60", "--variants-per-slice", "2", "--patch-size", "32",
            "--sim-cache", "", "--out", str(tmp_path / "run"), "--gain-db", "0,-12"]
    seeds, simulate = [], training.simulate_pairs
    monkeypatch.setattr(training, "simulate_pairs", lambda clean, degrade, variants, seed, *rest, **options:
                        seeds.append(seed) or simulate(clean, degrade, variants, seed, *rest, **options))
    dataset, val_pairs, info = training.build_training_data(training.parse_args(args))
    assert seeds == [0, 100_000], "the gain-0 copy keeps the seed (and cache) of a run without --gain-db"
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[0])))[0]
    assert len(dataset.pairs) == 4 and info["gain_db"] == [0.0, -12.0] and info["display_db"] == 60.0
    as_is, lowered = dataset.pairs[0], dataset.pairs[2]
    np.testing.assert_array_equal(as_is.clean, original)
    shift = original.max() * 12 / 60
    np.testing.assert_allclose(lowered.clean, np.maximum(original - shift, 0.0), atol=1e-4)
    assert (lowered.clean == 0).mean() > (original == 0).mean(), "tissue darker than the shift reaches the floor"
    assert lowered.noisy.min() >= 0.0 and not np.array_equal(lowered.noisy, as_is.noisy)
    assert lowered.foreground == pytest.approx(max(as_is.foreground - shift, original.max() * 1e-3))
    np.testing.assert_array_equal(val_pairs[0].clean, sitk.GetArrayFromImage(sitk.ReadImage(str(paths[1])))[0])
    slight, _, _ = training.build_training_data(training.parse_args(args[:-1] + ["0,-3"]))
    assert slight.pairs[2].foreground == pytest.approx(as_is.foreground - original.max() * 3 / 60), \
        "a small gain lowers the tissue threshold by as much as the tissue"
    default, _, info = training.build_training_data(training.parse_args(args[:-2]))
    assert len(default.pairs) == 2 and "gain_db" not in info
    for bad in ("6", "-40", "a", ""):
        with pytest.raises(SystemExit):
            training.parse_args(args[:-1] + [bad])
    with pytest.raises(SystemExit):
        training.parse_args(args + ["--display-db", "0"])
    paired = ["--low", str(tmp_path), "--high", str(tmp_path), "--modality", "US", "--out", str(tmp_path / "p")]
    assert training.parse_args(paired).gain_db == "0"
    for flag, value in (("--gain-db", "0,-6"), ("--zoom", "1,0.5")):
        with pytest.raises(SystemExit):  # a real pair's quality is not ours to change
            training.parse_args(paired + [flag, value])


def generator_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["generator"]


def test_resume_continues_to_the_same_weights_as_an_uninterrupted_run(scan, tmp_path):
    training.main(tiny_args(scan, tmp_path / "straight", "--epochs", "2", "--gan-loss", "bce"))
    training.main(tiny_args(scan, tmp_path / "resumed", "--epochs", "1", "--gan-loss", "bce"))
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["epoch"] == 0
    training.main(tiny_args(scan, tmp_path / "resumed", "--epochs", "2", "--gan-loss", "bce", "--resume"))

    straight, resumed = generator_state(tmp_path / "straight" / "checkpoint.pt"), generator_state(tmp_path / "resumed" / "checkpoint.pt")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)
    assert len(list(csv.DictReader(open(tmp_path / "resumed" / "log.csv")))) == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo_stay_in_sync_and_checkpoint_resumes_on_one(scan, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "medgan_training.train", *tiny_args(scan, out, "--epochs", "1")]
    done = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    checksums = dict(re.findall(r"rank (\d): generator parameter checksum ([-+0-9.e]+)", done.stdout))
    assert set(checksums) == {"0", "1"}, done.stdout[-2000:]
    assert checksums["0"] == checksums["1"]

    result = training.train(training.parse_args(tiny_args(scan, out, "--epochs", "2", "--resume")))
    assert result["metrics"]["epoch"] in (1, 2)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert json.loads(torch.load(out / "checkpoint.pt", weights_only=True)["config"])["epochs"] == 2


def test_missing_data_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        training.parse_args(["--modality", "CT"])
    assert "--clean" in capsys.readouterr().err


def test_downscale_reaches_the_card_and_is_refused_for_the_unet(capsys):
    args = ["--clean", "scan.nii.gz", "--variant", "dncnn", "--width", "32", "--depth", "9", "--downscale", "2"]
    assert training.parse_args(args).architecture()["predictor"] == {"width": 32, "num_layers": 9, "downscale": 2}
    assert "downscale" not in training.parse_args(args[:-2]).architecture()["predictor"], "old cards stay as they were"
    for bad in (["--variant", "unet", "--downscale", "2"], ["--variant", "dncnn", "--downscale", "0"]):
        with pytest.raises(SystemExit):
            training.parse_args(["--clean", "scan.nii.gz", *bad])
        assert "--downscale" in capsys.readouterr().err


def test_init_from_starts_from_an_exported_model_and_refuses_another_architecture(scan, tmp_path, capsys):
    first = tmp_path / "first"
    training.main(tiny_args(scan, tmp_path / "run1", "--epochs", "1", "--export", str(first), "--model-id", "tiny-start"))
    start = dict(load_model(ModelRegistry.from_folders([first]).get("tiny-start")).generator.named_parameters())

    # learning rate 0: the fine-tuned weights must come out exactly as they went in (BatchNorm's
    # running statistics do move: they follow the new data)
    second = tmp_path / "second"
    training.main(tiny_args(scan, tmp_path / "run2", "--epochs", "1", "--lr", "0", "--no-calibrate-fusion",
                            "--init-from", str(first), "--export", str(second), "--model-id", "tiny-tuned"))
    tuned = dict(load_model(ModelRegistry.from_folders([second]).get("tiny-tuned")).generator.named_parameters())
    assert tuned.keys() == start.keys()
    assert all(torch.equal(tuned[k], start[k]) for k in start)
    fresh = training.build_generator(**training.parse_args(tiny_args(scan, tmp_path / "x")).architecture()).state_dict()
    assert not all(torch.equal(fresh[k].float(), start[k].float()) for k in start if k.endswith("weight"))

    assert ModelRegistry.from_folders([second]).get("tiny-tuned").metrics["epoch"] in (0, 1)

    # a folder holding several models: FOLDER:ID picks one
    training.main(tiny_args(scan, tmp_path / "run5", "--epochs", "1", "--export", str(first), "--model-id", "tiny-other"))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        training.parse_args(tiny_args(scan, tmp_path / "run6", "--init-from", str(first)))
    assert "FOLDER:ID" in capsys.readouterr().err
    assert training.parse_args(tiny_args(scan, tmp_path / "run6", "--init-from", f"{first}:tiny-start")).init_from

    with pytest.raises(SystemExit):
        training.parse_args(tiny_args(scan, tmp_path / "run3", "--width", "6", "--init-from", f"{first}:tiny-start"))
    assert "architecture" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        training.parse_args(tiny_args(scan, tmp_path / "run4", "--init-from", "no-such-model"))
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_no_batch_norm_folds_a_batchnorm_dncnn_into_the_same_outputs_and_trains_on(scan, tmp_path, capsys):
    dncnn = ("--variant", "dncnn", "--downscale", "2", "--depth", "4")
    first = tmp_path / "first"
    training.main(tiny_args(scan, tmp_path / "run1", *dncnn, "--epochs", "1", "--export", str(first),
                            "--model-id", "tiny-bn"))
    bn_model = load_model(ModelRegistry.from_folders([first]).get("tiny-bn")).generator.eval()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bn_model.modules())
    cfg = training.parse_args(tiny_args(scan, tmp_path / "run2", *dncnn, "--no-batch-norm", "--init-from", str(first)))
    folded = training.build_generator(**cfg.architecture())
    folded.load_state_dict(training.starting_weights(training.initial_model_card(str(first), cfg), cfg))
    folded.eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 1, 24, 20)
    with torch.no_grad():
        for a, b in zip(bn_model(x), folded(x)):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)

    # the run: its epoch 0 (the folded start) validates as the BatchNorm model does, and the export
    # is a BatchNorm-free DnCNN the registry rebuilds
    second = tmp_path / "second"
    capsys.readouterr()
    training.main(tiny_args(scan, tmp_path / "run2", *dncnn, "--no-batch-norm", "--init-from", str(first),
                            "--epochs", "2", "--ema-decay", "0.9", "--export", str(second), "--model-id", "tiny-free"))
    log = capsys.readouterr().out
    card = ModelRegistry.from_folders([second]).get("tiny-free")
    assert card.architecture["predictor"]["batch_norm"] is False
    free = load_model(card).generator
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in free.modules())
    start = ModelRegistry.from_folders([first]).get("tiny-bn").metrics["validation"]["psnr"]
    epoch0 = float(re.search(r"epoch 0 \(--init-from [^)]*\): PSNR ([0-9.]+)", log).group(1))
    assert abs(epoch0 - start) < 0.01, (epoch0, start)

    with pytest.raises(SystemExit):
        training.parse_args(tiny_args(scan, tmp_path / "run3", "--variant", "unet", "--no-batch-norm"))
    assert "--no-batch-norm applies to --variant dncnn only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        training.parse_args(tiny_args(scan, tmp_path / "run3", *dncnn, "--no-batch-norm",
                                      "--bn-recalibration-each-epoch", "5"))
    assert "drop one of the two" in capsys.readouterr().err


@pytest.mark.parametrize("narrow_has_batch_norm", [False, True])  # True: folded, then widened
def test_a_larger_width_widens_a_batchnorm_free_dncnn_from_the_same_outputs(scan, tmp_path, capsys,
                                                                            narrow_has_batch_norm):
    dncnn = ("--variant", "dncnn", "--downscale", "2", "--depth", "4", "--no-batch-norm")
    narrow = tmp_path / "narrow"
    training.main(tiny_args(scan, tmp_path / "run1", *(dncnn[:-1] if narrow_has_batch_norm else dncnn), "--epochs", "1",
                            "--export", str(narrow), "--model-id", "tiny-w4"))
    wide_args = ("--width", "7", "--init-from", str(narrow))
    cfg = training.parse_args(tiny_args(scan, tmp_path / "run2", *dncnn, *wide_args))
    start = training.build_generator(**cfg.architecture())
    start.load_state_dict(training.starting_weights(training.initial_model_card(str(narrow), cfg), cfg))
    narrow_model = load_model(ModelRegistry.from_folders([narrow]).get("tiny-w4")).generator.eval()
    x = torch.randn(2, 1, 24, 20)
    with torch.no_grad():
        for a, b in zip(narrow_model(x), start.eval()(x)):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)

    wide = tmp_path / "wide"
    capsys.readouterr()
    training.main(tiny_args(scan, tmp_path / "run2", *dncnn, *wide_args, "--epochs", "2", "--export", str(wide),
                            "--model-id", "tiny-w7"))
    log = capsys.readouterr().out
    before = ModelRegistry.from_folders([narrow]).get("tiny-w4").metrics["validation"]["psnr"]
    epoch0 = float(re.search(r"epoch 0 \(--init-from [^)]*\): PSNR ([0-9.]+)", log).group(1))
    assert abs(epoch0 - before) < 0.01, (epoch0, before)
    card = ModelRegistry.from_folders([wide]).get("tiny-w7")
    assert card.architecture["predictor"]["width"] == 7
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in load_model(card).generator.modules())
    trained = torch.load(tmp_path / "run2" / "checkpoint.pt", weights_only=True)["generator"]
    assert trained["noise_predictor.3.weight"][:4, 4:].abs().sum() > 0, "training moved the zeros: new channels count"

    with pytest.raises(SystemExit):  # narrowing is not offered
        training.parse_args(tiny_args(scan, tmp_path / "run3", *dncnn, "--width", "3", "--init-from", str(wide)))
    assert "a DnCNN widens with --no-batch-norm and a larger --width" in capsys.readouterr().err


def test_paired_folders_train(tmp_path):
    low_dir, high_dir = tmp_path / "low", tmp_path / "high"
    low_dir.mkdir()
    high_dir.mkdir()
    clean_path = write_phantom(high_dir / "case1.nii.gz")
    clean = sitk.ReadImage(str(clean_path))
    noisy = sitk.GetArrayFromImage(clean).astype(np.float32) + np.random.default_rng(0).normal(0, 30, (12, 40, 40))
    image = sitk.GetImageFromArray(noisy.astype(np.float32))
    image.CopyInformation(clean)
    sitk.WriteImage(image, str(low_dir / "case1.nii.gz"))
    args = ["--low", str(low_dir), "--high", str(high_dir), *tiny_args(clean_path, tmp_path / "run", "--epochs", "1")[2:]]
    result = training.train(training.parse_args(args))
    assert result["metrics"]["val_degradation"] == "paired data"
    assert result["metrics"]["noisy_input"]["psnr"] < 40  # the real noise was measured, not a simulated one
    # a second pair of scans: --balance-scans groups the pairs by the pair of scans they came from
    shutil.copy(low_dir / "case1.nii.gz", low_dir / "case2.nii.gz")
    shutil.copy(clean_path, high_dir / "case2.nii.gz")
    dataset, _, info = training.build_training_data(training.parse_args(args + ["--balance-scans"]))
    assert len(info["scans"]) == 2 and [p.scan for p in dataset.pairs] == [0] * (len(dataset.pairs) // 2) + [1] * (len(dataset.pairs) // 2)
    assert len(dataset._pairs_of_scan) == 2


def test_fusion_refit_is_the_best_convex_combination_on_training_patches(scan, tmp_path):
    cfg = training.parse_args(tiny_args(scan, tmp_path / "run"))
    train_set, _, _ = training.build_training_data(cfg)
    torch.manual_seed(0)
    generator = training.build_generator(**cfg.architecture())
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    for i in range(12):  # a few real steps, so the two branches make different errors, as trained ones do
        noisy, clean = (torch.stack(t) for t in zip(*(train_set[4 * i + k] for k in range(4))))
        _, content, noise = generator(noisy)
        optimizer.zero_grad()
        ((content - clean).abs().mean() + (noise - noisy + clean).abs().mean()).backward()
        optimizer.step()
    weights = training.calibrate_fusion(generator, train_set, torch.device("cpu"), patches=16)
    assert generator.fusion.weight.flatten().tolist() == pytest.approx(weights[:2], abs=1e-6)
    assert 0 <= weights[0] <= 1 and weights[0] + weights[1] == pytest.approx(1.0)
    assert float(generator.fusion.bias.detach()) == 0.0, "each branch is unbiased on its own: the fusion adds no constant"

    def mean_squared_errors() -> tuple[float, float, float]:
        fused, content, second = [], [], []
        with torch.inference_mode():
            for i in range(16):
                noisy, clean = train_set[i]
                y, c, n = generator(noisy[None])
                fused.append(((y - clean) ** 2).mean())
                content.append(((c - clean) ** 2).mean())
                second.append(((noisy - n - clean) ** 2).mean())
        return tuple(float(torch.stack(v).mean()) for v in (fused, content, second))

    fused, content, second = mean_squared_errors()
    assert fused <= min(content, second) * (1 + 1e-4), "the fit can always choose either branch alone"
    inward = 0.05 if weights[0] < 0.5 else -0.05  # a may sit on a bound of [0, 1]
    with torch.no_grad():
        generator.fusion.weight += torch.tensor([inward, -inward]).view(1, 2, 1, 1)
    assert mean_squared_errors()[0] > fused, "moving the fitted weight makes it worse"


@pytest.mark.parametrize("variant, predictor", [
    ("unet", {"base_width": 4, "depth": 2}),
    ("dncnn", {"width": 8, "num_layers": 5}),
    ("srdensenet", {"growth_rate": 4, "num_blocks": 2, "convs_per_block": 2, "bottleneck_width": 8}),
    ("dncnn", {"width": 8, "num_layers": 5, "downscale": 2}),
    ("dncnn", {"width": 8, "num_layers": 5, "batch_norm": False}),
    ("srdensenet", {"growth_rate": 4, "num_blocks": 2, "convs_per_block": 2, "bottleneck_width": 8, "downscale": 2}),
])
def test_each_predictor_variant_learns_in_a_few_steps(variant, predictor):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32] / 32.0
    clean = torch.from_numpy(np.stack([0.25 + 0.02 * np.sin(6 * (xx + k) * yy) for k in range(8)]).astype(np.float32))[:, None]
    noisy = clean + torch.from_numpy(rng.normal(0, 0.01, clean.shape).astype(np.float32))
    generator = training.build_generator(variant, predictor, residual_content=True)
    optimizer = torch.optim.Adam(generator.parameters(), lr=2e-3)

    def loss() -> torch.Tensor:
        y, c, n = generator(noisy)
        return (y - clean).abs().mean() + (n - (noisy - clean)).abs().mean() + (c - clean).abs().mean()

    first = float(loss().detach())
    for _ in range(100):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    final = float(loss().detach())
    assert final < 0.85 * first, f"{variant}: loss {first:.4f} -> {final:.4f}"


def test_the_ssim_loss_measures_in_normalised_units_what_the_evaluation_measures_in_hu():
    rng = np.random.default_rng(5)
    clean = rng.normal(60, 120, (40, 40))  # partly outside [-160, 240] HU: the loss clips as the metric does
    denoised = clean + rng.normal(0, 30, clean.shape)
    to_units = lambda hu: torch.from_numpy((hu + 1024) / 4096).float()[None, None]
    loss = training.ssim_loss(to_units(denoised), to_units(clean), training.evaluation_window_units("CT"))
    expected = slice_metrics(denoised, clean, window_for("CT", clean))["ssim"]
    assert 1 - float(loss) == pytest.approx(expected, abs=2e-4)
    assert training.evaluation_window_units("MR") == (0.0, 1.0, 0.0)


def test_normalisation_free_srdensenet_keeps_its_activations_at_scale():
    from MedGANDenoiseLib.networks import SRDenseNetPredictor, init_weights

    torch.manual_seed(0)
    predictor = SRDenseNetPredictor(num_blocks=6, convs_per_block=4, growth_rate=16)
    init_weights(predictor)
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        features = [predictor.stem(x)]
        for block in predictor.blocks:
            features.append(block(features[-1]))
    ratio = float(features[-1].std() / features[1].std())
    assert 0.2 < ratio < 5, f"activations changed {ratio:.3g}x over the dense blocks (N(0, 0.02) init shrank them ~10x per block)"


def test_batchnorm_recalibration_averages_the_statistics_of_many_batches_and_leaves_the_weights():
    torch.manual_seed(0)
    generator = training.build_generator("dncnn", {"width": 8, "num_layers": 4}, residual_content=True)
    rng = np.random.default_rng(3)
    data = [(torch.from_numpy(rng.normal(0.25, s, (1, 16, 16)).astype(np.float32)), None) for s in (0.01, 0.05) * 4]
    weights = {k: v.clone() for k, v in generator.named_parameters()}
    first_bn = next(m for m in generator.noise_predictor if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = first_bn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].mean(dim=(0, 2, 3))))
    count = training.recalibrate_batchnorm(generator, data, torch.device("cpu"), batches=4, batch_size=2)
    hook.remove()
    assert count == 2 * 2, "two BatchNorm layers in each of the two predictors"
    torch.testing.assert_close(first_bn.running_mean, torch.stack(seen).mean(dim=0))
    assert first_bn.momentum == 0.1 and not generator.training
    assert all(torch.equal(v, weights[k]) for k, v in generator.named_parameters())
    assert training.recalibrate_batchnorm(training.build_generator("srdensenet", {"growth_rate": 4, "num_blocks": 1}),
                                          data, torch.device("cpu"), batches=4, batch_size=2) == 0


def test_recalibrating_batchnorm_before_each_validation_validates_what_export_would_give(scan, tmp_path):
    """With --bn-recalibration-each-epoch N the statistics the epoch is validated with (and saved with)
    are the plain average over the first N batches of that epoch's patches, as the export's
    re-estimation computes them; without it, the running averages of training."""
    statistics = {}
    for batches in (0, 3):
        out = tmp_path / f"run{batches}"
        args = tiny_args(scan, out, "--variant", "dncnn", "--depth", "4", "--epochs", "2", "--gan-loss", "none", "--bn-recalibration-batches", "0",
                         "--bn-recalibration-each-epoch", str(batches))
        training.main(args)
        state = torch.load(out / "checkpoint.pt", weights_only=True)["generator"]
        generator = training.build_generator(**training.parse_args(args).architecture())
        generator.load_state_dict(state)
        train_set, _, _ = training.build_training_data(training.parse_args(args))
        train_set.set_epoch(1)
        training.recalibrate_batchnorm(generator, train_set, torch.device("cpu"), 3, 4)
        names = [k for k in state if k.endswith("running_mean")]
        assert names
        statistics[batches] = max(float((state[k] - generator.state_dict()[k]).abs().max()) for k in names)
    assert statistics[3] < 1e-6, "the saved statistics are the re-estimated ones"
    assert statistics[0] > 1e-4, "without the option they are training's running averages"
    with pytest.raises(SystemExit):
        training.parse_args(tiny_args(scan, tmp_path / "bad", "--bn-recalibration-each-epoch", "-1"))


def test_weight_average_follows_its_decay_and_takes_the_live_batchnorm_statistics():
    live = training.build_generator(variant="dncnn", predictor={"width": 4, "num_layers": 3})
    average = copy.deepcopy(live)
    start = [p.detach().clone() for p in average.parameters()]
    steps = []
    for step in range(2):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p))
            for b in live.buffers():
                if b.is_floating_point():
                    b.add_(1.0)
        steps.append([p.detach().clone() for p in live.parameters()])
        training.update_ema(average, live, 0.5)
    for a, s0, s1, s2 in zip(average.parameters(), start, *steps):
        torch.testing.assert_close(a.detach(), 0.25 * s0 + 0.25 * s1 + 0.5 * s2)
    for kept, current in zip(average.buffers(), live.buffers()):
        torch.testing.assert_close(kept, current)


def test_ema_run_validates_and_exports_the_average_and_resumes_it(scan, tmp_path):
    """--ema-decay: the epoch's recorded weights are the average, not the live weights; the average
    survives a resume (a resumed run ends on the same average as an uninterrupted one)."""
    ema = ("--ema-decay", "0.7", "--gan-loss", "none", "--variant", "dncnn", "--depth", "3")
    training.main(tiny_args(scan, tmp_path / "straight", "--epochs", "2", *ema))
    state = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    live, average = state["generator"], state["ema_generator"]
    weights = [k for k in live if k.endswith("weight")]
    assert max(float((live[k] - average[k]).abs().max()) for k in weights) > 1e-4
    best = json.loads(state["metrics"])
    assert best["ema_decay"] == 0.7
    if best["epoch"] == 2:  # the best epoch's recorded weights are that epoch's average (the one-epoch run below always checks it)
        for k in weights:
            torch.testing.assert_close(state["best_generator"][k], average[k], rtol=0, atol=0)

    training.main(tiny_args(scan, tmp_path / "resumed", "--epochs", "1", *ema))
    training.main(tiny_args(scan, tmp_path / "resumed", "--epochs", "2", "--resume", *ema))
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["ema_generator"]
    for k in average:
        torch.testing.assert_close(resumed[k], average[k], rtol=0, atol=1e-6, msg=k)

    export = tmp_path / "models"
    training.main(tiny_args(scan, tmp_path / "one", "--epochs", "1", "--export", str(export), "--model-id", "tiny-ema",
                            "--bn-recalibration-batches", "0", "--no-calibrate-fusion", *ema))
    state = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    assert json.loads(state["metrics"])["epoch"] == 1  # a run from scratch records its first epoch as the best
    for k in weights:
        torch.testing.assert_close(state["best_generator"][k], state["ema_generator"][k], rtol=0, atol=0)
    exported = load_model(ModelRegistry.from_folders([export]).get("tiny-ema")).generator.state_dict()
    def distance(a: dict, b: dict) -> float:  # relative, so float16 storage rounding (~5e-4) stays small
        return max(float((a[k].float() - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-8)) for k in weights)

    assert distance(exported, state["ema_generator"]) < 1e-3
    assert distance(exported, state["generator"]) > 1e-2
    with pytest.raises(SystemExit):
        training.parse_args(tiny_args(scan, tmp_path / "bad", "--ema-decay", "1"))


def test_pixel_loss_is_l1_or_the_mean_squared_error_of_each_term_and_an_mse_run_learns(scan, tmp_path):
    torch.manual_seed(0)
    clean, noisy = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    denoised, content, noise = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    terms = [(denoised, clean), (noise, noisy - clean), (content, clean)]
    for kind, distance in (("l1", lambda a, b: (a - b).abs().mean()), ("mse", lambda a, b: ((a - b) ** 2).mean())):
        cfg = training.TrainConfig(pixel_loss=kind, l1_denoised=3.0, l1_noise=5.0, l1_content=7.0)
        expected = sum(w * distance(a, b) for w, (a, b) in zip((3.0, 5.0, 7.0), terms))
        torch.testing.assert_close(training.pixel_loss(cfg, denoised, content, noise, clean, noisy - clean), expected)
    assert float(training.pixel_loss(training.TrainConfig(pixel_loss="mse"), denoised, content, noise, clean, noisy - clean)) != \
        float(training.pixel_loss(training.TrainConfig(), denoised, content, noise, clean, noisy - clean))

    out = tmp_path / "mse"
    training.main(tiny_args(scan, out, "--epochs", "3", "--gan-loss", "none", "--pixel-loss", "mse", "--lr", "1e-3",
                            "--samples-per-epoch", "32"))
    losses = [float(r["loss_l1"]) for r in csv.DictReader(open(out / "log.csv"))]
    assert losses[-1] < 0.8 * losses[0], losses
    with pytest.raises(SystemExit):
        training.parse_args(tiny_args(scan, tmp_path / "bad", "--pixel-loss", "l2"))
