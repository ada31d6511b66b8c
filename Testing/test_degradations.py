"""The degradation simulators, checked against the statistics physics predicts."""

from __future__ import annotations

import numpy as np
import pytest

from medgan_training.degradations import (
    PET_FULL_COUNTS,
    RAYLEIGH_SNR,
    add_gaussian_noise,
    add_rician_noise,
    add_salt_and_pepper,
    add_speckle_noise,
    make_degradation,
    parse_spec,
    reconstruction_window,
    simulate_ct_noise,
    simulate_low_count_pet,
    simulate_low_dose_ct,
    simulate_low_dose_xray,
    simulate_speckle,
    soft_tissue_noise_hu,
    speckle_field,
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


def test_ct_noise_lowfreq_moves_power_to_coarse_grain_at_the_same_hu_level():
    phantom = body_phantom(160)
    tissue = (phantom > -150) & (phantom < 250)
    low_share = {}
    for lowfreq in (0.0, 0.3):
        noise = simulate_ct_noise(phantom, 30.0, kernel="cosine", lowfreq=lowfreq, rng=np.random.default_rng(2), num_views=128)
        assert soft_tissue_noise_hu(noise, phantom) == pytest.approx(30.0, rel=1e-3)
        assert abs(float((noise - phantom)[tissue].mean())) < 3.0
        power = np.abs(np.fft.fft2((noise - phantom)[60:100, 40:120])) ** 2
        f = np.hypot(*np.meshgrid(np.fft.fftfreq(40), np.fft.fftfreq(80), indexing="ij"))
        low_share[lowfreq] = power[(f > 0) & (f < 0.1)].sum() / power.sum()
    assert low_share[0.3] > 1.3 * low_share[0.0], low_share
    assert parse_spec("ct_noise:lowfreq=0-0.2")[1]["lowfreq"] == (0.0, 0.2)
    with pytest.raises(ValueError, match="lowfreq"):
        simulate_ct_noise(phantom, 30.0, lowfreq=1.5, rng=np.random.default_rng(0), num_views=32)


def test_tube_current_modulation_and_a_bowtie_even_out_the_noise_at_the_same_hu_level():
    phantom = body_phantom(160)  # wider than tall: the lateral views cross more tissue
    body = (phantom > -150) & (phantom < 250)

    def noise(tcm: float, bowtie: float) -> np.ndarray:
        rng = np.random.default_rng(4)
        return np.stack([simulate_ct_noise(phantom, 30.0, kernel="hann", pixel_size_mm=2.5, num_views=128, rng=rng,
                                           tube_current_modulation=tcm, bowtie=bowtie) - phantom for _ in range(4)])

    def streakiness(n: np.ndarray) -> float:  # |log| of the ratio of horizontal to vertical differences
        gx = np.diff(n, axis=2)[:, body[:, 1:] & body[:, :-1]].std()
        gy = np.diff(n, axis=1)[:, body[1:, :] & body[:-1, :]].std()
        return abs(float(np.log(gx / gy)))

    def edge_to_centre(n: np.ndarray) -> float:
        return float(n[:, 75:85, 25:35].std() / n[:, 75:85, 75:85].std())

    plain, modulated, bowtie = noise(0, 0), noise(1, 0), noise(0, 3)
    for n in (plain, modulated, bowtie, noise(1, 3)):
        assert [soft_tissue_noise_hu(phantom + one, phantom) for one in n] == pytest.approx([30.0] * 4, rel=1e-3)
    assert streakiness(modulated) < 0.7 * streakiness(plain), (streakiness(modulated), streakiness(plain))
    assert edge_to_centre(bowtie) > 1.03 * edge_to_centre(plain), (edge_to_centre(bowtie), edge_to_centre(plain))
    spec = make_degradation("ct_noise:hu=25,kernel=hann,tcm=0-1,bowtie=0-3")
    assert spec(phantom, np.random.default_rng(0)).shape == phantom.shape
    with pytest.raises(ValueError, match="tube_current_modulation is an exponent"):
        simulate_ct_noise(phantom, 30.0, tube_current_modulation=1.5, rng=np.random.default_rng(0), num_views=32)
    with pytest.raises(ValueError, match="bowtie is an attenuation"):
        simulate_ct_noise(phantom, 30.0, bowtie=-1, rng=np.random.default_rng(0), num_views=32)


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


@pytest.mark.parametrize("spec", ["pet_counts:fraction=0.1", "pet_counts:fraction=0.2,recon=fbp", "mr_undersample:acceleration=4",
                                  "rician:sigma=0.03", "mixed", "poisson:peak=50", "speckle:sigma=0.1", "salt_pepper:amount=0.01",
                                  "xray:photons=100-200,electronic=5", "us_speckle:strength=0.3-1", "us_speckle:strength=1,db=60"])
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


# ---------------------------------------------------------------- PET: projection-domain count thinning
def activity_discs(size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A uniform body (activity 1) holding a hot disc (activity 4), in air; with the masks of the
    middle of the body's cold part and of the hot disc."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    activity = np.where(np.hypot(yy, xx) < size * 0.42, 1.0, 0.0).astype(np.float32)
    hot = np.hypot(yy, xx - size * 0.18) < size * 0.14
    activity[hot] = 4.0
    cold_middle = np.hypot(yy, xx + size * 0.15) < size * 0.12
    hot_middle = np.hypot(yy, xx - size * 0.18) < size * 0.08
    return activity, cold_middle, hot_middle


def pet_noise(activity, fraction, seeds, **kwargs):
    kwargs = {"counts": 3e5, "pixel_size_mm": 4.0, **kwargs}
    return np.stack([simulate_low_count_pet(activity, fraction, rng=np.random.default_rng(s), **kwargs) - activity for s in seeds])


@pytest.mark.parametrize("recon", ["osem", "fbp"])
def test_low_count_pet_keeps_the_mean_and_its_noise_grows_as_one_over_root_fraction(recon):
    activity, cold, _ = activity_discs()
    body = activity > 0
    stds = {}
    for fraction in (0.1, 0.4):
        noise = pet_noise(activity, fraction, range(6), recon=recon)
        stds[fraction] = noise[:, cold].std()
        assert abs(noise[:, body].mean()) < 0.01 * activity[body].mean(), "noise only: the body's mean is kept"
        assert abs(noise[:, cold].mean()) < 0.1 * stds[fraction], "and so is the mean of a uniform region"
    assert 1.8 < stds[0.1] / stds[0.4] < 2.2  # sqrt(0.4 / 0.1) = 2
    assert stds[0.4] > 0.1, "a 40 % count level must add visible noise"


@pytest.mark.parametrize("recon", ["osem", "fbp"])
def test_low_count_pet_noise_follows_the_counts_per_slice(recon):
    activity, cold, _ = activity_discs()
    few, many = (pet_noise(activity, 0.5, range(4), counts=c, recon=recon)[:, cold].std() for c in (1e5, 4e5))
    assert few / many == pytest.approx(2.0, rel=0.12), "counts are a slice total: 4x the counts, half the noise"


def test_osem_noise_is_signal_dependent_and_fbp_noise_is_not():
    activity, cold, hot = activity_discs()
    ratio = {}
    for recon in ("osem", "fbp"):
        noise = pet_noise(activity, 0.25, range(4), recon=recon)
        ratio[recon] = noise[:, hot].std() / noise[:, cold].std()
    assert ratio["osem"] > 1.4, "iterative reconstruction: the hot disc (4x activity) is noisier"
    assert ratio["fbp"] < 0.8 * ratio["osem"]
    noise = pet_noise(activity, 0.25, range(2), recon="osem")
    yy, xx = np.mgrid[:64, :64] - 32
    far_air = np.hypot(yy, xx) > 64 * 0.42 + 4
    assert np.abs(noise[:, far_air]).mean() < 1e-3 * np.abs(noise[:, cold]).mean(), "no counts, no noise, in the air"


def test_low_count_pet_is_reproducible_and_validates_its_input():
    activity, _, _ = activity_discs(48)
    a, b, c = (simulate_low_count_pet(activity, 0.25, rng=np.random.default_rng(s)) for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == activity.shape and a.dtype == np.float32
    for fraction in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"count fraction must be in \(0, 1\]"):
            simulate_low_count_pet(activity, fraction, rng=np.random.default_rng(0))
    assert simulate_low_count_pet(activity, 1.0, rng=np.random.default_rng(0)).shape == activity.shape
    negative = activity.copy()
    negative[10, 10] = -0.5
    with pytest.raises(ValueError, match="non-negative"):
        simulate_low_count_pet(negative, 0.1, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown PET reconstruction"):
        simulate_low_count_pet(activity, 0.1, recon="mlem", rng=np.random.default_rng(0))
    empty = np.zeros((32, 32), dtype=np.float32)
    np.testing.assert_array_equal(simulate_low_count_pet(empty, 0.1, rng=np.random.default_rng(0)), empty)
    assert PET_FULL_COUNTS > 1e5


def test_pet_spec_draws_the_fraction_and_keeps_negative_values_of_a_reconstruction():
    activity, cold, _ = activity_discs()
    kind, params = parse_spec("pet_counts:fraction=0.05-0.5,counts=1e5-1e6,recon=fbp")
    assert kind == "pet_counts" and params["fraction"] == (0.05, 0.5) and params["counts"] == (1e5, 1e6)
    assert params["recon"] == "fbp"
    image = activity * 1000.0  # any unit: counts are per slice
    image[0, 0] = -3.0
    degrade = make_degradation("pet_counts:fraction=0.1,counts=3e5")
    noisy = degrade(image, np.random.default_rng(1), pixel_size_mm=4.0)
    assert noisy[0, 0] == -3.0, "negative voxels are kept, not clipped"
    direct = simulate_low_count_pet(activity, 0.1, counts=3e5, pixel_size_mm=4.0, rng=np.random.default_rng(1))
    # counts are per slice, so the same draw in any intensity unit: the noise scales with the image
    np.testing.assert_allclose((noisy - image) / 1000.0, direct - activity, atol=1e-3 * float(np.abs(direct - activity).max()))
    assert (noisy - image)[cold].std() > 100.0


# ---------------------------------------------------------------- X-ray: quantum + electronic noise
def flat_levels(levels=(100, 250, 400, 600, 800, 1000), size: int = 128) -> np.ndarray:
    return np.concatenate([np.full((size, size), v, dtype=np.float32) for v in levels], axis=1)


def fit_variance_law(noisy: np.ndarray, size: int = 128) -> tuple[float, float]:
    patches = [noisy[:, i * size : (i + 1) * size] for i in range(noisy.shape[1] // size)]
    slope, intercept = np.polyfit([p.mean() for p in patches], [p.var() for p in patches], 1)
    return float(slope), float(intercept)


@pytest.mark.parametrize("blur", [0.0, 1.0])
def test_xray_noise_variance_is_affine_in_the_signal(blur):
    image = flat_levels()  # the robust maximum is 1000
    photons, electronic = 200.0, 8.0
    noisy = simulate_low_dose_xray(image, photons, electronic_std=electronic, blur_px=blur, rng=np.random.default_rng(0))
    slope, intercept = fit_variance_law(noisy)
    assert slope == pytest.approx(1000.0 / photons, rel=0.08)  # Poisson: var = (scale / photons) x signal
    assert intercept == pytest.approx((1000.0 * electronic / photons) ** 2, rel=0.3)  # the electronic floor
    assert abs(noisy.mean() - image.mean()) < 0.01 * image.mean()
    patch = noisy[:, 640:] - 1000.0
    neighbour = np.corrcoef(patch[:, :-1].ravel(), patch[:, 1:].ravel())[0, 1]
    assert (neighbour > 0.3) if blur else (abs(neighbour) < 0.05), "the detector blur correlates the noise"


def test_xray_noise_halves_its_relative_level_at_four_times_the_photons_and_validates():
    image = flat_levels((1000,), size=200)
    low, high = (simulate_low_dose_xray(image, q, electronic_std=0.0, rng=np.random.default_rng(1)).std() for q in (100, 400))
    assert low / high == pytest.approx(2.0, rel=0.05)
    for spec_value in (0.0, -5.0):
        with pytest.raises(ValueError, match="must be positive"):
            simulate_low_dose_xray(image, spec_value, rng=np.random.default_rng(0))
    assert parse_spec("xray:photons=50-1000,electronic=2")[1] == {"photons": (50.0, 1000.0), "electronic": 2.0, "blur": 0.0,
                                                                   "log": 0.0}


def test_xray_noise_on_a_log_display_grows_where_few_quanta_arrive():
    image = np.concatenate([np.full((200, 200), 100.0, np.float32), np.full((200, 200), 1100.0, np.float32)], axis=1)
    photons, contrast, electronic = 2000.0, 3.0, 10.0
    noisy = simulate_low_dose_xray(image, photons, electronic_std=electronic, log_contrast=contrast, rng=np.random.default_rng(0))
    scale = 1000.0 / contrast  # image units per e-fold of quanta
    for part, quanta in ((noisy[:, :200], photons), (noisy[:, 200:], photons * np.exp(-contrast))):
        expected = scale * np.sqrt(quanta + electronic**2) / quanta  # d(-log q) = dq / q
        assert part.std() == pytest.approx(expected, rel=0.06)
    assert noisy[:, 200:].std() > 5 * noisy[:, :200].std(), "bright (attenuating) parts are the noisy ones"
    assert abs(noisy[:, :200].mean() - 100.0) < 1.0 and abs(noisy[:, 200:].mean() - 1100.0) < 4.0
    via_spec = make_degradation("xray:photons=2000,electronic=10,log=3")(image, np.random.default_rng(0))
    np.testing.assert_array_equal(via_spec, noisy)


# ---------------------------------------------------------------- ultrasound: speckle
def half_width(field: np.ndarray, axis: int) -> int:
    """Lag where the (circular) autocorrelation of the field's fluctuation first drops below 1/2."""
    fluctuation = field - field.mean()
    autocorrelation = np.real(np.fft.ifft2(np.abs(np.fft.fft2(fluctuation)) ** 2))
    line = autocorrelation[:, 0] if axis == 0 else autocorrelation[0, :]
    return int(np.argmax(line / line[0] < 0.5))


def test_fully_developed_speckle_has_the_rayleigh_snr_and_keeps_the_mean():
    flat = np.full((512, 512), 80.0, dtype=np.float32)
    speckled = simulate_speckle(flat, 1.0, grain_px=(2.0, 5.0), rng=np.random.default_rng(0))
    assert RAYLEIGH_SNR == pytest.approx(1.913, abs=1e-3)
    assert speckled.mean() / speckled.std() == pytest.approx(RAYLEIGH_SNR, rel=0.04)
    assert speckled.mean() == pytest.approx(80.0, rel=0.02)
    assert speckled.min() >= 0, "an envelope is never negative"
    half = simulate_speckle(flat, 0.5, grain_px=(2.0, 5.0), rng=np.random.default_rng(0))
    assert half.std() / half.mean() == pytest.approx(0.5 / RAYLEIGH_SNR, rel=0.05)
    np.testing.assert_array_equal(simulate_speckle(flat, 0.0, rng=np.random.default_rng(0)), flat)


def test_speckle_grain_is_longer_laterally_and_scales_with_the_psf():
    field = speckle_field((512, 512), (2.0, 6.0), rng=np.random.default_rng(1))
    axial, lateral = half_width(field, 0), half_width(field, 1)
    assert lateral >= 2 * axial and axial >= 1
    coarse = speckle_field((512, 512), (4.0, 12.0), rng=np.random.default_rng(1))
    assert half_width(coarse, 1) >= 1.6 * lateral, "the grain follows the PSF"
    assert coarse.mean() == pytest.approx(1.0, rel=0.03)


def test_speckle_is_multiplicative_in_mm_or_pixels_and_on_log_compressed_images():
    ramp = np.tile(np.linspace(10, 200, 256, dtype=np.float32), (256, 1))
    a = simulate_speckle(ramp, 1.0, grain_px=(2.0, 4.0), rng=np.random.default_rng(2))
    b = simulate_speckle(ramp / 10, 1.0, grain_mm=(0.5, 1.0), pixel_size_mm=0.25, rng=np.random.default_rng(2))
    np.testing.assert_allclose(a, 10 * b, rtol=1e-5)  # the same field, scaled with the image
    via_spec = make_degradation("us_speckle:strength=1,axial=0.5,lateral=1,unit=mm")(ramp, np.random.default_rng(2), pixel_size_mm=0.25)
    np.testing.assert_allclose(via_spec, a, rtol=1e-5)
    # a log-compressed display over 60 dB: fully developed speckle has a std of 5.57 dB, mean kept
    display = np.full((384, 384), 120.0, dtype=np.float32)
    display[0, 100] = 240.0  # the display's top (0 dB)
    display[:, :64] = 0.0  # the floor: no echo (outside the sector)
    speckled = simulate_speckle(display, 1.0, dynamic_range_db=60.0, rng=np.random.default_rng(3))
    out = speckled[1:, 64:]
    assert out.std() == pytest.approx(240.0 * 5.57 / 60.0, rel=0.05)
    assert out.mean() == pytest.approx(120.0, abs=1.0)
    assert np.all(speckled[:, :64] == 0.0), "no echo, no speckle"
    with pytest.raises(ValueError, match="strength"):
        simulate_speckle(ramp, 1.5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="unit must be px or mm"):
        make_degradation("us_speckle:unit=cm")(ramp, np.random.default_rng(0))
