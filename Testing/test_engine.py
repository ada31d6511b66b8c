"""The denoising engine and the intensity normalisation: plumbing with an untrained tiny model, precision
and tiling with the shipped CT model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedGANDenoiseLib import engine
from MedGANDenoiseLib.engine import (
    DenoiseCancelled,
    available_devices,
    cpu_has_native_bf16,
    denoise_volume,
    estimate_noise_sigma,
    resolve_device,
    validate_volume,
)
from MedGANDenoiseLib.networks import UNetPredictor
from MedGANDenoiseLib.normalization import Normalizer
from MedGANDenoiseLib.registry import LoadedModel, ModelRegistry, load_model


def ct_volume(shape=(6, 20, 28), dtype=np.int16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(30, 25, shape)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_denoised_plus_noise_is_the_input(tiny_model, dtype):
    volume = ct_volume(dtype=dtype) if dtype != np.uint8 else np.random.default_rng(1).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    result = denoise_volume(volume, tiny_model, "CT", batch_size=4, device="cpu")
    assert result.denoised.dtype == np.float32 and result.noise.dtype == np.float32
    assert result.denoised.shape == volume.shape
    np.testing.assert_allclose(result.denoised + result.noise, volume.astype(np.float32), atol=1e-3)
    assert np.abs(result.noise).max() > 0


def test_a_2d_image_is_one_slice(tiny_model):
    image = ct_volume((23, 31))
    result = denoise_volume(image, tiny_model, "CT", device="cpu")
    assert result.denoised.shape == image.shape
    np.testing.assert_allclose(result.denoised + result.noise, image, atol=1e-3)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_along_any_axis_are_denoised_independently(tiny_model, axis):
    volume = ct_volume((5, 12, 14))
    result = denoise_volume(volume, tiny_model, "CT", axis=axis, batch_size=3, device="cpu")
    assert result.denoised.shape == volume.shape
    index = 2
    alone = denoise_volume(np.take(volume, index, axis=axis), tiny_model, "CT", device="cpu")
    np.testing.assert_allclose(np.take(result.denoised, index, axis=axis), alone.denoised, atol=1e-3)


def test_strength_scales_the_removed_noise(tiny_model):
    volume = ct_volume()
    full = denoise_volume(volume, tiny_model, "CT", device="cpu")
    half = denoise_volume(volume, tiny_model, "CT", device="cpu", strength=0.5)
    none = denoise_volume(volume, tiny_model, "CT", device="cpu", strength=0.0)
    np.testing.assert_allclose(half.noise, 0.5 * full.noise, atol=1e-3)
    np.testing.assert_array_equal(none.denoised, volume.astype(np.float32))
    assert not none.noise.any()


def test_the_cards_noise_scale_multiplies_the_strength(tiny_model):
    """A card's noise_scale (a calibration chosen after training) is the share removed at strength 1;
    the strength scales on top of it, and denoised + noise stays the input."""
    from dataclasses import replace

    volume = ct_volume()
    full = denoise_volume(volume, tiny_model, "CT", device="cpu")
    calibrated = LoadedModel(replace(tiny_model.card, noise_scale=0.8), tiny_model.generator)
    scaled = denoise_volume(volume, calibrated, "CT", device="cpu")
    both = denoise_volume(volume, calibrated, "CT", device="cpu", strength=0.5)
    np.testing.assert_allclose(scaled.noise, 0.8 * full.noise, atol=1e-3)
    np.testing.assert_allclose(both.noise, 0.4 * full.noise, atol=1e-3)
    np.testing.assert_allclose(scaled.denoised + scaled.noise, volume, atol=1e-3)
    assert np.abs(full.noise).max() > 1.0, "the model removes something to scale"
    with pytest.raises(ValueError, match="'noise_scale' must be a number in \\(0, 1\\]"):
        replace(tiny_model.card, noise_scale=1.5)


def test_progress_is_reported_per_batch_up_to_the_total(tiny_model):
    calls = []
    denoise_volume(ct_volume((7, 12, 12)), tiny_model, "CT", batch_size=3, device="cpu", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(3, 7), (6, 7), (7, 7)]


def test_cancel_between_batches_raises_and_returns_nothing(tiny_model):
    batches = []
    with pytest.raises(DenoiseCancelled, match="after 2 of 6"):
        denoise_volume(ct_volume(), tiny_model, "CT", batch_size=2, device="cpu",
                       progress=lambda d, t: batches.append(d), should_cancel=lambda: len(batches) >= 1)


def test_the_input_is_never_modified(tiny_model):
    volume = ct_volume()
    copy = volume.copy()
    volume.flags.writeable = False
    denoise_volume(volume, tiny_model, "CT", device="cpu", strength=0.7)
    np.testing.assert_array_equal(volume, copy)


@pytest.mark.parametrize(
    "volume, message",
    [
        (np.zeros((2, 3, 8, 8), np.int16), "4 dimensions"),
        (np.zeros((0, 8, 8), np.int16), "empty"),
        (np.array([[1.0, np.nan], [2.0, 3.0]], np.float32), "NaN or infinite"),
        (np.array([[1.0, np.inf], [2.0, 3.0]], np.float32), "NaN or infinite"),
        (np.full((3, 8, 8), 7, np.int16), "constant"),
        (np.ones((4, 4), np.complex64), "scalar intensity"),
        (np.zeros(8, np.int16), "1 dimensions"),
    ],
)
def test_bad_volumes_are_refused_with_a_message(volume, message):
    with pytest.raises(ValueError, match=message):
        validate_volume(volume)


def test_bad_arguments_are_refused(tiny_model):
    volume = ct_volume()
    with pytest.raises(ValueError, match="trained for CT, but the image is MR"):
        denoise_volume(volume, tiny_model, "MR")
    with pytest.raises(ValueError, match="strength"):
        denoise_volume(volume, tiny_model, "CT", strength=1.5)
    with pytest.raises(ValueError, match="batch size"):
        denoise_volume(volume, tiny_model, "CT", batch_size=0)
    with pytest.raises(ValueError, match="axis"):
        denoise_volume(volume, tiny_model, "CT", axis=3)
    for wrong in (3, 4.0, True):
        with pytest.raises(ValueError, match="ensemble must be one of 1, 2, 4, 8"):
            denoise_volume(volume, tiny_model, "CT", ensemble=wrong)


def _largest_change_under(transform, inverse, model, image, ensemble):
    """How far denoising the transformed image, transformed back, is from denoising the image (HU)."""
    plain = denoise_volume(image, model, "CT", device="cpu", precision="fp32", ensemble=ensemble).denoised
    moved = denoise_volume(np.ascontiguousarray(transform(image)), model, "CT", device="cpu", precision="fp32",
                           ensemble=ensemble).denoised
    return float(np.abs(inverse(moved) - plain).max())


@pytest.fixture
def jittered_model(tmp_path):
    """A tiny model whose weights are jittered (conftest.write_tiny_model): it changes the image and
    answers a mirrored slice differently, which the untrained near-identity generator does not."""
    from conftest import write_tiny_model

    return load_model(ModelRegistry.from_folders([write_tiny_model(tmp_path / "jittered", jitter=0.05)]).get("tiny-ct"))


def test_the_self_ensemble_follows_the_slice_when_it_is_mirrored_or_rotated(jittered_model):
    """The mean over a group of flips/rotations is equivariant under that group, whatever the
    network: 4 mirrorings follow a mirrored slice, 8 also a rotated one. A single pass of the
    network does not, so the check can fail."""
    tiny_model = jittered_model
    image = ct_volume((20, 28), dtype=np.float32, seed=5)
    mirror = (np.fliplr, np.fliplr)
    upside_down = (np.flipud, np.flipud)
    turn = (np.rot90, lambda a: np.rot90(a, -1))
    for transform, inverse in (mirror, upside_down, turn):
        assert _largest_change_under(transform, inverse, tiny_model, image, 1) > 0.1
    for transform, inverse in (mirror, upside_down):
        assert _largest_change_under(transform, inverse, tiny_model, image, 4) < 1e-3
    assert _largest_change_under(*turn, tiny_model, image, 4) > 0.1
    for transform, inverse in (mirror, upside_down, turn):
        assert _largest_change_under(transform, inverse, tiny_model, image, 8) < 1e-3


def test_the_self_ensemble_averages_and_keeps_the_runs_contract(jittered_model):
    tiny_model = jittered_model
    volume = ct_volume((5, 18, 22))
    single = denoise_volume(volume, tiny_model, "CT", device="cpu", precision="fp32")
    result = denoise_volume(volume, tiny_model, "CT", device="cpu", precision="fp32", ensemble=2, batch_size=2,
                            strength=0.5)
    assert result.ensemble == 2 and single.ensemble == 1
    np.testing.assert_allclose(result.denoised + result.noise, volume.astype(np.float32), atol=1e-3)
    mirrored = denoise_volume(np.ascontiguousarray(volume[..., ::-1]), tiny_model, "CT", device="cpu", precision="fp32")
    np.testing.assert_allclose(result.noise, 0.5 * 0.5 * (single.noise + mirrored.noise[..., ::-1]), atol=1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_asking_for_cuda_without_a_gpu_says_what_to_do():
    with pytest.raises(ValueError, match="PyTorch sees no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")


def test_available_devices_start_with_auto_and_cpu():
    assert available_devices()[:2] == [("auto", "Auto"), ("cpu", "CPU")]


def test_noise_sigma_estimate_tracks_noise_and_ignores_edges():
    rng = np.random.default_rng(0)
    flat = rng.normal(0, 10, (4, 128, 128))
    assert estimate_noise_sigma(flat) == pytest.approx(10, rel=0.1)
    edge = flat.copy()
    edge[:, :, 64:] += 1000
    assert estimate_noise_sigma(edge) == pytest.approx(10, rel=0.1)


# ------------------------------------------------------------ normalisation
def test_fixed_map_has_an_exact_inverse():
    ct = Normalizer.from_dict({"kind": "fixed", "offset": -1024.0, "scale": 4096.0})
    x = np.array([-3024, -1024, 0, 3071], dtype=np.int16)
    params = ct.fit(x)
    np.testing.assert_allclose(ct.forward(x, params), [-2000 / 4096, 0, 1024 / 4096, 4095 / 4096], rtol=1e-6)
    np.testing.assert_allclose(ct.inverse(ct.forward(x, params), params), x, atol=1e-3)
    t = torch.tensor([0.25])
    assert ct.inverse(ct.forward(t, params), params).item() == pytest.approx(0.25)


def test_percentile_map_ignores_outliers_and_refuses_constant_volumes():
    mr = Normalizer(kind="percentile")
    volume = np.random.default_rng(0).uniform(0, 100, (10, 50, 50)).astype(np.float32)
    volume[0, 0, :5] = 1e6
    params = mr.fit(volume)
    assert params.offset == pytest.approx(0.5, abs=0.5) and params.scale == pytest.approx(99, abs=1)
    with pytest.raises(ValueError, match="constant"):
        mr.fit(np.full((3, 3), 5.0))


def test_normalizer_rejects_unknown_fields_and_kinds():
    with pytest.raises(ValueError, match="unknown normalisation fields"):
        Normalizer.from_dict({"kind": "fixed", "window": 400})
    with pytest.raises(ValueError, match="unknown normalisation kind"):
        Normalizer(kind="zscore")


def test_automatic_batch_size_is_one_slice_on_the_cpu(tiny_model):
    calls = []
    result = denoise_volume(ct_volume((4, 12, 12)), tiny_model, "CT", device="cpu", progress=lambda d, t: calls.append(d))
    assert result.batch_size == 1 and calls == [1, 2, 3, 4]


# ---------------------------------------------------------------- precision, tiles, padding, the caller's model
def shipped_default_ct_model():
    registry = ModelRegistry.default()
    return load_model(registry.find("CT", registry.variants_for("CT")[0]))


def body_slice(size: int = 256, seed: int = 0) -> np.ndarray:
    yy, xx = (np.mgrid[:size, :size] - size / 2) / size
    image = np.full((size, size), -1000.0, dtype=np.float32)
    image[(xx / 0.45) ** 2 + (yy / 0.33) ** 2 < 1] = -90.0
    image[(xx / 0.41) ** 2 + (yy / 0.29) ** 2 < 1] = 40.0
    image[np.abs(np.hypot(xx, yy + 0.15) - 0.05) < 0.012] = 700.0
    return image + np.random.default_rng(seed).normal(0, 25, image.shape).astype(np.float32)


@pytest.mark.parametrize("variant", ["unet", "dncnn", "srdensenet"])
def test_the_gpu_reduced_precision_path_agrees_with_float32_within_half_a_hounsfield_unit(variant):
    """The path CUDA takes by default (fp16 predictors, fp32 fusion and output), run on the CPU."""
    registry = ModelRegistry.default()
    model = load_model(registry.find("CT", variant))
    assert model.generator.residual_content, "the shipped CT models predict small corrections in both branches"
    volume = np.stack([body_slice(seed=s) for s in range(2)])
    exact = denoise_volume(volume, model, "CT", device="cpu", precision="fp32")
    reduced = denoise_volume(volume, model, "CT", device="cpu", precision="fp16")
    assert exact.precision == "fp32" and reduced.precision == "fp16"
    error = np.abs(reduced.denoised - exact.denoised)
    shown = (exact.denoised > -160) & (exact.denoised < 240)  # what the clinical soft-tissue window shows
    assert np.percentile(error[shown], 99) < 0.5, f"99th percentile {np.percentile(error[shown], 99):.3f} HU"
    assert error[shown].mean() < 0.25 and np.percentile(error[shown], 99.9) < 1.0
    assert np.abs(exact.denoised - volume).mean() > 5, "the model does change the image"


def phantom_for(modality: str, size: int = 192) -> np.ndarray:
    """Two noisy slices of a body-like phantom in the modality's units (HU for CT)."""
    if modality == "CT":
        return np.stack([body_slice(size, seed=s) for s in range(2)])
    yy, xx = (np.mgrid[:size, :size] - size / 2) / size
    image = np.where((xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1, 400.0, 10.0)
    image[(xx / 0.2) ** 2 + ((yy - 0.05) / 0.15) ** 2 < 1] = 900.0
    rng = np.random.default_rng(1)
    return np.stack([np.abs(image + rng.normal(0, 40, image.shape)) for _ in range(2)]).astype(np.float32)


@pytest.mark.parametrize("modality", ["CT", "MR", "PET", "XRAY", "US"])
def test_the_cpu_bf16_path_of_the_default_unet_models_agrees_with_float32(modality):
    """bf16 for the U-Net's coarse levels, float32 for the three finest: within 0.5 HU (CT) or 0.1 %
    of the image's range (other modalities) of the float32 result, the CPU default where bf16 is native."""
    model = load_model(ModelRegistry.default().find(modality, "unet"))
    volume = phantom_for(modality)
    exact = denoise_volume(volume, model, modality, device="cpu", precision="fp32").denoised
    mixed = denoise_volume(volume, model, modality, device="cpu", precision="bf16")
    assert mixed.precision == "bf16"
    error = np.abs(mixed.denoised - exact)
    if modality == "CT":
        shown = (exact > -160) & (exact < 240)
        assert np.percentile(error[shown], 99.9) < 0.5, f"99.9th percentile {np.percentile(error[shown], 99.9):.3f} HU"
        assert error.max() < 0.75, f"largest error {error.max():.3f} HU (bone and air included)"
    else:
        value_range = np.percentile(volume, 99.5) - np.percentile(volume, 0.5)
        assert error.max() < 1e-3 * value_range, f"largest error {error.max() / value_range:.2e} of the range"
    assert np.abs(exact - volume).mean() > 1e-3 * np.ptp(volume), "the model does change the image"
    default = denoise_volume(volume[:1], model, modality, device="cpu").precision
    coarse_levels = len(model.generator.content_predictor.down) > UNetPredictor.FLOAT32_LEVELS
    assert default == ("bf16" if cpu_has_native_bf16() and coarse_levels else "fp32")


@pytest.mark.parametrize("depth, refine", [(1, False), (2, True), (3, False), (4, False)])
def test_the_bf16_split_covers_shallow_unets_and_the_refinement_stage(depth, refine):
    from MedGANDenoiseLib.networks import Float32, build_generator

    torch.manual_seed(0)
    generator = build_generator("unet", {"base_width": 4, "depth": depth}, residual_content=True, refine=refine).eval()
    mixed = engine.inference_copy(generator, torch.device("cpu"), torch.bfloat16)
    exact = engine.inference_copy(generator, torch.device("cpu"), torch.float32)
    for predictor in (mixed.content_predictor, mixed.noise_predictor):
        assert isinstance(predictor.stem, Float32) and isinstance(predictor.head, Float32)
        # the three finest levels (full, 1/2 and 1/4 resolution) in float32, the coarser ones not
        assert [isinstance(block, Float32) for block in predictor.down] == [level < 2 for level in range(depth)]
        assert [isinstance(block, Float32) for block in predictor.up] == [level < 3 for level in reversed(range(depth))]
    assert isinstance(mixed.refinement, Float32) if refine else mixed.refinement is None
    x = (0.25 + 0.01 * torch.randn(1, 1, 64, 64)).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_mixed = mixed(x)[0]
        y_exact = exact(x)[0]
    assert y_mixed.dtype == torch.float32
    assert float((y_mixed - y_exact).abs().max()) * 4096 < 0.5, "within half a HU on the CT map"
    # a refinement stage works on the full image: such models are never put in bf16 by default, nor
    # U-Nets of 3 levels or fewer, whose bf16 part (the bottleneck at most) costs more casts than it saves
    assert engine._compute_dtype("auto", generator, torch.device("cpu")) == (
        torch.bfloat16 if not refine and depth > 3 and cpu_has_native_bf16() else torch.float32)


@pytest.mark.parametrize("variant", ["dncnn", "srdensenet"])
def test_predictors_without_a_coarse_level_stay_float32_on_the_cpu(variant):
    """Every DnCNN/SRDenseNet layer sees the image at full resolution: in bf16 they are several HU
    off, so their CPU default is float32 and bf16 is opt-in."""
    model = load_model(ModelRegistry.default().find("CT", variant))
    volume = phantom_for("CT", 128)
    exact = denoise_volume(volume, model, "CT", device="cpu", precision="fp32").denoised
    shown = (exact > -160) & (exact < 240)
    error = np.abs(denoise_volume(volume, model, "CT", device="cpu", precision="bf16").denoised - exact)[shown]
    assert np.percentile(error, 99.9) > 0.5, "bf16 through every layer misses the U-Net split's bound"
    assert denoise_volume(volume[:1], model, "CT", device="cpu").precision == "fp32"


def test_absolute_content_models_run_in_float32_by_default(tiny_model):
    assert not tiny_model.generator.residual_content
    assert denoise_volume(ct_volume(), tiny_model, "CT", device="cpu").precision == "fp32"
    with pytest.raises(ValueError, match="unknown precision"):
        denoise_volume(ct_volume(), tiny_model, "CT", device="cpu", precision="int8")


@pytest.mark.parametrize("variant, size, tile, overlap", [("dncnn", 320, 192, 96), ("srdensenet", 320, 192, 96),
                                                       ("unet", 768, 512, 256)])
def test_tiled_slices_match_the_whole_slice_away_from_the_borders(monkeypatch, variant, size, tile, overlap):
    model = load_model(ModelRegistry.default().find("CT", variant))
    image = body_slice(size, seed=3)
    whole = denoise_volume(image, model, "CT", device="cpu", precision="fp32").denoised
    monkeypatch.setattr(engine, "MAX_PIXELS_PER_PASS", 128 * 128)
    monkeypatch.setattr(engine, "TILE_SIZE", tile)
    monkeypatch.setattr(engine, "TILE_OVERLAP", overlap)
    assert len(engine.tile_starts(size, tile, overlap)) > 1 and size * size > engine.MAX_PIXELS_PER_PASS
    tiled = denoise_volume(image, model, "CT", device="cpu", precision="fp32").denoised
    difference = np.abs(tiled - whole)[16:-16, 16:-16]
    assert difference.max() < 0.5, f"largest tiled/whole difference {difference.max():.3f} HU"


@pytest.mark.parametrize("length, tile, overlap, align", [(320, 192, 96, 1), (321, 192, 96, 2), (1537, 1024, 256, 16),
                                                          (1000, 1024, 256, 2), (777, 100, 33, 3)])
def test_tile_starts_cover_the_slice_on_the_generators_grid(length, tile, overlap, align):
    starts = engine.tile_starts(length, tile, overlap, align)
    assert starts[0] == 0 and all(start % align == 0 for start in starts)
    if length <= tile:
        assert starts == [0]
        return
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:])), "neighbours share the overlap"
    assert starts[-1] + tile <= length < starts[-1] + tile + align, "the last tile runs to the end"


def test_a_downscaled_dncnn_tiles_an_odd_sized_slice_as_it_runs_it_whole(monkeypatch):
    """A network on the 2 x 2 pixel-unshuffled grid changes its output under a one-pixel shift, so
    the tiles must start on even pixels; its receptive field, 8 convolutions on the half-resolution
    grid, spans about 33 px, inside the tile margin."""
    from MedGANDenoiseLib.networks import build_generator
    from MedGANDenoiseLib.registry import LoadedModel

    torch.manual_seed(0)
    generator = build_generator("dncnn", {"width": 8, "num_layers": 8, "downscale": 2}, residual_content=True).eval()
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
                module.running_mean.normal_(0, 0.1)
        for predictor in (generator.content_predictor, generator.noise_predictor):
            predictor.output_layer.weight.normal_(0, 0.02)  # it starts at zero: the identity
    model = LoadedModel(card=ModelRegistry.default().find("CT", "dncnn"), generator=generator)
    image = body_slice(256, seed=4)[:251, :247]
    whole = denoise_volume(image, model, "CT", device="cpu", precision="fp32").denoised
    monkeypatch.setattr(engine, "MAX_PIXELS_PER_PASS", 64 * 64)
    monkeypatch.setattr(engine, "TILE_SIZE", 128)
    monkeypatch.setattr(engine, "TILE_OVERLAP", 96)
    tiled = denoise_volume(image, model, "CT", device="cpu", precision="fp32").denoised
    assert np.abs(tiled - whole).max() < 1e-3, f"largest tiled/whole difference {np.abs(tiled - whole).max():.2e} HU"
    assert np.abs(whole - image).mean() > 0.1, "the perturbed network does change the image"
    # the self-ensemble tiles each flipped or rotated slice on the grid of that slice, as one pass does
    monkeypatch.setattr(engine, "MAX_PIXELS_PER_PASS", 1 << 30)
    whole = denoise_volume(image, model, "CT", device="cpu", precision="fp32", ensemble=8).denoised
    monkeypatch.setattr(engine, "MAX_PIXELS_PER_PASS", 64 * 64)
    tiled = denoise_volume(image, model, "CT", device="cpu", precision="fp32", ensemble=8).denoised
    assert np.abs(tiled - whole).max() < 1e-3, f"largest tiled/whole difference {np.abs(tiled - whole).max():.2e} HU (ensemble)"


def test_the_callers_generator_is_left_as_it_was(tiny_model):
    generator = tiny_model.generator.train()
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    kinds = [type(m) for m in generator.modules()]
    denoise_volume(ct_volume(), tiny_model, "CT", device="cpu", precision="bf16")
    assert generator.training, "training mode kept"
    assert [type(m) for m in generator.modules()] == kinds, "no BatchNorm folded into the caller's model"
    after = generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in generator.parameters())
    assert all(p.is_contiguous() for p in generator.parameters()), "memory format unchanged"


def test_ct_padding_outside_the_field_of_view_is_masked_and_returned_untouched(tiny_model):
    image = body_slice(64, seed=4)
    yy, xx = np.mgrid[:64, :64] - 31.5
    outside = np.hypot(yy, xx) > 30
    padded = np.where(outside, np.float32(-3024.0), image)
    as_air = np.where(outside, np.float32(-1024.0), image)
    result = denoise_volume(padded, tiny_model, "CT", device="cpu")
    reference = denoise_volume(as_air, tiny_model, "CT", device="cpu")
    assert np.array_equal(result.denoised[outside], padded[outside])
    assert np.all(result.noise[outside] == 0)
    assert np.abs(result.denoised[~outside] - reference.denoised[~outside]).max() < 1e-3
    assert any("field of view" in w for w in result.warnings)
    assert np.allclose(result.denoised + result.noise, padded, atol=1e-3)


def test_values_beyond_float32_and_too_thin_slices_are_refused(tiny_model):
    huge = np.full((2, 8, 8), 1e300)
    huge[0, 0, 0] = 0
    with pytest.raises(ValueError, match="beyond what float32"):
        validate_volume(huge)
    line = np.random.default_rng(0).normal(0, 10, (7, 1, 1)).astype(np.float32)
    with pytest.raises(ValueError, match="too thin to denoise"):
        denoise_volume(line, tiny_model, "CT", device="cpu")


@pytest.mark.skipif(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                    reason="checks the message where there is no Apple GPU")
def test_asking_for_mps_without_an_apple_gpu_says_what_to_do():
    with pytest.raises(ValueError, match="'mps' \\(Apple GPU\\) is not available"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="unknown device|unsupported device"):
        resolve_device("tpu")
