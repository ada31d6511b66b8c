"""Physically motivated degradations that turn clean slices into realistic low-quality ones.

One function per degradation, plus `make_degradation(spec)` that builds a callable
`degrade(clean_slice, rng, pixel_size_mm=1.0) -> degraded_slice` from a short text spec:

    kind[:name=value[,name=value...]]      a value "a-b" is drawn uniformly per call

    ct_noise:hu=10-60[,kernel=any,cutoff=0.7-1,pixel=0,views=256,lowfreq=0,tcm=0,bowtie=0]
                                           projection-domain CT noise calibrated in HU
    ct_low_dose:dose=0.1-0.5[,photons=1e5,electronic=10,angles=0]   projection-domain low-dose CT (HU in, HU out)
    pet_counts:fraction=0.05-0.5[,counts=8e5,recon=osem,iterations=2,subsets=16,smooth=4,views=0]
                                           count thinning in the projection domain (counts: a full-count slice's total)
    mr_undersample:acceleration=4[,centre=0.08]   Cartesian k-space undersampling, zero-filled magnitude
    rician:sigma=0.02-0.05                 Rician noise, sigma relative to the slice's robust max
    xray:photons=50-1000[,electronic=3,blur=0,log=0]   quantum + electronic noise (quanta at the robust max;
                                           log=3: a displayed, log radiograph, bright = attenuating)
    us_speckle:strength=0.3-1[,axial=1.5-3,lateral=3-6,unit=px,db=0]   Rayleigh speckle on the envelope
    gaussian:sigma=0.01-0.05 | poisson:peak=20-200 | speckle:sigma=0.05-0.2 | salt_pepper:amount=0.001-0.01
    mixed                                  one of the four generic kinds at a random strength
    spec1|spec2[|...]                      one of the specs, drawn per call (list one twice to weight it)

Strengths of the MR, X-ray and generic kinds are relative to the slice's 99.5th percentile, so a
spec means the same on any intensity scale; PET counts are per slice and speckle is a multiplier,
both scale-free too. CT works in HU.
"""

from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------- CT
def simulate_low_dose_ct(
    hu: np.ndarray,
    dose_fraction: float,
    *,
    pixel_size_mm: float = 1.0,
    full_dose_photons: float = 1e5,
    electronic_noise_std: float = 10.0,
    mu_water_per_mm: float = 0.0188,
    num_angles: int = 0,
    filter_name: str = "hann",
    rng: np.random.Generator,
) -> np.ndarray:
    """Low-dose CT simulated in the projection domain (METHOD.md).

    HU -> attenuation, parallel-beam line integrals (radon), Poisson photon counts at
    I0 x dose plus Gaussian electronic noise, log, filtered back-projection, back to HU.
    Only the noise is added to the input: the result is hu + FBP(noisy) - FBP(noiseless), so
    the mean HU is kept and the reconstruction's own blur and streaks of the clean sinogram
    do not leak into the target. num_angles=0 uses one angle per pixel of the slice width.
    The default Hann-apodised ramp filter gives the correlated noise of a soft-tissue kernel: on
    the 256 x 256 head CT at 25 % dose it adds about 30 HU of noise in the brain, close to the
    real quarter-dose abdominal pair in ../shared/data (a pure ramp filter gives about 80 HU).
    """
    from skimage.transform import iradon, radon

    if not 0 < dose_fraction <= 1:
        raise ValueError(f"dose fraction must be in (0, 1], got {dose_fraction}")
    height, width = hu.shape
    size = int(np.ceil(np.hypot(height, width))) + 2  # the circle radon sees must hold the whole slice
    mu = np.zeros((size, size), dtype=np.float64)
    top, left = (size - height) // 2, (size - width) // 2
    mu[top : top + height, left : left + width] = np.clip(mu_water_per_mm * (1.0 + hu / 1000.0), 0.0, None)
    angles = np.linspace(0.0, 180.0, num_angles or max(height, width), endpoint=False)
    line_integrals = radon(mu, theta=angles, circle=True) * pixel_size_mm
    photons = full_dose_photons * dose_fraction
    counts = rng.poisson(photons * np.exp(-line_integrals)) + rng.normal(0.0, electronic_noise_std, line_integrals.shape)
    noisy_integrals = -np.log(np.maximum(counts, 1.0) / photons)
    noise_sinogram = (noisy_integrals - line_integrals) / pixel_size_mm
    noise_mu = iradon(noise_sinogram, theta=angles, filter_name=filter_name, circle=True, output_size=size)
    noise_hu = noise_mu[top : top + height, left : left + width] * (1000.0 / mu_water_per_mm)
    return (hu + noise_hu).astype(np.float32)


CT_KERNELS = ("ramp", "shepp-logan", "cosine", "hann", "sharp")


def reconstruction_window(kernel: str, frequency: np.ndarray, cutoff: float = 1.0) -> np.ndarray:
    """The apodisation multiplying the ramp filter, for frequencies in cycles/pixel (0..0.5);
    `cutoff` (0..1] is the fraction of the Nyquist frequency where smooth windows reach zero.
    "sharp" lifts mid-high frequencies (an edge-enhancing kernel, as scanners' bone/lung kernels)."""
    f = np.clip(np.abs(frequency) / (0.5 * cutoff), 0.0, None)
    inside = f <= 1.0
    if kernel == "ramp":
        window = np.ones_like(f)
    elif kernel == "shepp-logan":
        window = np.sinc(f / 2)
    elif kernel == "cosine":
        window = np.cos(np.pi * np.minimum(f, 1.0) / 2)
    elif kernel == "hann":
        window = 0.5 * (1 + np.cos(np.pi * np.minimum(f, 1.0)))
    elif kernel == "sharp":
        window = (1 + 0.6 * np.sin(np.pi * np.minimum(f, 1.0)) ** 2) * np.cos(np.pi * np.minimum(f, 1.0) / 4)
    else:
        raise ValueError(f"unknown reconstruction kernel {kernel!r}; choose one of {', '.join(CT_KERNELS)}")
    return np.where(inside, window, 0.0)


FWHM_PER_SIGMA = float(2 * np.sqrt(2 * np.log(2)))  # a Gaussian's full width at half maximum over its sigma


def gaussian_kernel_norm(sigma: tuple[float, float], shape: tuple[int, int] | None = None) -> float:
    """sqrt(sum k^2) of scipy's gaussian_filter kernel of `sigma` (pixels, per axis): the standard
    deviation unit white noise keeps after that filter. With `shape`, on a periodic image of that
    size (the kernel wraps where the image is smaller than it)."""
    from scipy.ndimage import gaussian_filter

    size = [8 * int(np.ceil(s)) + 1 for s in sigma]
    if shape is not None:
        size = [min(n, m) for n, m in zip(size, shape)]
    impulse = np.zeros(size)
    impulse[tuple(n // 2 for n in size)] = 1.0
    return float(np.sqrt(np.sum(gaussian_filter(impulse, sigma, mode="wrap") ** 2)))


def _parallel_projections(image, angles):
    """Parallel-beam line integrals (views x detector bins, unit pixel) of a square torch image."""
    import torch
    import torch.nn.functional as F

    n = image.shape[-1]
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.zeros(len(angles), 2, 3, dtype=image.dtype)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    sums = []
    for start in range(0, len(angles), 32):
        chunk = theta[start : start + 32]
        grid = F.affine_grid(chunk, (len(chunk), 1, n, n), align_corners=False)
        rotated = F.grid_sample(image.expand(len(chunk), 1, n, n), grid, align_corners=False)
        sums.append(rotated.sum(dim=2)[:, 0])
    return torch.cat(sums)


def _pixel_geometry(angles, height: int, width: int, bins: int):
    """Detector bin (left neighbour, interpolation weight) of every pixel centre, for each view:
    the one sampling of the pixel-driven projector pair below and of `_back_projection`."""
    import torch

    rows = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    columns = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    y, x = (c.reshape(-1) for c in torch.meshgrid(rows, columns, indexing="ij"))
    t = x[None] * torch.cos(angles)[:, None] + y[None] * torch.sin(angles)[:, None] + (bins - 1) / 2
    left = t.floor().clamp(0, bins - 2)
    weight = (t - left).clamp(0, 1)
    return left.long(), weight


def _project(images, geometry, bins: int):
    """Pixel-driven parallel-beam projection of (batch, pixels) images for the views of
    `geometry`: the exact adjoint of `_adjoint_project`, so the pair suits MLEM. Each pixel's value
    goes to its two nearest bins, so every view holds the image's total (counts are conserved)."""
    import torch

    left, weight = geometry
    views = left.shape[0]
    index = (left + torch.arange(views)[:, None] * bins).reshape(-1)
    sinogram = torch.zeros(images.shape[0], views * bins, dtype=images.dtype)
    values = images[:, None, :]
    sinogram.index_add_(1, index, (values * (1 - weight)).reshape(images.shape[0], -1))
    sinogram.index_add_(1, index + 1, (values * weight).reshape(images.shape[0], -1))
    return sinogram.reshape(images.shape[0], views, bins)


def _adjoint_project(sinograms, geometry):
    """Back-projection (the transpose of `_project`) of (batch, views, bins) onto (batch, pixels),
    summed over views without the pi / views factor of filtered back-projection."""
    import torch

    left, weight = geometry
    batch = sinograms.shape[0]
    left = left.expand(batch, -1, -1)
    return (torch.gather(sinograms, 2, left) * (1 - weight) + torch.gather(sinograms, 2, left + 1) * weight).sum(1)


def _view_chunks(views: int, pixels: int) -> list[slice]:
    """Views taken a few at a time, so the per-view temporaries (views x pixels) stay about 1 M
    elements: larger ones run several times slower (memory bound) on 512 x 512 slices."""
    step = max(2, min(32, 2**20 // max(pixels, 1)))
    return [slice(s, min(s + step, views)) for s in range(0, views, step)]


def _back_projection(sinogram, angles, height: int, width: int):
    """Unfiltered parallel-beam back-projection of a (views x bins) sinogram onto the centred
    height x width image (bins must cover its diagonal), with the pi / views factor of filtered
    back-projection."""
    bins = sinogram.shape[1]
    image = sum(_adjoint_project(sinogram[None, c], _pixel_geometry(angles[c], height, width, bins))[0]
                for c in _view_chunks(len(angles), height * width))
    return (image * (np.pi / len(angles))).reshape(height, width)


def _ramp_filtered(sinogram, kernel: str, cutoff: float = 1.0):
    """Each view (last axis: detector bins) filtered with the ramp times the kernel's window,
    zero-padded to twice its length so the filter does not wrap around."""
    import torch

    bins = sinogram.shape[-1]
    frequency = np.fft.rfftfreq(2 * bins)
    response = torch.from_numpy((np.abs(frequency) * reconstruction_window(kernel, frequency, cutoff)).astype(np.float32))
    return torch.fft.irfft(torch.fft.rfft(sinogram, n=2 * bins) * response, n=2 * bins)[..., :bins]


def simulate_ct_noise(
    hu: np.ndarray,
    noise_hu: float,
    *,
    kernel: str = "hann",
    cutoff: float = 1.0,
    pixel_size_mm: float = 1.0,
    num_views: int = 256,
    mu_water_per_mm: float = 0.0188,
    lowfreq: float = 0.0,
    tube_current_modulation: float = 0.0,
    bowtie: float = 0.0,
    rng: np.random.Generator,
) -> np.ndarray:
    """Low-dose CT noise made in the projection domain and calibrated in HU.

    The slice's line integrals p (parallel beam, from attenuation mu_water (1 + HU/1000)) set the
    variance of the quantum noise of each detector reading, proportional to exp(p) as for Poisson
    counts I0 exp(-p) after the log. That noise sinogram is filtered with the ramp times the
    kernel's window and back-projected, so the noise has the kernel's texture, the streaks along
    strongly attenuating paths and the stronger noise at the body's centre of a real scan. It is
    then scaled so its standard deviation in soft tissue (-150..250 HU in the clean slice) is
    `noise_hu`: a noise level means the same on every anatomy, pixel size and kernel, unlike a
    dose fraction. Only noise is added, so the mean HU is kept. The attenuation weights come from
    a 2x-downsampled projection (they are smooth); the noise is reconstructed at full size.
    `lowfreq` (0..1) is the share of the noise variance given to a coarser component (white noise
    blurred by a 1-pixel Gaussian, scaled by the local level of the reconstructed noise so it
    follows the same spatial pattern): real scanner noise has more power at low frequencies than
    filtered back-projection of white sinogram noise gives (see medgan-evaluate's nps.png).
    Two features of clinical scanners make real noise more even than that of a constant beam:
    `tube_current_modulation` (0..1) scales each view's tube current by its mean transmitted
    variance to that power (1: every view contributes the same mean variance, as angular dose
    modulation aims for; it weakens the streaks along the body's long axis), and `bowtie` (>= 0)
    is a bowtie filter's attenuation, bowtie * t**2 in line-integral units at detector offset t
    (-1..1 across the field), which lowers the flux, so raises the noise, towards the periphery.
    """
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter

    if noise_hu <= 0:
        raise ValueError(f"the noise level must be positive, got {noise_hu} HU")
    if not 0 <= lowfreq <= 1:
        raise ValueError(f"lowfreq is a share of the noise variance, 0..1; got {lowfreq}")
    if not 0 <= tube_current_modulation <= 1:
        raise ValueError(f"tube_current_modulation is an exponent, 0..1; got {tube_current_modulation}")
    if bowtie < 0:
        raise ValueError(f"bowtie is an attenuation, >= 0; got {bowtie}")
    height, width = hu.shape
    n = int(np.ceil(np.hypot(height, width))) + 2
    n += n % 2
    top, left = (n - height) // 2, (n - width) // 2
    mu = np.zeros((n, n), dtype=np.float32)
    mu[top : top + height, left : left + width] = np.clip(mu_water_per_mm * (1.0 + hu / 1000.0), 0.0, None)
    angles = torch.linspace(0, np.pi, num_views + 1, dtype=torch.float32)[:-1]
    with torch.no_grad():
        coarse = F.avg_pool2d(torch.from_numpy(mu)[None, None], 2)
        integrals = _parallel_projections(coarse, angles) * (2 * pixel_size_mm)
        integrals = F.interpolate(integrals[:, None], size=n, mode="linear", align_corners=False)[:, 0]
        offset = torch.linspace(-1.0, 1.0, n, dtype=torch.float32)
        amplitude = torch.exp((integrals + bowtie * offset**2) / 2)  # the standard deviation of a reading
        if tube_current_modulation > 0:
            amplitude = amplitude / (amplitude**2).mean(dim=1, keepdim=True) ** (tube_current_modulation / 2)
        noise = torch.from_numpy(rng.standard_normal((num_views, n)).astype(np.float32)) * amplitude
        image = _back_projection(_ramp_filtered(noise, kernel, cutoff), angles, height, width).numpy()
    tissue = (hu > -150) & (hu < 250)
    if tissue.sum() < 200:
        tissue = hu > -500
    if tissue.sum() < 200:
        tissue = np.ones_like(hu, dtype=bool)
    image /= float(np.std(image[tissue]))
    if lowfreq > 0:
        local_level = np.sqrt(gaussian_filter(image**2, 8.0))
        coarse_noise = gaussian_filter(rng.standard_normal(hu.shape), 1.0) * local_level
        coarse_noise /= float(np.std(coarse_noise[tissue]))
        image = np.sqrt(1 - lowfreq) * image + np.sqrt(lowfreq) * coarse_noise
        image /= float(np.std(image[tissue]))
    return (hu + noise_hu * image).astype(np.float32)


def soft_tissue_noise_hu(noisy: np.ndarray, clean: np.ndarray) -> float:
    """The standard deviation of noisy - clean in soft tissue (-150..250 HU in the clean slice)."""
    tissue = (clean > -150) & (clean < 250)
    return float(np.std((noisy - clean)[tissue]))


# ---------------------------------------------------------------- PET
# Expected counts of a full-count 2-D slice (all lines of response of its sinogram together, for a
# slice 2-3 mm thick). Clinical whole-body FDG (2-3 min per bed) collects some 1e7-1e8 true
# coincidences per bed over 80-110 direct planes, i.e. about 1e5-1e6 per slice. PET_FULL_COUNTS
# sits at the top of that range because randoms, scatter and attenuation, which are not
# simulated, would add noise: it was chosen so that on the body phantom at 2 mm pixels
# (phantoms.py) with the default reconstruction (OSEM 2 x 16, 4 mm post-filter) the liver's noise
# at full count is about 11 % of its mean, the coefficient of variation of clinical full-count
# liver VOIs (10-15 %). 3e5 gave 16-18 %; the noise goes as 1 / sqrt(counts).
PET_FULL_COUNTS = 8e5
PET_RECONSTRUCTIONS = ("osem", "fbp")


def simulate_low_count_pet(
    activity: np.ndarray,
    count_fraction: float,
    *,
    counts: float = PET_FULL_COUNTS,
    pixel_size_mm: float = 1.0,
    num_views: int = 0,
    recon: str = "osem",
    iterations: int = 2,
    subsets: int = 16,
    smooth_mm: float = 4.0,
    rng: np.random.Generator,
) -> np.ndarray:
    """Low-count PET by count thinning in the projection domain (METHOD.md), in activity units.

    The non-negative activity slice is forward projected (parallel beam, one detector bin per
    pixel); the sinogram is scaled so that a full-count slice holds `counts` expected counts in
    all (see PET_FULL_COUNTS: counts per slice, not per pixel, so finer pixels are noisier, as on
    a scanner), and Poisson counts are drawn at `count_fraction` of that. Thinning each count with
    probability f gives exactly Poisson(f lambda). The noise is reconstructed and added to the
    activity, as simulate_ct_noise does: with OSEM (default; `iterations` x `subsets`, uniform
    start) it is OSEM(noisy) - OSEM(noiseless), which gives the signal-dependent noise of clinical
    iterative reconstructions (stronger in hot organs, weaker in the lungs); with "fbp" it is the
    Hann-filtered back-projection of the count noise (about uniform over the body). A Gaussian
    post-filter of `smooth_mm` FWHM (pixel_size_mm sets it in pixels) gives the noise a clinical
    grain. The mean is kept and the reconstruction's own blur does not enter the target.
    Attenuation, scatter and randoms are not modelled. num_views=0 uses about half the detector
    bins, as scanners do. An all-zero slice holds no counts and is returned unchanged.
    """
    import torch
    from scipy.ndimage import gaussian_filter

    if not 0 < count_fraction <= 1:
        raise ValueError(f"count fraction must be in (0, 1], got {count_fraction}")
    if recon not in PET_RECONSTRUCTIONS:
        raise ValueError(f"unknown PET reconstruction {recon!r}; choose one of {', '.join(PET_RECONSTRUCTIONS)}")
    if counts <= 0:
        raise ValueError(f"the full-count level must be positive, got {counts}")
    activity = np.asarray(activity, dtype=np.float32)
    if activity.ndim != 2:
        raise ValueError(f"expected a 2-D activity slice, got shape {activity.shape}")
    if not np.all(np.isfinite(activity)) or activity.min() < 0:
        raise ValueError("PET activity must be finite and non-negative (clip a reconstruction's negative values first)")
    total = float(activity.sum(dtype=np.float64))
    if total <= 0:
        return activity.copy()
    height, width = activity.shape
    bins = int(np.ceil(np.hypot(height, width))) + 2
    views = int(num_views) or max(32, bins // 2)
    angles = torch.linspace(0, np.pi, views + 1, dtype=torch.float32)[:-1]
    # expected counts per bin: every view holds the slice's total, so the sinogram sums to `counts`
    count_scale = count_fraction * counts / (views * total)
    with torch.no_grad():
        image = torch.from_numpy(activity.reshape(1, -1))
        expected = torch.cat([_project(image, _pixel_geometry(angles[c], height, width, bins), bins)
                              for c in _view_chunks(views, height * width)], dim=1)
        expected = expected[0].clamp_min(0).double() * count_scale
        measured = torch.from_numpy(rng.poisson(expected.numpy()).astype(np.float64))
        if recon == "fbp":
            noise_sinogram = ((measured - expected) / count_scale).float()
            noise = _back_projection(_ramp_filtered(noise_sinogram, "hann"), angles, height, width)
        else:
            data = torch.stack([measured, expected]).float()  # (2, views, bins): noisy and noiseless
            estimate = (data.sum(dim=(1, 2)) / (views * height * width))[:, None].repeat(1, height * width)
            order = [torch.arange(k, views, subsets) for k in range(min(subsets, views))]
            for _ in range(iterations):
                for subset in order:
                    update = torch.zeros_like(estimate)
                    for c in _view_chunks(len(subset), height * width):  # a view's ratio needs only its own projection
                        geometry = _pixel_geometry(angles[subset[c]], height, width, bins)
                        forward = _project(estimate, geometry, bins)
                        ratio = torch.where(forward > 0, data[:, subset[c]] / forward.clamp_min(1e-12), torch.zeros(()))
                        update += _adjoint_project(ratio, geometry)
                    # every pixel reaches a bin in each view, so the subset's sensitivity is its view count
                    estimate = estimate * update / len(subset)
            # OSEM's total follows the counts of the last subset alone; give each image the total of
            # all its counts, as a full MLEM iteration would (else a few % of random scale per slice)
            estimate = estimate * (data.sum(dim=(1, 2)) / views / estimate.sum(dim=1).clamp_min(1e-12))[:, None]
            noise = (estimate[0] - estimate[1]) / count_scale
    noise = noise.reshape(height, width).double().numpy()
    if smooth_mm > 0:
        noise = gaussian_filter(noise, smooth_mm / FWHM_PER_SIGMA / pixel_size_mm)
    return (activity + noise).astype(np.float32)


def thin_pet_counts(activity: np.ndarray, count_fraction: float, *, counts_per_unit: float, rng: np.random.Generator) -> np.ndarray:
    """Low-count PET, the cheap image-domain approximation of count thinning: Poisson counts at
    count_fraction of the full level, rescaled to activity units (mean kept). White noise, no
    reconstruction texture; simulate_low_count_pet is the realistic one."""
    if not 0 < count_fraction <= 1:
        raise ValueError(f"count fraction must be in (0, 1], got {count_fraction}")
    scale = counts_per_unit * count_fraction
    return (rng.poisson(np.clip(activity, 0, None) * scale) / scale).astype(np.float32)


# ---------------------------------------------------------------- MR
def undersample_kspace(
    image: np.ndarray, acceleration: float = 4.0, centre_fraction: float = 0.08, *, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cartesian undersampling along the phase-encode axis (rows): a fully sampled centre block
    plus random other lines, round(n / acceleration) lines in all. Returns the zero-filled
    magnitude reconstruction and the boolean mask of kept lines."""
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    n = image.shape[0]
    keep = int(round(n / acceleration))
    centre = min(keep, int(round(n * centre_fraction)))
    mask = np.zeros(n, dtype=bool)
    start = n // 2 - centre // 2
    mask[start : start + centre] = True
    others = np.flatnonzero(~mask)
    mask[rng.choice(others, size=keep - centre, replace=False)] = True
    kspace = np.fft.fftshift(np.fft.fft2(image, norm="ortho"))
    kspace[~mask, :] = 0
    recon = np.abs(np.fft.ifft2(np.fft.ifftshift(kspace), norm="ortho"))
    return recon.astype(np.float32), mask


def add_rician_noise(image: np.ndarray, sigma: float, *, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise: sqrt((x + s e1)^2 + (s e2)^2)."""
    real = image + sigma * rng.standard_normal(image.shape)
    imaginary = sigma * rng.standard_normal(image.shape)
    return np.hypot(real, imaginary).astype(np.float32)


# ---------------------------------------------------------------- X-ray
def simulate_low_dose_xray(
    image: np.ndarray,
    photons: float,
    *,
    electronic_std: float = 3.0,
    blur_px: float = 0.0,
    log_contrast: float = 0.0,
    rng: np.random.Generator,
) -> np.ndarray:
    """Low-dose projection radiograph: quantum (Poisson) plus electronic (Gaussian) noise.

    Assumes a linear detector image: the pixel value is proportional to the detected quanta, and
    the image's robust maximum (99.5th percentile, the least attenuated pixels) corresponds to
    `photons` quanta per pixel (a chest radiograph detects some 1e3 quanta per 0.14 mm pixel
    behind the lungs, low dose a tenth of that). `electronic_std` is the detector's read noise in
    quanta. So the variance in image units is affine in the signal: var = a x + b with
    a = scale / photons and b = (scale electronic_std / photons)^2 (scale = the robust maximum).
    blur_px > 0 correlates the noise as a scintillator does (Gaussian sigma in pixels),
    renormalised so the per-pixel variance keeps the formula above. The mean is kept.

    Displayed radiographs (MONOCHROME2 after processing, bright = attenuating) are log images
    instead: with log_contrast = c > 0 the value is taken as linear in -log(quanta), the robust
    minimum (0.5th percentile) receiving `photons` quanta and the robust maximum c e-folds fewer
    (c = 3: 20x, lung against mediastinum). The noisy quanta are logged back, so the noise in
    image units, (range / c) sqrt(q + e^2) / q, grows where few quanta arrive (bone, mediastinum).
    The mean is then kept to first order (the log of few counts is biased, as on a detector).
    """
    from scipy.ndimage import gaussian_filter

    if photons <= 0:
        raise ValueError(f"the quanta at the robust maximum must be positive, got {photons}")
    if electronic_std < 0:
        raise ValueError(f"the electronic noise must be non-negative, got {electronic_std}")
    if log_contrast < 0:
        raise ValueError(f"the log contrast must be non-negative, got {log_contrast}")
    image = np.asarray(image, dtype=np.float32)
    if log_contrast > 0:
        low, high = (float(v) for v in np.percentile(image, [0.5, 99.5]))
        scale = (high - low) / log_contrast or 1.0
        quanta = photons * np.exp(-(image.astype(np.float64) - low) / scale)
    else:
        scale = _robust_max(image)
        quanta = np.clip(image, 0, None).astype(np.float64) * (photons / scale)
    noise = (rng.poisson(quanta) - quanta) + rng.normal(0.0, electronic_std, image.shape)
    if blur_px > 0:
        noise = gaussian_filter(noise, blur_px) / gaussian_kernel_norm((blur_px, blur_px))  # white noise keeps its variance
    if log_contrast > 0:
        measured = np.maximum(quanta + noise, 0.5)  # a detector reading below half a quantum is logged as that
        return (image - scale * np.log(measured / quanta)).astype(np.float32)
    return (image + noise * (scale / photons)).astype(np.float32)


# ---------------------------------------------------------------- ultrasound
RAYLEIGH_SNR = float(np.sqrt(np.pi / (4 - np.pi)))  # mean / std of fully developed speckle, 1.913


def speckle_field(
    shape: tuple[int, int], grain_px: tuple[float, float], *, rng: np.random.Generator
) -> np.ndarray:
    """Fully developed speckle: the magnitude of circular complex Gaussian scatterers filtered by a
    Gaussian point-spread function, normalised to mean 1 (Rayleigh distributed, SNR 1.91).
    grain_px = (axial, lateral) FWHM of the PSF in pixels along axis 0 (depth) and axis 1; it is
    also the FWHM of the speckle's intensity autocorrelation, i.e. the grain size."""
    from scipy.ndimage import gaussian_filter

    sigma = np.asarray(grain_px, dtype=np.float64) / FWHM_PER_SIGMA
    if sigma.shape != (2,) or np.any(sigma <= 0):
        raise ValueError(f"grain must be two positive sizes (axial, lateral), got {grain_px}")
    real = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    imaginary = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    # each part has the variance sum(psf^2); a Rayleigh magnitude of that scale has mean s sqrt(pi / 2)
    scale = gaussian_kernel_norm(tuple(sigma), shape)
    return (np.hypot(real, imaginary) / (scale * np.sqrt(np.pi / 2))).astype(np.float32)


def simulate_speckle(
    image: np.ndarray,
    strength: float,
    *,
    grain_px: tuple[float, float] | None = None,
    grain_mm: tuple[float, float] | None = None,
    pixel_size_mm: float = 1.0,
    dynamic_range_db: float = 0.0,
    rng: np.random.Generator,
) -> np.ndarray:
    """Ultrasound speckle: the envelope multiplied by 1 + strength (S - 1), S a speckle_field.

    strength 0 leaves the image unchanged, 1 gives fully developed speckle (Rayleigh, mean / std
    1.91 in a uniform region); the multiplier has mean 1, so the mean is kept. The grain is the
    PSF's FWHM (axial along axis 0, shorter; lateral along axis 1), in pixels or in mm with
    pixel_size_mm (default 2 x 4 pixels). With dynamic_range_db > 0 the image is taken as a
    log-compressed B-mode display over that many dB (its maximum at 0 dB): it is decompressed to
    the envelope, speckled, and compressed again, with the multiplier scaled to a geometric mean
    of 1 so the display's mean is kept; pixels at the display's floor (no echo, or outside the
    sector) stay as they are.
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"speckle strength must be in [0, 1], got {strength}")
    if grain_mm is not None:
        grain = tuple(float(g) / pixel_size_mm for g in grain_mm)
    else:
        grain = tuple(grain_px) if grain_px is not None else (2.0, 4.0)
    image = np.asarray(image, dtype=np.float32)
    multiplier = 1.0 + strength * (speckle_field(image.shape, grain, rng=rng) - 1.0)
    if dynamic_range_db <= 0:
        return (image * multiplier).astype(np.float32)
    top, floor = float(image.max()) or 1.0, float(image.min())
    log_multiplier = np.log10(np.maximum(multiplier, 1e-6))
    log_multiplier -= log_multiplier.mean()
    display = np.clip(image + top * 20.0 * log_multiplier / dynamic_range_db, min(0.0, floor), top)
    # pixels at the display's floor hold an unknown, weaker echo (or none: anechoic, outside the sector)
    return np.where(image <= floor, image, display).astype(np.float32)


# ---------------------------------------------------------------- generic (second paper)
def add_gaussian_noise(image: np.ndarray, sigma: float, *, rng: np.random.Generator) -> np.ndarray:
    return (image + sigma * rng.standard_normal(image.shape)).astype(np.float32)


def add_poisson_noise(image: np.ndarray, peak: float, *, rng: np.random.Generator) -> np.ndarray:
    """Shot noise: the image scaled so its maximum is `peak` counts, Poisson-sampled, scaled back."""
    maximum = float(np.max(image)) or 1.0
    return (rng.poisson(np.clip(image, 0, None) * peak / maximum) * maximum / peak).astype(np.float32)


def add_speckle_noise(image: np.ndarray, sigma: float, *, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise x (1 + sigma n), as in ultrasound and OCT."""
    return (image * (1.0 + sigma * rng.standard_normal(image.shape))).astype(np.float32)


def add_salt_and_pepper(image: np.ndarray, amount: float, *, rng: np.random.Generator) -> np.ndarray:
    """A fraction `amount` of pixels set to the image's minimum or maximum, half each."""
    out = image.astype(np.float32, copy=True)
    hit = rng.random(image.shape) < amount
    salt = rng.random(image.shape) < 0.5
    out[hit & salt] = image.max()
    out[hit & ~salt] = image.min()
    return out


# ---------------------------------------------------------------- specs
# kind -> (parameter defaults). A default written as a tuple is a range drawn per call.
_DEFAULTS: dict[str, dict[str, float | str | tuple[float, float]]] = {
    "ct_noise": {"hu": (10.0, 60.0), "kernel": "any", "cutoff": (0.7, 1.0), "pixel": 0.0, "views": 256, "lowfreq": 0.0,
                 "tcm": 0.0, "bowtie": 0.0},
    "ct_low_dose": {"dose": (0.1, 0.5), "photons": 1e5, "electronic": 10.0, "angles": 0},
    "pet_counts": {"fraction": (0.05, 0.5), "counts": PET_FULL_COUNTS, "recon": "osem", "iterations": 2, "subsets": 16,
                   "smooth": 4.0, "views": 0},
    "xray": {"photons": (50.0, 1000.0), "electronic": 3.0, "blur": 0.0, "log": 0.0},
    "us_speckle": {"strength": (0.3, 1.0), "axial": (1.5, 3.0), "lateral": (3.0, 6.0), "unit": "px", "db": 0.0},
    "mr_undersample": {"acceleration": 4.0, "centre": 0.08},
    "rician": {"sigma": (0.02, 0.05)},
    "gaussian": {"sigma": (0.01, 0.05)},
    "poisson": {"peak": (20.0, 200.0)},
    "speckle": {"sigma": (0.05, 0.2)},
    "salt_pepper": {"amount": (0.001, 0.01)},
    "mixed": {},
}
_GENERIC = ("gaussian", "poisson", "speckle", "salt_pepper")


def _parse_value(text: str) -> float | tuple[float, float]:
    body = text.strip()
    # a range "a-b"; a leading '-' or an exponent's '-' belongs to the number
    for i in range(1, len(body)):
        if body[i] == "-" and body[i - 1] not in "eE":
            return float(body[:i]), float(body[i + 1 :])
    return float(body)


def parse_spec(spec: str) -> tuple[str, dict[str, float | tuple[float, float]]]:
    """'gaussian:sigma=0.01-0.05' -> ('gaussian', {'sigma': (0.01, 0.05)}), defaults filled in."""
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in _DEFAULTS:
        raise ValueError(f"unknown degradation {kind!r}; valid kinds: {', '.join(_DEFAULTS)}")
    params = dict(_DEFAULTS[kind])
    for item in filter(None, (p.strip() for p in rest.split(","))):
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or name not in params:
            raise ValueError(f"degradation {kind!r} has no parameter {name!r}; valid: {', '.join(params) or 'none'}")
        if isinstance(params[name], str):
            params[name] = value.strip().lower()
            continue
        try:
            params[name] = _parse_value(value)
        except ValueError as error:
            raise ValueError(f"bad value {value!r} for {kind}:{name}: give a number or a range a-b") from error
    return kind, params


def _draw(value: float | tuple[float, float], rng: np.random.Generator) -> float:
    if isinstance(value, str):
        return value
    return float(rng.uniform(*value)) if isinstance(value, tuple) else float(value)


def _robust_max(image: np.ndarray) -> float:
    return float(np.percentile(image, 99.5)) or float(np.max(np.abs(image))) or 1.0


class Degradation:
    """A parsed spec; call it as degrade(clean_slice, rng, pixel_size_mm=1.0). Picklable, so
    slices can be degraded in worker processes."""

    def __init__(self, spec: str):
        self.spec = spec
        self.kind, self.params = parse_spec(spec)

    def __repr__(self) -> str:
        return f"Degradation({self.spec!r})"

    def __call__(self, image: np.ndarray, rng: np.random.Generator, pixel_size_mm: float = 1.0) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        kind = self.kind
        p = {name: _draw(value, rng) for name, value in self.params.items()}
        if kind == "ct_noise":
            kernel = str(rng.choice(CT_KERNELS)) if p["kernel"] == "any" else p["kernel"]
            return simulate_ct_noise(image, p["hu"], kernel=kernel, cutoff=p["cutoff"], rng=rng,
                                     pixel_size_mm=p["pixel"] or pixel_size_mm, num_views=int(p["views"]),
                                     lowfreq=p["lowfreq"], tube_current_modulation=p["tcm"], bowtie=p["bowtie"])
        if kind == "ct_low_dose":
            return simulate_low_dose_ct(image, p["dose"], pixel_size_mm=pixel_size_mm, full_dose_photons=p["photons"],
                                        electronic_noise_std=p["electronic"], num_angles=int(p["angles"]), rng=rng)
        if kind == "pet_counts":
            # a reconstruction's small negative values are kept as they are; counts come from the rest
            positive = np.clip(np.nan_to_num(image), 0, None)
            low = simulate_low_count_pet(positive, p["fraction"], counts=p["counts"], recon=p["recon"],
                                         iterations=int(p["iterations"]), subsets=int(p["subsets"]), smooth_mm=p["smooth"],
                                         num_views=int(p["views"]), pixel_size_mm=pixel_size_mm, rng=rng)
            return (image + (low - positive)).astype(np.float32)
        if kind == "xray":
            return simulate_low_dose_xray(image, p["photons"], electronic_std=p["electronic"], blur_px=p["blur"],
                                          log_contrast=p["log"], rng=rng)
        if kind == "us_speckle":
            if p["unit"] not in ("px", "mm"):
                raise ValueError(f"us_speckle:unit must be px or mm, got {p['unit']!r}")
            grain = (p["axial"], p["lateral"])
            return simulate_speckle(image, p["strength"], rng=rng, dynamic_range_db=p["db"], pixel_size_mm=pixel_size_mm,
                                    grain_px=grain if p["unit"] == "px" else None, grain_mm=grain if p["unit"] == "mm" else None)
        scale = _robust_max(image)
        if kind == "mr_undersample":
            return undersample_kspace(image, p["acceleration"], p["centre"], rng=rng)[0]
        if kind == "rician":
            return add_rician_noise(image, p["sigma"] * scale, rng=rng)
        if kind == "mixed":
            kind = str(rng.choice(_GENERIC))
            p = {name: _draw(value, rng) for name, value in _DEFAULTS[kind].items()}
        return _generic(kind, image, scale, p, rng)


class OneOf:
    """Several degradations, one drawn per call with equal chance ("a|b": list one twice to
    weight it double), for a model that must handle each, as MR thermal noise and undersampling."""

    def __init__(self, spec: str):
        self.spec = spec
        self.choices = [Degradation(part) for part in spec.split("|")]

    def __repr__(self) -> str:
        return f"OneOf({self.spec!r})"

    def __call__(self, image: np.ndarray, rng: np.random.Generator, pixel_size_mm: float = 1.0) -> np.ndarray:
        return self.choices[int(rng.integers(len(self.choices)))](image, rng, pixel_size_mm=pixel_size_mm)


def make_degradation(spec: str) -> Degradation | OneOf:
    """A callable degrade(clean_slice, rng, pixel_size_mm=1.0) -> degraded float32 slice;
    "spec1|spec2" draws one of the specs per call."""
    if "|" in spec:
        return OneOf(spec)
    return Degradation(spec)


def _generic(kind: str, image: np.ndarray, scale: float, p: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return add_gaussian_noise(image, p["sigma"] * scale, rng=rng)
    if kind == "poisson":
        return add_poisson_noise(image, p["peak"], rng=rng)
    if kind == "speckle":
        return add_speckle_noise(image, p["sigma"], rng=rng)
    return add_salt_and_pepper(image, p["amount"], rng=rng)
