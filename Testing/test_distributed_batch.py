"""medgan-denoise's batch mode under torchrun, for real: two CPU processes (one node, and two
"nodes" on this machine joined by torchrun's c10d rendezvous), a tiny untrained model, small CT
volumes. Checks that the ranks split the batch without overlap, write what one process writes,
agree on errors, and that a failure on one rank fails every rank's exit status."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import write_tiny_model
from MedGANDenoiseLib import cli, distributed

SCANS = ["a.nii.gz", "b.nrrd", "c.nii.gz", "d.nrrd", "e.nii.gz"]
RANK_LINE = re.compile(r"^\[rank (\d+)/(\d+)\] (\S+): .* wrote (.+)$", re.MULTILINE)
TORCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def ct_volume(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = rng.normal(40, 25, (3, 48, 48))
    volume[:, :5] = -1000
    return volume.astype(np.int16)


def write_scan(path: Path, array: np.ndarray) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-12.5, 30.0, 7.25))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("batch")
    scans = root / "scans"
    scans.mkdir()
    for seed, name in enumerate(SCANS):
        write_scan(scans / name, ct_volume(seed))
    return scans, write_tiny_model(root / "models")


@pytest.fixture(scope="module")
def single_process(batch, tmp_path_factory) -> Path:
    """The reference: the same batch in this one process, exactly as without torchrun."""
    scans, models = batch
    out = tmp_path_factory.mktemp("single") / "out"
    assert cli.main([str(scans), "-o", str(out), "--modality", "CT", "--device", "cpu", "--models-dir", str(models), "--quiet"]) == 0
    return out


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCH_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def torchrun(*options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", "MedGANDenoiseLib.cli"]


def denoise_args(scans: Path | str, out: Path, models: Path) -> list[str]:
    return [str(scans), "-o", str(out), "--modality", "CT", "--device", "cpu", "--models-dir", str(models)]


def rank_lines(stdout: str) -> dict[int, list[str]]:
    """Scan names per rank, from the line each rank prints per scan written."""
    shares: dict[int, list[str]] = {}
    for rank, world, name, written in RANK_LINE.findall(stdout):
        assert world == "2"
        shares.setdefault(int(rank), []).append(name)
        assert Path(written).exists()
    return shares


def voxels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_the_batch_and_write_what_one_process_writes(batch, single_process, tmp_path):
    scans, models = batch
    out = tmp_path / "out"
    run = subprocess.run(torchrun("--standalone", "--nproc_per_node=2") + denoise_args(scans, out, models),
                         capture_output=True, text=True, env=child_env(), timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = sorted(f"{cli.scan_stem(Path(n))}_denoised.nii.gz" for n in SCANS)
    assert sorted(p.name for p in out.iterdir()) == expected  # each exactly once, no temporary left behind
    shares = rank_lines(run.stdout)
    assert set(shares) == {0, 1}
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(SCANS)
    assert sorted(shares[0]) == sorted(SCANS)[0::2] and sorted(shares[1]) == sorted(SCANS)[1::2]  # round-robin
    assert "2 ranks on 1 node: 5 of 5 scans written, 0 failed" in run.stdout
    assert re.search(r"rank 0 \(\S+, cpu\): 3 of 3 written, 0 failed", run.stdout)
    assert re.search(r"rank 1 \(\S+, cpu\): 2 of 2 written, 0 failed", run.stdout)
    for name in expected:
        reference, result = voxels(single_process / name), voxels(out / name)
        assert result.shape == reference.shape
        np.testing.assert_allclose(result, reference, atol=0.5)
        assert sitk.ReadImage(str(out / name)).GetSpacing() == pytest.approx((0.7, 0.9, 2.5))


def test_a_bad_scan_on_one_node_fails_both_nodes_and_the_rest_is_written(batch, tmp_path):
    """Two torchrun agents on this machine stand in for two nodes (c10d rendezvous); the flat scan
    sorts third, so rank 0 gets it: the error is rank 0's, and rank 1's node exits non-zero too."""
    scans, models = batch
    mixed = tmp_path / "scans"
    mixed.mkdir()
    for name in SCANS:
        (mixed / name).symlink_to(scans / name)
    write_scan(mixed / "bz_flat.nrrd", np.full((3, 48, 48), 7, dtype=np.int16))
    out = tmp_path / "out"
    endpoint = f"127.0.0.1:{free_port()}"
    command = torchrun("--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
                       "--rdzv-id=test-batch", "--max-restarts=0") + denoise_args(mixed, out, models)
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()) for _ in range(2)]
    results = [node.communicate(timeout=120) for node in nodes]
    assert all(node.returncode != 0 for node in nodes), [err[-2000:] for _, err in results]
    stdout = "".join(o for o, _ in results)
    stderr = "".join(e for _, e in results)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{cli.scan_stem(Path(n))}_denoised.nii.gz" for n in SCANS)
    shares = rank_lines(stdout)
    assert sorted(shares[0] + shares[1]) == sorted(SCANS)
    assert "2 ranks on 1 node: 5 of 6 scans written, 1 failed" in stdout
    assert stdout.count("scans written") == 1  # only rank 0 reports
    assert "skipped bz_flat.nrrd" in stderr and "constant" in stderr
    assert "error: 1 of 6 scans failed: bz_flat.nrrd" in stderr


def test_ranks_that_see_different_folders_refuse_before_writing(batch, tmp_path):
    """Nodes without a shared filesystem: the same relative INPUT names different folders, so
    the plans differ and nothing is written. And a check that fails on every rank is reported once."""
    scans, models = batch
    node_dirs = []
    for n, names in enumerate((SCANS, SCANS[:3])):
        folder = tmp_path / f"node{n}"
        (folder / "scans").mkdir(parents=True)
        for name in names:
            (folder / "scans" / name).symlink_to(scans / name)
        node_dirs.append(folder)
    out = tmp_path / "out"
    endpoint = f"127.0.0.1:{free_port()}"
    command = torchrun("--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
                       "--rdzv-id=test-plans", "--max-restarts=0") + denoise_args("scans", out, models)
    nodes = [subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
             for folder in node_dirs]
    results = [node.communicate(timeout=120) for node in nodes]
    assert all(node.returncode != 0 for node in nodes)
    stderr = "".join(e for _, e in results)
    assert "the ranks found different scans or outputs" in stderr and stderr.count("the ranks found different") == 1
    assert not out.exists()

    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    run = subprocess.run(torchrun("--standalone", "--nproc_per_node=2") + denoise_args(scans, blocked, models),
                         capture_output=True, text=True, env=child_env(), timeout=120)
    assert run.returncode != 0
    assert run.stderr.count("OUTPUT must be a folder") == 1, run.stderr[-2000:]
    assert blocked.read_text() == "not a folder"


def test_shard_and_environment():
    items = list(range(11))
    shares = [distributed.shard(items, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == items and shares[0] == [0, 3, 6, 9]
    assert distributed.shard(items[:1], 1, 2) == []
    saved = {k: os.environ.pop(k) for k in TORCH_ENV if k in os.environ}
    try:
        assert distributed.from_env() is None  # no torchrun: the CLI runs as one process
        os.environ.update(RANK="0", WORLD_SIZE="1")
        assert distributed.from_env() is None  # one process under torchrun: the same
        os.environ.update(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
        context = distributed.from_env()
        assert (context.rank, context.world_size, context.local_rank, context.local_world_size) == (3, 4, 1, 2)
        assert distributed.rank_device("cpu", context) == "cpu"
        assert distributed.cpu_threads(2) == max(1, len(os.sched_getaffinity(0)) // 2)
    finally:
        for k in TORCH_ENV:
            os.environ.pop(k, None)
        os.environ.update(saved)
