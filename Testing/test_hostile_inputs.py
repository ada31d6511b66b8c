"""Bad files and faults: never a wrong output with exit 0, never a lost file, never a traceback.

Each case asserts the exit status, the one-line message, what is on disk afterwards and that the
user's earlier files are intact. Faults are real where that is possible: a write limit
(RLIMIT_FSIZE) makes the writer fail as on a full disk, SIGTERM is a real signal.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedGANDenoiseLib import cli, image_io
from MedGANDenoiseLib.registry import SHIPPED_MODELS_DIR, sha256_of
from test_cli import ct_volume, digest, models, run, write_dicom_series, write_scan  # noqa: F401 (fixture)

ERROR = "medgan-denoise: error:"


def one_line(err: str) -> bool:
    return err.startswith(ERROR) and err.count("\n") == 1 and "Traceback" not in err


def cli_process(args: list[str], models: Path, limit: int | None = None, umask: int | None = None, env: dict | None = None):
    """The command line in its own process, optionally with a file-size limit (a full disk)."""

    def setup():
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        if umask is not None:
            os.umask(umask)

    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "MedGANDenoiseLib.cli", *args, "--models-dir", str(models), "--quiet"],
                          capture_output=True, text=True, preexec_fn=setup, env=environment, timeout=300)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- a wrong or corrupt output with exit status 0 -------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_disk_full_while_writing_fails_and_leaves_nothing(tmp_path, models, suffix):
    source = write_scan(tmp_path / "scan.nrrd", ct_volume((8, 64, 64)))  # 128 KiB of float32 per output
    out = tmp_path / "out" / f"den{suffix}"
    out.parent.mkdir()
    result = cli_process([str(source), "-o", str(out), "--modality", "CT"], models, limit=40_000)
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr) and ("failed" in result.stderr or "too large" in result.stderr.lower()), result.stderr
    assert listing(out.parent) == []  # neither a damaged output nor a temporary file


def truncate_nii(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def truncate_gz(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("name, damage", [("scan.nii", truncate_nii), ("scan.nii.gz", truncate_gz)])
def test_truncated_nifti_is_refused(tmp_path, models, capsys, name, damage):
    source = damage(write_scan(tmp_path / name, ct_volume((6, 32, 32))))
    before = digest(source)
    code, err = run([str(source), "-o", str(tmp_path / "den.nrrd"), "--modality", "CT"], models, capsys)
    assert code == 2 and one_line(err) and ("truncated" in err or "damaged" in err), err
    assert listing(tmp_path) == [name] and digest(source) == before


def test_truncated_gzip_whose_header_survives_is_refused(tmp_path, models, capsys):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume((6, 32, 32)))
    raw = gzip.decompress(source.read_bytes())
    source.write_bytes(gzip.compress(raw)[:-12])  # the stream lacks its end and checksum
    code, err = run([str(source), "-o", str(tmp_path / "den.nrrd"), "--modality", "CT"], models, capsys)
    assert code == 2 and one_line(err) and "damaged or truncated" in err, err


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path, models, capsys):
    series = tmp_path / "series"
    write_dicom_series(series, ct_volume((5, 16, 16)), "1.2.826.0.1.3680043.2.1125.6.1", "gap", positions=[0, 2.5, 5.0, 10.0, 12.5])
    code, err = run([str(series), "-o", str(tmp_path / "den.nii.gz"), "--modality", "CT"], models, capsys)
    assert code == 2 and one_line(err) and "not evenly spaced" in err and "2.5 mm" in err and "5 mm" in err, err
    assert listing(tmp_path) == ["series"]


SHEARED = (1, 0.6, 0, 0, 0.8, 0, 0, 0, 1)  # unit axes, the second tilted towards the first


def sheared(path: Path) -> Path:
    image = sitk.GetImageFromArray(ct_volume((4, 16, 16)))
    image.SetDirection(SHEARED)
    sitk.WriteImage(image, str(path))
    return path


def test_sheared_direction_is_refused_for_nifti_and_kept_in_nrrd(tmp_path, models, capsys):
    source = sheared(tmp_path / "scan.nrrd")
    code, err = run([str(source), "-o", str(tmp_path / "den.nii.gz"), "--modality", "CT"], models, capsys)
    assert code == 2 and one_line(err) and "not perpendicular" in err and ".nrrd or .mha" in err, err
    assert listing(tmp_path) == ["scan.nrrd"]
    assert run([str(source), "-o", str(tmp_path / "den.mha"), "--modality", "CT"], models, capsys)[0] == 0
    np.testing.assert_allclose(sitk.ReadImage(str(tmp_path / "den.mha")).GetDirection(), SHEARED, atol=1e-6)


# --- data loss ---------------------------------------------------------------------------------------

def test_noise_path_that_resolves_to_the_denoised_output_is_refused(tmp_path, models, capsys, monkeypatch):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    earlier = tmp_path / "den.nii.gz"
    earlier.write_bytes(b"my earlier result")
    monkeypatch.chdir(tmp_path)
    code, err = run([str(source), "-o", "den.nii.gz", "--noise", "sub/../den.nii.gz", "--modality", "CT"], models, capsys)
    assert code == 2 and one_line(err) and "--noise must differ" in err, err
    assert earlier.read_bytes() == b"my earlier result" and listing(tmp_path) == ["den.nii.gz", "scan.nii.gz"]


def test_batch_scans_with_the_same_stem_get_distinct_outputs(tmp_path, models, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    write_scan(scans / "a.nii.gz", ct_volume(seed=1))
    write_scan(scans / "a.nrrd", ct_volume(seed=2))
    code, err = run([str(scans), "-o", str(tmp_path / "results"), "--modality", "CT"], models, capsys)
    assert code == 0, err
    assert listing(tmp_path / "results") == ["a_nii_gz_denoised.nii.gz", "a_nrrd_denoised.nii.gz"]
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "results" / "a_nii_gz_denoised.nii.gz")))
    second = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "results" / "a_nrrd_denoised.nii.gz")))
    assert not np.allclose(first, second)


def test_failed_noise_write_keeps_the_users_earlier_files(tmp_path, models, capsys, monkeypatch):
    """The NIfTI writer, on a full disk, reports nothing and leaves a short file: the read-back
    catches it, and neither earlier output is touched."""
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    den, noise = tmp_path / "den.nii", tmp_path / "noise.nii"
    den.write_bytes(b"earlier denoised")
    noise.write_bytes(b"earlier noise")
    real_write = sitk.WriteImage

    def short_write(image, name, *rest):
        real_write(image, name, *rest)
        if ".noise.nii." in name:
            with open(name, "r+b") as f:
                f.truncate(os.path.getsize(name) // 2)

    monkeypatch.setattr(image_io.sitk, "WriteImage", short_write)
    code, err = run([str(source), "-o", str(den), "--noise", str(noise), "--modality", "CT"], models, capsys)
    assert code == 2 and one_line(err) and "writing" in err and "failed" in err, err
    assert den.read_bytes() == b"earlier denoised" and noise.read_bytes() == b"earlier noise"
    assert listing(tmp_path) == ["den.nii", "noise.nii", "scan.nii.gz"]


# --- a traceback instead of one clear line -------------------------------------------------------------

def mixed_sizes(folder: Path) -> Path:
    write_dicom_series(folder, ct_volume((3, 16, 16)), "1.2.826.0.1.3680043.2.1125.7.1", "mixed")
    odd = sitk.GetImageFromArray(ct_volume((1, 12, 16)))
    odd.SetSpacing((0.7, 0.9, 2.5))
    odd.SetOrigin((0.0, 0.0, 7.5))
    for tag, value in {"0020|000e": "1.2.826.0.1.3680043.2.1125.7.1", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                       "0020|0032": "0\\0\\7.5", "0020|0037": "1\\0\\0\\0\\1\\0", "0008|0060": "CT"}.items():
        odd.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "odd.dcm"))
    writer.Execute(odd)
    return folder


def test_dicom_series_with_mixed_slice_sizes_single_and_batch(tmp_path, models, capsys):
    series = mixed_sizes(tmp_path / "scans" / "bad")
    code, err = run([str(series), "-o", str(tmp_path / "den.nii.gz"), "--modality", "CT"], models, capsys)
    assert code == 2 and one_line(err) and "mixes slice sizes" in err, err
    write_dicom_series(tmp_path / "scans" / "good", ct_volume((3, 16, 16)), "1.2.826.0.1.3680043.2.1125.7.2", "good")
    code, err = run([str(tmp_path / "scans"), "-o", str(tmp_path / "results"), "--modality", "CT"], models, capsys)
    assert code == 2 and "skipped bad" in err and "1 of 2 scans failed" in err and "Traceback" not in err, err
    assert listing(tmp_path / "results") == ["good_denoised.nii.gz"]


def test_output_naming_an_existing_folder_is_refused_before_work(tmp_path, models, capsys, monkeypatch):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    folder = tmp_path / "results.nii.gz"
    folder.mkdir()
    monkeypatch.setattr(cli, "denoise_volume", lambda *a, **k: pytest.fail("denoised before refusing"))
    for target in (folder, tmp_path):
        code, err = run([str(source), "-o", str(target), "--modality", "CT"], models, capsys)
        assert code == 2 and one_line(err), err
    assert listing(folder) == []


@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")])
def test_out_of_memory_is_one_line(tmp_path, models, capsys, monkeypatch, error):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())

    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "denoise_volume", exhausted)
    code, err = run([str(source), "-o", str(tmp_path / "den.nii.gz"), "--modality", "CT"], models, capsys)
    assert code == 2 and one_line(err) and "not enough memory" in err and "--batch-size 1" in err, err
    assert listing(tmp_path) == ["scan.nii.gz"]


def test_unexpected_error_is_one_line_not_a_traceback(tmp_path, models, capsys, monkeypatch):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    monkeypatch.setattr(cli, "denoise_volume", lambda *a, **k: {}["boom"])
    code, err = run([str(source), "-o", str(tmp_path / "den.nii.gz"), "--modality", "CT"], models, capsys)
    assert code == 2 and one_line(err) and "unexpected KeyError" in err, err


@pytest.mark.parametrize("content", ["[]", '{"models": [42]}', '{"models": "none"}', "{broken"])
def test_broken_user_registry_is_skipped_with_a_warning(tmp_path, models, content):
    user = tmp_path / "user_models"
    user.mkdir()
    (user / "registry.json").write_text(content)
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    result = cli_process([str(source), "-o", str(tmp_path / "den.nii.gz"), "--modality", "CT"], models,
                         env={"MEDGAN_DENOISE_MODELS": str(user)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("medgan-denoise: warning: ignored your models folder") and str(user / "registry.json") in result.stderr
    assert result.stderr.count("\n") == 1 and (tmp_path / "den.nii.gz").exists()
    listing_run = cli_process(["--list-models"], models, env={"MEDGAN_DENOISE_MODELS": str(user)})
    assert listing_run.returncode == 0 and "tiny-ct" in listing_run.stdout
    if (SHIPPED_MODELS_DIR / "registry.json").is_file():
        assert "ct-unet-w32" in listing_run.stdout


def copy_models(models: Path, folder: Path) -> Path:
    folder.mkdir()
    for f in models.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_misspelled_architecture_key_is_one_line_naming_the_registry(tmp_path, models, capsys):
    folder = copy_models(models, tmp_path / "mine")
    content = json.loads((folder / "registry.json").read_text())
    card = next(m for m in content["models"] if m["id"] == "tiny-ct")
    card["architecture"]["predicter"] = card["architecture"].pop("predictor")
    (folder / "registry.json").write_text(json.dumps(content))
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    code = cli.main([str(source), "-o", str(tmp_path / "den.nii.gz"), "--modality", "CT", "--models-dir", str(folder), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and "invalid architecture" in err and str(folder / "registry.json") in err, err
    assert not (tmp_path / "den.nii.gz").exists()


class Payload:
    def __reduce__(self):
        return (print, ("PAYLOAD RAN",))


def test_malicious_weights_are_refused_in_one_safe_line(tmp_path, models):
    folder = copy_models(models, tmp_path / "mine")
    torch.save({"weight": Payload()}, folder / "tiny-ct.pt")
    content = json.loads((folder / "registry.json").read_text())
    next(m for m in content["models"] if m["id"] == "tiny-ct")["sha256"] = sha256_of(folder / "tiny-ct.pt")
    (folder / "registry.json").write_text(json.dumps(content))
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    result = cli_process([str(source), "-o", str(tmp_path / "den.nii.gz"), "--modality", "CT"], folder)
    assert result.returncode == 2 and one_line(result.stderr), result.stderr
    assert "is not a plain weights file" in result.stderr and "was not loaded" in result.stderr
    assert "weights_only" not in result.stderr and "PAYLOAD RAN" not in result.stdout + result.stderr
    assert not (tmp_path / "den.nii.gz").exists()


# --- messages, permissions, signals --------------------------------------------------------------------

def test_library_warnings_do_not_precede_the_tools_line(tmp_path, models):
    empty = tmp_path / "not_dicom"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    result = cli_process([str(empty / "notes.txt"), "-o", str(tmp_path / "den.nii.gz"), "--modality", "CT"], models)
    assert result.returncode == 2 and one_line(result.stderr), result.stderr
    result = cli_process([str(empty), "-o", str(tmp_path / "den.nii.gz"), "--modality", "CT"], models)
    assert result.returncode == 2 and one_line(result.stderr) and "holds no scans" in result.stderr, result.stderr


def test_outputs_respect_the_umask_and_an_overwritten_file_keeps_its_mode(tmp_path, models):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    kept = tmp_path / "noise.nii.gz"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    result = cli_process([str(source), "-o", str(tmp_path / "den.nii.gz"), "--noise", str(kept), "--modality", "CT"], models, umask=0o022)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "den.nii.gz").stat().st_mode & 0o777 == 0o644
    assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_bytes() != b"old"
    result = cli_process([str(source), "-o", str(tmp_path / "g.nii.gz"), "--modality", "CT"], models, umask=0o002)
    assert result.returncode == 0 and (tmp_path / "g.nii.gz").stat().st_mode & 0o777 == 0o664


def test_sigterm_while_writing_removes_the_temporary_file(tmp_path, models, capsys, monkeypatch):
    source = write_scan(tmp_path / "scan.nii.gz", ct_volume())
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / "den.nii.gz"
    earlier.write_bytes(b"earlier")
    real_write = sitk.WriteImage

    def write_then_term(image, name, *rest):
        real_write(image, name, *rest)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the output is still a temporary file

    monkeypatch.setattr(image_io.sitk, "WriteImage", write_then_term)
    code, err = run([str(source), "-o", str(earlier), "--modality", "CT"], models, capsys)
    assert code == 128 + signal.SIGTERM and "terminated" in err and err.count("\n") == 1, err
    assert listing(out) == ["den.nii.gz"] and earlier.read_bytes() == b"earlier"
    assert signal.getsignal(signal.SIGTERM) is not cli._terminate  # the handler is restored


def test_an_uncompressed_nifti_named_nii_gz_is_still_read(tmp_path, models, capsys):
    plain = write_scan(tmp_path / "plain.nii", ct_volume())
    source = tmp_path / "scan.nii.gz"
    plain.rename(source)
    code, err = run([str(source), "-o", str(tmp_path / "den.nrrd"), "--modality", "CT"], models, capsys)
    if code == 2:  # SimpleITK itself may refuse it; then the line must say so plainly
        assert one_line(err) and "truncated" not in err, err
    else:
        assert code == 0 and (tmp_path / "den.nrrd").exists(), err


# --- the engine's refusals reach the user as one line ---------------------------------------------

def test_engine_refusals_are_one_line_and_write_nothing(tmp_path, models, capsys):
    out = tmp_path / "out"
    out.mkdir()
    thin = write_scan(tmp_path / "thin.nrrd", np.random.default_rng(0).normal(30, 20, (9, 1, 1)).astype(np.int16))
    code, err = run([str(thin), "-o", str(out / "d.nrrd"), "--noise", str(out / "n.nrrd"), "--modality", "CT"], models, capsys)
    assert code == 2 and one_line(err) and "too thin to denoise" in err
    huge = write_scan(tmp_path / "huge.nrrd", np.where(np.arange(4 * 8 * 8).reshape(4, 8, 8) % 2, 1e300, -1e300))
    code, err = run([str(huge), "-o", str(out / "d.nrrd"), "--modality", "CT"], models, capsys)
    assert code == 2 and one_line(err) and "beyond what float32" in err
    if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        scan = write_scan(tmp_path / "scan.nrrd", ct_volume())
        code, err = run([str(scan), "-o", str(out / "d.nrrd"), "--modality", "CT", "--device", "mps"], models, capsys)
        assert code == 2 and one_line(err) and "'mps' (Apple GPU) is not available" in err
    assert listing(out) == []
