"""Shared fixtures. The machines that run the suite have 2 cores: keep torch to one thread per
test process so parallel jobs (training in the background, CI) do not oversubscribe them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from MedGANDenoiseLib.networks import build_generator
from MedGANDenoiseLib.registry import LoadedModel, ModelRegistry, load_model, write_model

torch.set_num_threads(1)

TINY_ARCHITECTURE = {"variant": "unet", "predictor": {"base_width": 4, "depth": 2}, "mode": "both", "refine": False}
CT_NORMALIZATION = {"kind": "fixed", "offset": -1024.0, "scale": 4096.0}


def write_tiny_model(folder: Path, model_id: str = "tiny-ct", modality: str = "CT", seed: int = 0, jitter: float = 0.0) -> Path:
    """An untrained tiny generator saved as a registry entry: for plumbing tests, never for quality.
    jitter > 0 adds that much Gaussian noise to every weight: the untrained generator starts near
    the identity, and a jittered one changes the image and answers a mirrored slice differently."""
    torch.manual_seed(seed)
    normalization = CT_NORMALIZATION if modality == "CT" else {"kind": "percentile"}
    generator = build_generator(**TINY_ARCHITECTURE)
    if jitter:
        with torch.no_grad():
            for parameter in generator.parameters():
                parameter.add_(jitter * torch.randn_like(parameter))
    write_model(generator, folder, model_id=model_id, modality=modality, variant="unet",
                architecture=TINY_ARCHITECTURE, normalization=normalization, description="untrained test model")
    return folder


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    return write_tiny_model(tmp_path / "models")


@pytest.fixture
def tiny_model(tiny_model_dir) -> LoadedModel:
    return load_model(ModelRegistry.from_folders([tiny_model_dir]).get("tiny-ct"))
