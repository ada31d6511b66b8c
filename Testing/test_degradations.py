"""The degradation simulators, checked against the statistics physics predicts."""

from __future__ import annotations

import numpy as np
import pytest

from medgan_training.degradations import (
    add_gaussian_noise,
    add_rician_noise,
    add_salt_and_pepper,
    add_speckle_noise,
    make_degradation,
    parse_spec,
    reconstruction_window,
    simulate_ct_noise,
    simulate_low_dose_ct,
    soft_tissue_noise_hu,
    thin_pet_counts,
    undersample_kspace,
)


def water_disc(size: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - size / 2
    image = np.full((size, size), -1000.0, dtype=np.float32)
    image[np.hypot(yy, xx) < size * 0.4] = 0.0
    return image


def body_phantom(size: int = 128) -> np.ndarray:
    """An elliptical water body with a denser (bone-like) ring and a fat layer, in air."""
    yy, xx = (np.mgrid[:size, :size] - size / 2) / size
    image = np.full((size, size), -1000.0, dtype=np.float32)
    body = (xx / 0.45) ** 2 + (yy / 0.3) ** 2 < 1
    image[body] = -100.0
    image[(xx / 0.4) ** 2 + (yy / 0.26) ** 2 < 1] = 40.0
    image[np.abs(np.hypot(xx - 0.2, yy) - 0.05) < 0.015] = 900.0
    return image


@pytest.mark.parametrize("kernel", ["ramp", "shepp-logan", "cosine", "hann", "sharp"])
def test_ct_noise_is_calibrated_in_hu_in_soft_tissue_and_keeps_the_mean(kernel):
    phantom = body_phantom()
    rng = np.random.default_rng(0)
    for target in (10.0, 60.0):
        noisy = simulate_ct_noise(phantom, target, kernel=kernel, rng=rng, num_views=96)
        assert soft_tissue_noise_hu(noisy, phantom) == pytest.approx(target, rel=1e-3)
        tissue = (phantom > -150) & (phantom < 250)
        assert abs(float((noisy - phantom)[tissue].mean())) < 0.15 * target, "noise only: the mean HU is kept"


def test_ct_noise_texture_follows_the_kernel_and_is_stronger_at_the_body_centre():
    phantom = body_phantom(160)
    rng = np.random.default_rng(1)
    high_frequency_share = {}
    for kernel in ("hann", "ramp"):
        noise = simulate_ct_noise(phantom, 30.0, kernel=kernel, rng=rng, num_views=128) - phantom
        power = np.abs(np.fft.fft2(noise[60:100, 40:120])) ** 2
        f = np.hypot(*np.meshgrid(np.fft.fftfreq(40), np.fft.fftfreq(80), indexing="ij"))
        high_frequency_share[kernel] = power[f > 0.3].sum() / power.sum()
    assert high_frequency_share["ramp"] > 2 * high_frequency_share["hann"], "a sharp kernel gives finer-grained noise"
    # quantum noise variance grows with the attenuation of the paths through a pixel
    noise = np.stack([simulate_ct_noise(phantom, 30.0, kernel="hann", rng=rng, num_views=128) - phantom for _ in range(4)])
    centre, edge = noise[:, 75:85, 75:85].std(), noise[:, 75:85, 25:35].std()
    assert centre > 1.1 * edge


def test_reconstruction_windows_start_at_one_and_refuse_unknown_kernels():
    f = np.linspace(0, 0.5, 11)
    for kernel in ("ramp", "shepp-logan", "cosine", "hann"):
        window = reconstruction_window(kernel, f)
        assert window[0] == pytest.approx(1.0) and np.all(np.diff(window) <= 1e-12)
    assert reconstruction_window("hann", f, cutoff=0.5)[-1] == 0.0
    with pytest.raises(ValueError, match="unknown reconstruction kernel"):
        reconstruction_window("b30f", f)
    assert make_degradation("ct_noise:hu=20,kernel=sharp")(body_phantom(64), np.random.default_rng(0)).shape == (64, 64)


def test_low_dose_ct_noise_grows_as_one_over_root_dose_and_keeps_the_mean():
    phantom = water_disc()
    roi = np.s_[38:58, 38:58]
    stds, means = {}, {}
    for dose in (0.1, 0.4):
        noisy = [simulate_low_dose_ct(phantom, dose, pixel_size_mm=2.0, rng=np.random.default_rng(s)) for s in range(4)]
        stds[dose] = np.mean([n[roi].std() for n in noisy])
        means[dose] = np.mean([n[roi].mean() for n in noisy])
    assert 1.6 < stds[0.1] / stds[0.4] < 2.5  # sqrt(0.4 / 0.1) = 2
    assert abs(means[0.1]) < 5 and abs(means[0.4]) < 5
    assert stds[0.4] > 3, "a quarter of the counts must add visible noise"


def test_low_dose_ct_is_reproducible_with_a_seed():
    phantom = water_disc(48)
    a = simulate_low_dose_ct(phantom, 0.25, rng=np.random.default_rng(3))
    b = simulate_low_dose_ct(phantom, 0.25, rng=np.random.default_rng(3))
    c = simulate_low_dose_ct(phantom, 0.25, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == phantom.shape and a.dtype == np.float32
    with pytest.raises(ValueError, match="dose fraction"):
        simulate_low_dose_ct(phantom, 0.0, rng=np.random.default_rng(0))


def test_pet_count_thinning_keeps_the_mean_with_poisson_variance():
    activity = np.full((200, 200), 2.0)
    thinned = thin_pet_counts(activity, 0.1, counts_per_unit=50, rng=np.random.default_rng(0))
    assert thinned.mean() == pytest.approx(2.0, rel=0.01)
    expected_variance = 2.0 / (50 * 0.1)  # Poisson(lambda) / scale^2 with lambda = 2 * 5
    assert thinned.var() == pytest.approx(expected_variance, rel=0.1)


def test_kspace_mask_keeps_one_line_in_acceleration_with_the_centre():
    image = np.random.default_rng(0).random((64, 48)).astype(np.float32)
    recon, mask = undersample_kspace(image, acceleration=4, centre_fraction=0.08, rng=np.random.default_rng(1))
    assert mask.sum() == 16 and mask.shape == (64,)
    assert mask[30:35].all()  # 5 centre lines around row 32
    assert recon.shape == image.shape
    full, full_mask = undersample_kspace(image, acceleration=1, rng=np.random.default_rng(1))
    assert full_mask.all()
    np.testing.assert_allclose(full, image, atol=1e-5)


def test_rician_noise_on_zero_has_the_rayleigh_mean():
    noisy = add_rician_noise(np.zeros((300, 300)), 2.0, rng=np.random.default_rng(0))
    assert noisy.mean() == pytest.approx(2.0 * np.sqrt(np.pi / 2), rel=0.03)


def test_generic_noises_have_their_statistics():
    rng = np.random.default_rng(0)
    flat = np.full((200, 200), 100.0, dtype=np.float32)
    assert add_gaussian_noise(flat, 5.0, rng=rng).std() == pytest.approx(5.0, rel=0.05)
    bright, dark = add_speckle_noise(flat, 0.1, rng=rng), add_speckle_noise(flat / 10, 0.1, rng=rng)
    assert bright.std() == pytest.approx(10 * dark.std(), rel=0.1)  # multiplicative
    ramp = np.tile(np.linspace(0, 1, 200, dtype=np.float32), (200, 1))
    salted = add_salt_and_pepper(ramp, 0.05, rng=rng)
    assert np.mean(salted != ramp) == pytest.approx(0.05, abs=0.01)


def test_specs_draw_within_their_ranges_and_reject_unknown_names():
    kind, params = parse_spec("gaussian:sigma=0.01-0.05")
    assert kind == "gaussian" and params["sigma"] == (0.01, 0.05)
    assert parse_spec("ct_low_dose:dose=0.25")[1]["dose"] == 0.25
    degrade = make_degradation("gaussian:sigma=0.01-0.05")
    flat = np.full((100, 100), 1000.0, dtype=np.float32)
    stds = [(degrade(flat, np.random.default_rng(s)) - flat).std() / 1000 for s in range(20)]
    assert 0.009 < min(stds) and max(stds) < 0.052 and max(stds) - min(stds) > 0.01
    with pytest.raises(ValueError, match="valid kinds: ct_noise, ct_low_dose"):
        make_degradation("blur:radius=2")
    with pytest.raises(ValueError, match="has no parameter 'dose'"):
        make_degradation("gaussian:dose=0.1")


@pytest.mark.parametrize("spec", ["pet_counts:fraction=0.1", "mr_undersample:acceleration=4", "rician:sigma=0.03", "mixed",
                                  "poisson:peak=50", "speckle:sigma=0.1", "salt_pepper:amount=0.01"])
def test_every_kind_degrades_a_slice_and_keeps_its_shape(spec):
    image = np.random.default_rng(0).uniform(10, 200, (40, 36)).astype(np.float32)
    out = make_degradation(spec)(image, np.random.default_rng(1))
    assert out.shape == image.shape and out.dtype == np.float32
    assert not np.allclose(out, image)


def test_one_of_draws_each_alternative_and_rejects_a_bad_one():
    from medgan_training.degradations import make_degradation

    image = np.full((32, 32), 100.0, np.float32)
    image[8:24, 8:24] = 400.0
    specs = ("rician:sigma=0.05", "mr_undersample:acceleration=4")
    degrade = make_degradation("|".join(specs))
    singles = [make_degradation(s) for s in specs]

    def after_the_draw(seed: int) -> np.random.Generator:
        rng = np.random.default_rng(seed)
        rng.integers(len(specs))  # the choice of the alternative is drawn first
        return rng

    seen = set()
    for seed in range(20):
        out = degrade(image, np.random.default_rng(seed))
        matches = [s for s, single in zip(specs, singles) if np.array_equal(out, single(image, after_the_draw(seed)))]
        assert len(matches) == 1, "every output is exactly one of the alternatives"
        seen.update(matches)
    assert seen == set(specs)
    with pytest.raises(ValueError, match="unknown degradation"):
        make_degradation("rician:sigma=0.05|nonsense")
