"""Physically motivated degradations that turn clean slices into realistic low-quality ones.

One function per degradation, plus `make_degradation(spec)` that builds a callable
`degrade(clean_slice, rng, pixel_size_mm=1.0) -> degraded_slice` from a short text spec:

    kind[:name=value[,name=value...]]      a value "a-b" is drawn uniformly per call

    ct_noise:hu=10-60[,kernel=any,cutoff=0.7-1,pixel=0,views=256]   projection-domain CT noise calibrated in HU
    ct_low_dose:dose=0.1-0.5[,photons=1e5,electronic=10,angles=0]   projection-domain low-dose CT (HU in, HU out)
    pet_counts:fraction=0.1[,counts=200]   Poisson count thinning (counts per unit of the slice's robust max)
    mr_undersample:acceleration=4[,centre=0.08]   Cartesian k-space undersampling, zero-filled magnitude
    rician:sigma=0.02-0.05                 Rician noise, sigma relative to the slice's robust max
    gaussian:sigma=0.01-0.05 | poisson:peak=20-200 | speckle:sigma=0.05-0.2 | salt_pepper:amount=0.001-0.01
    mixed                                  one of the four generic kinds at a random strength
    spec1|spec2[|...]                      one of the specs, drawn per call (list one twice to weight it)

Strengths of the MR, PET and generic kinds are relative to the slice's 99.5th percentile, so a
spec means the same on any intensity scale. CT works in HU.
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


def _back_projection(sinogram, angles, height: int, width: int):
    """Unfiltered parallel-beam back-projection of a (views x bins) sinogram onto the centred
    height x width image (bins must cover its diagonal)."""
    import torch

    views, bins = sinogram.shape
    rows = torch.arange(height, dtype=sinogram.dtype) - (height - 1) / 2
    columns = torch.arange(width, dtype=sinogram.dtype) - (width - 1) / 2
    y, x = (c.reshape(-1) for c in torch.meshgrid(rows, columns, indexing="ij"))
    image = torch.zeros(height * width, dtype=sinogram.dtype)
    for start in range(0, views, 32):
        a = angles[start : start + 32, None]
        t = x[None] * torch.cos(a) + y[None] * torch.sin(a) + (bins - 1) / 2
        left = t.floor().clamp(0, bins - 2)
        weight = (t - left).clamp(0, 1)
        left = left.long()
        rows = sinogram[start : start + 32]
        image += (torch.gather(rows, 1, left) * (1 - weight) + torch.gather(rows, 1, left + 1) * weight).sum(0)
    return (image * (np.pi / views)).reshape(height, width)


def simulate_ct_noise(
    hu: np.ndarray,
    noise_hu: float,
    *,
    kernel: str = "hann",
    cutoff: float = 1.0,
    pixel_size_mm: float = 1.0,
    num_views: int = 256,
    mu_water_per_mm: float = 0.0188,
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
    """
    import torch
    import torch.nn.functional as F

    if noise_hu <= 0:
        raise ValueError(f"the noise level must be positive, got {noise_hu} HU")
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
        noise = torch.from_numpy(rng.standard_normal((num_views, n)).astype(np.float32)) * torch.exp(integrals / 2)
        frequency = np.fft.rfftfreq(2 * n)
        response = torch.from_numpy((np.abs(frequency) * reconstruction_window(kernel, frequency, cutoff)).astype(np.float32))
        filtered = torch.fft.irfft(torch.fft.rfft(noise, n=2 * n) * response, n=2 * n)[:, :n]
        image = _back_projection(filtered, angles, height, width).numpy()
    tissue = (hu > -150) & (hu < 250)
    if tissue.sum() < 200:
        tissue = hu > -500
    if tissue.sum() < 200:
        tissue = np.ones_like(hu, dtype=bool)
    image *= noise_hu / float(np.std(image[tissue]))
    return (hu + image).astype(np.float32)


def soft_tissue_noise_hu(noisy: np.ndarray, clean: np.ndarray) -> float:
    """The standard deviation of noisy - clean in soft tissue (-150..250 HU in the clean slice)."""
    tissue = (clean > -150) & (clean < 250)
    return float(np.std((noisy - clean)[tissue]))


# ---------------------------------------------------------------- PET
def thin_pet_counts(activity: np.ndarray, count_fraction: float, *, counts_per_unit: float, rng: np.random.Generator) -> np.ndarray:
    """Low-count PET, image-domain approximation of projection-domain count thinning: Poisson
    counts at count_fraction of the full level, rescaled to activity units (mean kept)."""
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
    "ct_noise": {"hu": (10.0, 60.0), "kernel": "any", "cutoff": (0.7, 1.0), "pixel": 0.0, "views": 256},
    "ct_low_dose": {"dose": (0.1, 0.5), "photons": 1e5, "electronic": 10.0, "angles": 0},
    "pet_counts": {"fraction": 0.1, "counts": 200.0},
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
                                     pixel_size_mm=p["pixel"] or pixel_size_mm, num_views=int(p["views"]))
        if kind == "ct_low_dose":
            return simulate_low_dose_ct(image, p["dose"], pixel_size_mm=pixel_size_mm, full_dose_photons=p["photons"],
                                        electronic_noise_std=p["electronic"], num_angles=int(p["angles"]), rng=rng)
        scale = _robust_max(image)
        if kind == "pet_counts":
            return thin_pet_counts(image / scale, p["fraction"], counts_per_unit=p["counts"], rng=rng) * scale
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
