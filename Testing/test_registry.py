"""The model registry: cards, safe loading, checksums, and the errors a user meets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from MedGANDenoiseLib.registry import (
    SHIPPED_MODELS_DIR,
    ModelRegistry,
    load_model,
    normalize_modality,
    sha256_of,
    write_model,
)

from conftest import TINY_ARCHITECTURE, write_tiny_model


def test_written_model_is_found_and_loads_with_identical_outputs(tmp_path):
    from MedGANDenoiseLib.networks import build_generator

    generator = build_generator(**TINY_ARCHITECTURE).eval()
    card = write_model(generator, tmp_path, model_id="m1", modality="ct", variant="unet", architecture=TINY_ARCHITECTURE,
                       normalization={"kind": "fixed", "offset": -1024.0, "scale": 4096.0}, metrics={"validation": {"psnr": 1.0}})
    registry = ModelRegistry.from_folders([tmp_path])
    assert registry.get("m1") == card
    assert registry.find("CT", "unet").id == "m1"
    assert registry.modalities() == ["CT"] and registry.variants_for("ct") == ["unet"]
    model = load_model(registry.get("m1"))
    x = torch.randn(1, 1, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(model.generator(x)[0], generator(x)[0])
    assert not model.generator.training
    # the weights are a plain state dict: loadable without unpickling objects
    state = torch.load(card.path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_rewriting_a_model_replaces_its_entry(tmp_path):
    write_tiny_model(tmp_path, seed=0)
    write_tiny_model(tmp_path, seed=1)
    content = json.loads((tmp_path / "registry.json").read_text())
    assert [m["id"] for m in content["models"]] == ["tiny-ct"]
    assert content["models"][0]["sha256"] == sha256_of(tmp_path / "tiny-ct.pt")


def test_unknown_model_and_missing_modality_or_variant_list_what_exists(tiny_model_dir):
    registry = ModelRegistry.from_folders([tiny_model_dir])
    with pytest.raises(ValueError, match="known models: tiny-ct"):
        registry.get("ct-huge")
    with pytest.raises(ValueError, match="no model for modality MR; models exist for: CT"):
        registry.find("MR", "unet")
    with pytest.raises(ValueError, match="available variants for CT: unet"):
        registry.find("CT", "dncnn")


def test_missing_and_corrupt_weights(tiny_model_dir):
    card = ModelRegistry.from_folders([tiny_model_dir]).get("tiny-ct")
    data = card.path.read_bytes()
    card.path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    with pytest.raises(ValueError, match="does not match the registry's SHA-256"):
        load_model(card)
    card.path.unlink()
    with pytest.raises(ValueError, match="weights file of model 'tiny-ct' is missing"):
        load_model(card)


def edit_registry(folder: Path, **changes) -> None:
    path = folder / "registry.json"
    content = json.loads(path.read_text())
    content["models"][0].update(changes)
    path.write_text(json.dumps(content))


def test_weights_that_do_not_fit_the_declared_architecture(tiny_model_dir):
    edit_registry(tiny_model_dir, architecture={**TINY_ARCHITECTURE, "predictor": {"base_width": 8, "depth": 2}})
    with pytest.raises(ValueError, match="do not fit its declared architecture"):
        load_model(ModelRegistry.from_folders([tiny_model_dir]).get("tiny-ct"))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickled_object_is_refused_even_with_a_matching_checksum(tiny_model_dir, capsys):
    weights = tiny_model_dir / "tiny-ct.pt"
    torch.save({"payload": Payload()}, weights)
    edit_registry(tiny_model_dir, sha256=sha256_of(weights))
    with pytest.raises(ValueError, match="is not a plain weights file .* and was not loaded") as info:
        load_model(ModelRegistry.from_folders([tiny_model_dir]).get("tiny-ct"))
    message = str(info.value)
    assert "\n" not in message and "weights_only=False" not in message  # no unsafe advice
    assert "this must never run" not in capsys.readouterr().out


def test_invalid_json_duplicate_ids_and_missing_registry(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "registry.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelRegistry.from_folders([tmp_path / "bad"])
    first, second = write_tiny_model(tmp_path / "a"), write_tiny_model(tmp_path / "b")
    with pytest.raises(ValueError, match="defined twice"):
        ModelRegistry.from_folders([first, second])
    with pytest.raises(ValueError, match="no registry.json"):
        ModelRegistry.from_folders([tmp_path / "empty"])


def test_user_folder_comes_before_the_shipped_models(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGAN_DENOISE_MODELS", str(write_tiny_model(tmp_path / "user", model_id="mine")))
    registry = ModelRegistry.default()
    assert registry.models()[0].id == "mine"
    shipped = (SHIPPED_MODELS_DIR / "registry.json").is_file()
    assert len(registry.models()) > 1 if shipped else len(registry.models()) == 1


def test_shipped_models_verify_and_load():
    if not (SHIPPED_MODELS_DIR / "registry.json").is_file():
        pytest.skip("no shipped models in this checkout")
    cards = ModelRegistry.from_folders([SHIPPED_MODELS_DIR]).models()
    assert sum(card.path.stat().st_size for card in cards) < 50e6, "the whole zoo stays under 50 MB"
    for card in cards:
        assert sha256_of(card.path) == card.sha256
        assert card.path.stat().st_size < 16 * 2**20, "shipped weights must stay small"
        assert {"data", "degradation", "command"} <= set(card.training)
        assert "validation" in card.metrics
        load_model(card)


def test_every_modality_the_panel_offers_has_models():
    """CT, MR and PET with each predictor variant; X-ray and ultrasound with at least the U-Net
    (the panel lists, per modality, the variants that have weights); the zoo stays small."""
    from MedGANDenoiseLib.cli_protocol import MODALITY_CHOICES

    registry = ModelRegistry.from_folders([SHIPPED_MODELS_DIR])
    offered = [m for m in MODALITY_CHOICES if m != "Auto"]
    for modality in offered:
        variants = set(registry.variants_for(modality))
        required = {"unet", "dncnn", "srdensenet"} if modality in ("CT", "MR", "PET") else {"unet"}
        assert required <= variants, f"{modality}: no model for {sorted(required - variants)}"
    for card in registry.models():
        assert "cpu_seconds_per_slice_512" in card.metrics.get("speed", {}), f"{card.id}: the card states its CPU time per slice"
        if card.modality == "PET":
            assert "phantom" in card.description.lower(), "PET weights were trained on phantoms, and say so"
    total = sum(card.path.stat().st_size for card in registry.models())
    assert total < 50 * 2**20, f"the shipped models take {total / 2**20:.1f} MB"


def test_modality_names_and_aliases():
    assert normalize_modality("mri") == "MR" and normalize_modality("pt") == "PET" and normalize_modality(" ct ") == "CT"
    with pytest.raises(ValueError, match="choose one of CT, MR, PET, XRAY, US"):
        normalize_modality("SPECT")


@pytest.mark.parametrize("content, message", [
    ("[]", "must hold an object"),
    ('{"models": [42]}', "must be an object"),
    ('{"models": [{"id": "x"}]}', "lacks"),
])
def test_a_broken_registry_names_its_file_and_a_broken_user_folder_is_skipped(tmp_path, monkeypatch, content, message):
    user = tmp_path / "user"
    user.mkdir()
    (user / "registry.json").write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        ModelRegistry.from_folders([user])
    assert str(user / "registry.json") in str(info.value) or "lacks" in message
    monkeypatch.setenv("MEDGAN_DENOISE_MODELS", str(user))
    registry = ModelRegistry.default([write_tiny_model(tmp_path / "mine")])
    assert [c.id for c in registry.models()][0] == "tiny-ct" and len(registry.problems) == 1
    assert registry.problems[0].startswith(f"ignored your models folder {user}")


def test_a_misspelled_architecture_key_is_a_clear_error(tiny_model_dir):
    edit_registry(tiny_model_dir, architecture={"variant": "unet", "predicter": {"base_width": 4, "depth": 2}})
    with pytest.raises(ValueError, match="has an invalid architecture .*predicter") as info:
        load_model(ModelRegistry.from_folders([tiny_model_dir]).get("tiny-ct"))
    assert str(tiny_model_dir / "registry.json") in str(info.value)


@pytest.mark.parametrize("value", [0, 1.5, -0.2, "0.9", True])
def test_a_noise_scale_outside_zero_to_one_is_a_clear_error(tiny_model_dir, value):
    edit_registry(tiny_model_dir, noise_scale=value)
    with pytest.raises(ValueError, match="'noise_scale' must be a number in \\(0, 1\\]"):
        ModelRegistry.from_folders([tiny_model_dir])


def test_a_card_without_noise_scale_removes_the_whole_estimate_and_one_with_it_keeps_it(tiny_model_dir):
    path = tiny_model_dir / "registry.json"
    content = json.loads(path.read_text())
    content["models"][0].pop("noise_scale", None)  # cards written before the field existed
    path.write_text(json.dumps(content))
    assert ModelRegistry.from_folders([tiny_model_dir]).get("tiny-ct").noise_scale == 1.0
    edit_registry(tiny_model_dir, noise_scale=0.95)
    card = ModelRegistry.from_folders([tiny_model_dir]).get("tiny-ct")
    assert card.noise_scale == 0.95 and card.to_dict()["noise_scale"] == 0.95


def test_the_shipped_ultrasound_model_records_how_its_noise_scale_was_chosen():
    card = ModelRegistry.default(()).find("US", "unet")
    assert 0.5 <= card.noise_scale <= 1.0
    calibration = card.training["calibration"]
    assert calibration["noise_scale"] == card.noise_scale and "us_noise_scale.py" in calibration["command"]
    trained_on = set(card.training["config"]["clean"])
    assert calibration["images"] and not trained_on & set(calibration["images"]), "chosen on images it never trained on"
