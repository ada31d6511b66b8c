"""Intensity normalisation shared by training and inference.

CT is calibrated in HU, so every CT scan gets one fixed affine map. MR and PET are in arbitrary
units and are scaled per volume by robust percentiles, fitted on the degraded image in training,
validation and inference alike (users only have the noisy one). The map is affine and never
clipped, so the inverse is exact; the model card stores which map a model was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Percentiles are computed on at most this many voxels (a strided subsample) so that a large
# volume needs no whole-volume temporary copy.
_MAX_SAMPLES = 2_000_000


@dataclass(frozen=True)
class NormalizationParams:
    """normalized = (x - offset) / scale"""

    offset: float
    scale: float


@dataclass(frozen=True)
class Normalizer:
    """kind="fixed": the same offset/scale for every volume (CT: offset -1024 HU, scale 4096 HU).
    kind="percentile": offset/scale from the low/high percentiles of each volume."""

    kind: str = "fixed"
    offset: float = -1024.0
    scale: float = 4096.0
    low_percentile: float = 0.5
    high_percentile: float = 99.5

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "percentile"):
            raise ValueError(f"unknown normalisation kind {self.kind!r}; use 'fixed' or 'percentile'")
        if self.kind == "fixed" and not self.scale > 0:
            raise ValueError("a fixed normalisation needs a positive scale")
        if self.kind == "percentile" and not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError("percentile normalisation needs 0 <= low < high <= 100")

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "Normalizer":
        known = {"kind", "offset", "scale", "low_percentile", "high_percentile"}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown normalisation fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**spec)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "fixed":
            return {"kind": "fixed", "offset": self.offset, "scale": self.scale}
        return {"kind": "percentile", "low_percentile": self.low_percentile, "high_percentile": self.high_percentile}

    def fit(self, volume: np.ndarray) -> NormalizationParams:
        """The offset and scale for this volume (constant for kind="fixed")."""
        if self.kind == "fixed":
            return NormalizationParams(self.offset, self.scale)
        flat = volume.reshape(-1)
        step = max(1, flat.size // _MAX_SAMPLES)
        sample = flat[::step]
        low, high = np.percentile(sample, [self.low_percentile, self.high_percentile])
        if not high > low:
            low, high = float(sample.min()), float(sample.max())
        if not high > low:
            raise ValueError("the image is constant: there is no intensity range to normalise")
        return NormalizationParams(float(low), float(high - low))

    @staticmethod
    def forward(x: np.ndarray, params: NormalizationParams) -> np.ndarray:
        """Normalise to float32 (works on numpy arrays and torch tensors alike)."""
        if isinstance(x, np.ndarray):
            return ((x.astype(np.float32, copy=False) - np.float32(params.offset)) / np.float32(params.scale)).astype(
                np.float32, copy=False
            )
        return (x.float() - params.offset) / params.scale

    @staticmethod
    def inverse(y: np.ndarray, params: NormalizationParams) -> np.ndarray:
        if isinstance(y, np.ndarray):
            return (y.astype(np.float32, copy=False) * np.float32(params.scale) + np.float32(params.offset)).astype(
                np.float32, copy=False
            )
        return y * params.scale + params.offset


def default_normalizer(modality: str) -> Normalizer:
    """The normalisation new models of a modality are trained with."""
    if modality.upper() == "CT":
        return Normalizer(kind="fixed", offset=-1024.0, scale=4096.0)
    return Normalizer(kind="percentile")

