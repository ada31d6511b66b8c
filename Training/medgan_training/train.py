"""Train a content-noise complementary GAN denoiser.

One readable loop; all settings in TrainConfig. Runs on one process as it is, and under
`torchrun --nproc_per_node=N` with DistributedDataParallel (NCCL on GPUs, gloo on CPU):

    medgan-train --clean data/ct_head_cranium.nii.gz data/ct_body_chest_abdomen.nii.gz
        --modality CT --degradation "ct_noise:hu=10-60" --out runs/ct_unet --epochs 20
    torchrun --nproc_per_node=2 -m medgan_training.train ...same arguments...

Every epoch: validation on held-out whole slices through the inference engine (eval mode,
exactly as users run it), a CSV log, a loss-curve PNG, a picture panel and a checkpoint
(`--resume` continues from it). `--export DIR` writes the weights and their model card.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from MedGANDenoiseLib.engine import cpu_has_native_bf16, denoise_volume
from MedGANDenoiseLib.networks import PatchDiscriminator, build_generator, fold_batchnorm, init_weights, widen_dncnn
from MedGANDenoiseLib.normalization import default_normalizer
from MedGANDenoiseLib.registry import LoadedModel, ModelCard, ModelRegistry, load_model, normalize_modality, write_model

from .datasets import PatchDataset, SlicePair, ValidationSlice, evenly_spaced, foreground_threshold, load_volume, pair_folders, simulate_pairs, split_slabs
from .degradations import make_degradation
from .evaluate import model_branches
from .metrics import CT_WINDOW, differentiable_ssim, format_summary, slice_metrics, summarize, window_for


def option(default: Any, help: str) -> Any:
    """A TrainConfig field with its --help sentence."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # data: clean scans + a simulated degradation, or paired low/high folders
    clean: list[str] = option([], "Clean scans (NIfTI, NRRD, MHA or a DICOM folder) to degrade with --degradation.")
    val_clean: list[str] = option([], "Clean scans used whole for validation only, never for training (e.g. held-out "
                                  "2-D images, whose one slice cannot be split into a slab).")
    low: str = option("", "Folder of low-quality scans, paired by file name with --high (real paired data).")
    high: str = option("", "Folder of high-quality scans paired with --low.")
    modality: str = option("CT", "Modality of the scans (CT, MR, PET, XRAY, US); sets the intensity normalisation.")
    degradation: str = option("ct_noise:hu=10-60", "Simulated degradation spec, e.g. ct_noise:hu=10-60 or rician:sigma=0.02-0.05 "
                              "(see medgan_training.degradations).")
    val_degradation: str = option("", "Degradation of the validation slices; default: the training one at a fixed "
                                  "realistic level (CT: 25 HU Hann-kernel noise).")
    axis: int = option(0, "Numpy axis of the volume that the 2-D slices are taken across (0: axial for most scans).")
    patch_size: int = option(96, "Side of the square training patches, in pixels.")
    samples_per_epoch: int = option(1600, "Training patches per epoch (over all processes).")
    variants_per_slice: int = option(4, "Degraded versions precomputed for each training slice.")
    zoom: str = option("1", "Comma-separated scale factors at which each training scan is used, e.g. 1,0.5,0.33 or 1,1.5 "
                       "(each in (0, 2]): a factor below 1 resamples the clean slices (anti-aliased) to a coarser pixel "
                       "before degrading them, so the image's own texture appears at a finer grain, as on other probes "
                       "and scanners; a factor above 1 resamples them (linear) to a finer pixel, so the anatomy spans "
                       "more pixels, as on a scan reconstructed at 0.4-0.5 mm (simulated degradations only; the noise "
                       "is made at the new pixel size). Each factor adds a copy of the training pairs with zoom^2 "
                       "times the pixels: 1,1.5 takes about 3.3x the memory and simulation time of 1.")
    gain_db: str = option("0", "Comma-separated display gains in dB (each in [-30, 0]) at which each training scan is "
                          "also used, e.g. 0,-6,-12 for log-compressed ultrasound (a list starting with a minus needs "
                          "--gain-db=-6,-12): the clean display lowered by that share of --display-db (range * |gain| / "
                          "display_db grey levels, range = max - min of the scan; what falls below the floor stays there), "
                          "then degraded, so that textured tissue also appears near the floor, where speckle is clipped. "
                          "The degradation sees the lowered display, so a us_speckle with db > 0 takes its top as the "
                          "display's and makes correspondingly weaker speckle (0.8x at -12 dB of 60). Each gain adds a "
                          "copy of the training pairs (of every --zoom factor).")
    display_db: float = option(60.0, "Dynamic range of the log-compressed display that --gain-db refers to, in dB.")
    balance_scans: bool = option(False, "Draw each training patch from a scan chosen uniformly, then one of its slices, "
                                 "so every scan weighs the same (default: every slice does, and a 27-frame cine "
                                 "outweighs a single image 27 to 1).")
    sim_cache: str = option("data/sim_cache", "Folder where simulated training pairs are cached for later runs ('' to disable).")
    val_fraction: float = option(0.15, "Fraction of each scan's slices held out, as one contiguous slab, for validation.")
    val_position: float = option(1.0, "Where the held-out slab lies in each scan: 0 = first slices, 1 = last.")
    val_slices: int = option(8, "Held-out slices used for validation each epoch (evenly spaced over all scans).")
    # model
    variant: str = option("unet", "Predictor variant: unet, dncnn or srdensenet.")
    width: int = option(16, "U-Net base width / DnCNN width / SRDenseNet growth rate.")
    depth: int = option(0, "U-Net pooling levels / DnCNN layers / SRDenseNet blocks; 0 keeps the variant's default.")
    downscale: int = option(1, "DnCNN/SRDenseNet only: run the predictors on the N x N pixel-unshuffled image (FFDNet's "
                            "layout; N times the receptive field at the cost of a full-resolution body N*N times narrower "
                            "in pixels); 1 keeps full resolution.")
    batch_norm: bool = option(True, "DnCNN only: BatchNorm in the hidden layers. --no-batch-norm gives them a bias "
                              "instead, so that training optimises exactly the network inference runs (no batch "
                              "statistics); with --init-from a BatchNorm DnCNN, its eval-mode statistics are folded into "
                              "its convolutions first, which starts the run from the very outputs it had; with --init-from a "
                              "narrower DnCNN and a larger --width, its weights are embedded in the wider network "
                              "(new channels start with no effect on the output), again from the same outputs.")
    mode: str = option("both", "Generator: both predictors (both), or one for the ablations (content, noise).")
    residual_content: bool = option(True, "Content predictor outputs a correction added to the input (c = x + Pc(x)).")
    refine: bool = option(False, "Add the refinement network after the fusion (second paper).")
    disc_width: int = option(64, "PatchGAN discriminator width (32 halves its cost on a CPU).")
    # losses: adversarial + l1_denoised * L1(y, clean) + l1_noise * L1(n, x - clean) [+ l1_content * L1(c, clean)]
    # [+ ssim_weight * (1 - SSIM(y, clean))]; --pixel-loss mse puts the mean squared error where L1 is
    gan_loss: str = option("lsgan", "Adversarial loss: lsgan, bce, or none for L1 only.")
    adv_weight: float = option(1.0, "Weight of the adversarial term of the generator loss.")
    l1_denoised: float = option(100.0, "Weight of L1(denoised, clean).")
    l1_noise: float = option(100.0, "Weight of L1(estimated noise, noisy - clean).")
    l1_content: float = option(0.0, "Weight of L1(content branch, clean), a direct target for the content predictor.")
    pixel_loss: str = option("l1", "Distance of the three pixel terms (--l1-denoised, --l1-noise, --l1-content): l1, "
                             "or mse, the mean squared error that PSNR measures (L1 estimates the median of what a "
                             "noisy pixel may hide, MSE its mean; a fine-tune of an L1-trained model, say).")
    ssim_weight: float = option(0.0, "Weight of 1 - SSIM(denoised, clean) (the evaluation's SSIM, over the evaluation "
                                "window's range): keeps local contrast and texture that L1 alone smooths away.")
    warmup_epochs: int = option(0, "Epochs trained with the L1 terms only before the adversarial term starts.")
    # optimisation
    lr: float = option(2e-4, "Generator learning rate (Adam, betas 0.5/0.999).")
    lr_d: float = option(2e-4, "Discriminator learning rate.")
    fusion_lr_scale: float = option(10.0, "Learning-rate multiplier of the 2-weight fusion (Adam moves each weight about lr a step).")
    calibrate_fusion: bool = option(True, "Before export, refit the fusion weight by least squares on training patches in eval mode (bias 0).")
    bn_recalibration_batches: int = option(200, "Before export, re-estimate every BatchNorm's running statistics as the plain "
                                           "average over this many training batches (0: keep the running averages of "
                                           "the last steps, which follow the last few batches' noise levels).")
    bn_recalibration_each_epoch: int = option(0, "Before each epoch's validation, re-estimate every BatchNorm's statistics "
                                              "over this many training batches, as export does (over its own batches), so "
                                              "the epoch is chosen with statistics estimated the way the exported model's "
                                              "are (0: validate with the running averages).")
    cosine_lr: bool = option(False, "Anneal both learning rates to zero over the epochs (cosine).")
    ema_decay: float = option(0.0, "Keep an exponential moving average of the generator's weights with this decay per "
                              "step (e.g. 0.999: an average over about the last 1,000 steps) and validate and export it "
                              "instead of the last step's weights, which the adversarial term keeps moving (0: off). "
                              "BatchNorm statistics are the live generator's; --bn-recalibration-each-epoch re-estimates "
                              "them for the averaged weights.")
    batch_size: int = option(16, "Patches per optimisation step on each process.")
    epochs: int = option(20, "Training epochs.")
    precision: str = option("auto", "Training precision: auto (bf16 autocast where the CPU/GPU has native bf16), bf16 or fp32.")
    seed: int = option(0, "Seed of the data simulation, patch sampling and initialisation.")
    num_workers: int = option(0, "Data-loader worker processes.")
    # output
    out: str = option("runs/train", "Folder for the log, loss curve, picture panels and checkpoint.")
    resume: bool = option(False, "Continue from the checkpoint in --out.")
    init_from: str = option("", "Start from the weights of an existing model (a registered model id, an exported "
                            "model's folder, or FOLDER:ID) instead of a random initialisation: fine-tuning, e.g. a shipped model on "
                            "your own scans (use a low --lr, e.g. 3e-5). Its architecture must be the one given by "
                            "--variant/--width/--depth.")
    export: str = option("", "Folder to export the best epoch's weights (fp16) and model card to.")
    select_on: str = option("psnr", "Validation metric that picks the exported epoch: psnr, or ssim where texture "
                                    "matters more than mean error (ultrasound speckle, say), or last: the final epoch, "
                                    "for a run whose validation data does not show what it trains for (a fine-tune on "
                                    "a changed degradation, say); with --resume and --export, last re-exports a finished "
                                    "run's final epoch.")
    model_id: str = option("", "Id of the exported model (default: <modality>-<variant>-<mode>-w<width>).")
    description: str = option("", "One-line description written into the model card.")

    def predictor_kwargs(self) -> dict[str, Any]:
        if self.variant == "unet":
            return {"base_width": self.width, **({"depth": self.depth} if self.depth else {})}
        grid = {"downscale": self.downscale} if self.downscale != 1 else {}
        if self.variant == "dncnn":
            return {"width": self.width, **({"num_layers": self.depth} if self.depth else {}), **grid,
                    **({} if self.batch_norm else {"batch_norm": False})}
        return {"growth_rate": self.width, **({"num_blocks": self.depth} if self.depth else {}), **grid}

    def architecture(self) -> dict[str, Any]:
        return {"variant": self.variant, "predictor": self.predictor_kwargs(), "mode": self.mode, "refine": self.refine,
                "residual_content": self.residual_content}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="medgan-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        text = f.metadata["help"]
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif isinstance(default, list):
            parser.add_argument(flag, nargs="+", default=default, metavar="FILE", help=text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"{text} Default: {default!r}.")
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    cfg.modality = normalize_modality(cfg.modality)
    if not cfg.clean and not (cfg.low and cfg.high):
        parser.error("give clean scans (--clean FILE ...) or paired folders (--low DIR --high DIR)")
    if cfg.gan_loss not in ("lsgan", "bce", "none"):
        parser.error("--gan-loss must be lsgan, bce or none")
    if cfg.downscale < 1 or (cfg.downscale != 1 and cfg.variant == "unet"):
        parser.error("--downscale takes 1 or more, and only for --variant dncnn or srdensenet (a U-Net already "
                     "works at coarser grids)")
    if not cfg.batch_norm and cfg.variant != "dncnn":
        parser.error("--no-batch-norm applies to --variant dncnn only (the U-Net keeps its BatchNorm; SRDenseNet has none)")
    if not cfg.batch_norm and cfg.bn_recalibration_each_epoch:
        parser.error("--bn-recalibration-each-epoch re-estimates BatchNorm statistics, which a --no-batch-norm DnCNN "
                     "does not have: drop one of the two")
    if cfg.pixel_loss not in ("l1", "mse"):
        parser.error(f"--pixel-loss must be l1 or mse, got {cfg.pixel_loss!r}")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        parser.error("--precision must be auto, bf16 or fp32")
    if cfg.bn_recalibration_batches < 0 or cfg.bn_recalibration_each_epoch < 0:
        parser.error("--bn-recalibration-batches and --bn-recalibration-each-epoch take 0 (off) or a number of batches")
    if not 0 <= cfg.ema_decay < 1:
        parser.error(f"--ema-decay takes 0 (off) or a decay in (0, 1), e.g. 0.999; got {cfg.ema_decay}")
    if cfg.select_on not in ("psnr", "ssim", "last"):
        parser.error(f"--select-on must be psnr, ssim or last, got {cfg.select_on!r}")
    for flag, parse, text, as_is in (("--zoom", parse_zoom, cfg.zoom, [1.0]), ("--gain-db", parse_gain_db, cfg.gain_db, [0.0])):
        try:
            copies = parse(text)
        except ValueError as error:
            parser.error(str(error))
        if copies != as_is and cfg.low:
            parser.error(f"{flag} applies to --clean scans with a simulated degradation, not to paired --low/--high folders")
    if cfg.display_db <= 0:
        parser.error(f"--display-db must be positive, got {cfg.display_db}")
    if cfg.init_from:
        try:
            initial_model_card(cfg.init_from, cfg)
        except ValueError as error:
            parser.error(str(error))
    return cfg


# ---------------------------------------------------------------- distributed helpers
def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group when run under torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def parameter_checksum(module: torch.nn.Module) -> float:
    """A fingerprint of the trainable parameters, to check that distributed replicas stayed
    identical (BatchNorm running statistics are rank 0's: DDP broadcasts them every step)."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(module.parameters())))


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


# ---------------------------------------------------------------- data
def default_val_degradation(spec: str) -> str:
    """A fixed, realistic validation level for the CT degradations (the real quarter-dose pair has
    about 27 HU of soft-tissue noise and a Hann-like texture); other kinds validate as they train."""
    if spec.startswith("ct_noise"):
        return "ct_noise:hu=25,kernel=hann,cutoff=1"
    if spec.startswith("ct_low_dose"):
        return "ct_low_dose:dose=0.25"
    return spec


def comma_separated_numbers(text: str) -> list[float]:
    """'1,0.5' -> [1.0, 0.5]; [] when a part is not a number or nothing is given."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        return []


def parse_zoom(text: str) -> list[float]:
    zooms = comma_separated_numbers(text)
    if not zooms or any(not 0 < z <= 2 for z in zooms):
        raise ValueError(f"--zoom takes comma-separated factors in (0, 2], e.g. 1,0.5 or 1,1.5; got {text!r}")
    return zooms


def parse_gain_db(text: str) -> list[float]:
    gains = comma_separated_numbers(text)
    if not gains or any(not -30 <= g <= 0 for g in gains):
        raise ValueError(f"--gain-db takes comma-separated gains in dB in [-30, 0], e.g. 0,-6,-12; got {text!r}")
    return gains


def zoomed_slice(image: np.ndarray, zoom: float) -> np.ndarray:
    """The slice resampled by `zoom`, as float32 (zoom 1: as is): below 1 with an anti-aliasing
    filter, above 1 by linear interpolation."""
    if zoom == 1:
        return image
    from skimage.transform import rescale

    return rescale(np.asarray(image, dtype=np.float32), zoom, order=1, anti_aliasing=zoom < 1,
                   preserve_range=True).astype(np.float32)


def build_training_data(cfg: TrainConfig) -> tuple[PatchDataset, list[ValidationSlice], dict[str, Any]]:
    """Training patches and whole validation slices (noisy, clean in original units) from
    paired folders or from clean scans plus the simulated degradation.

    The intensity normalisation of each scan is fitted on its degraded slices, never the clean
    ones: users have only the noisy image, and the engine fits on it (a clean-image fit shifted
    the MR/PET scale by -16 % / +9 %). Training slices use the fit on the degraded training slices,
    validation slices the fit on the degraded held-out slab."""
    normalizer = default_normalizer(cfg.modality)
    train_pairs: list[SlicePair] = []
    val_pairs: list[ValidationSlice] = []
    info: dict[str, Any] = {"axis": cfg.axis, "val_fraction": cfg.val_fraction, "scans": []}
    if cfg.low and cfg.high:
        for low_path, high_path in pair_folders(cfg.low, cfg.high):
            low, high = (np.moveaxis(load_volume(p)[0], cfg.axis, 0) for p in (low_path, high_path))
            if low.shape != high.shape:
                raise ValueError(f"{low_path.name}: low- and high-quality scans differ in shape ({low.shape} vs {high.shape})")
            params, threshold = normalizer.fit(low), foreground_threshold(high, cfg.modality)
            train_slices, val_slices = split_slabs(len(high), cfg.val_fraction, position=cfg.val_position)
            train_pairs += [SlicePair(low[i], high[i], params, threshold, scan=len(info["scans"])) for i in train_slices]
            val_pairs += [ValidationSlice(low[i], high[i], params) for i in val_slices]
            info["scans"].append({"low": str(low_path), "high": str(high_path), "train_slices": len(train_slices), "val_slices": len(val_slices)})
    else:
        degrade = make_degradation(cfg.degradation)
        val_spec = cfg.val_degradation or default_val_degradation(cfg.degradation)
        val_degrade = make_degradation(val_spec)
        info["val_degradation"] = val_spec
        scans = [(path, False) for path in cfg.clean] + [(path, True) for path in cfg.val_clean]
        zooms, gains = parse_zoom(cfg.zoom), parse_gain_db(cfg.gain_db)
        info["zoom"] = zooms
        if gains != [0.0]:
            info["gain_db"], info["display_db"] = gains, cfg.display_db
        for scan_index, (path, validation_only) in enumerate(scans):
            volume, spacing = load_volume(path)
            volume = np.moveaxis(volume, cfg.axis, 0)
            pixel_size = float(spacing[1] if cfg.axis == 2 else spacing[0])
            threshold = foreground_threshold(volume, cfg.modality)
            if validation_only:
                train_slices, val_slices = [], range(len(volume))
            else:
                train_slices, val_slices = split_slabs(len(volume), cfg.val_fraction, position=cfg.val_position)
            floor, top = float(volume.min()), float(volume.max())
            for zoom_index, zoom in enumerate(zooms if train_slices else []):
                zoomed = [zoomed_slice(volume[i], zoom) for i in train_slices]
                if min(zoomed[0].shape) < cfg.patch_size:
                    raise ValueError(f"{path}: at --zoom {zoom} its slices are {zoomed[0].shape}, smaller than the "
                                     f"{cfg.patch_size}-pixel patches: drop that factor or use a smaller --patch-size")
                for gain_index, gain in enumerate(gains):
                    # a display of display_db dB spanning the volume's range, lowered by the gain change and
                    # clipped at its floor; tissue stays tissue down to just above the floor
                    shift = (top - floor) * -gain / cfg.display_db
                    clean = [np.maximum(z - shift, floor) for z in zoomed]
                    copy_threshold = max(threshold - shift, floor + 1e-3 * (top - floor)) if shift else threshold
                    seed = cfg.seed + scan_index + 1000 * zoom_index + 100_000 * gain_index
                    noisy = simulate_pairs(clean, degrade, cfg.variants_per_slice, seed, pixel_size / zoom,
                                           workers=min(2, os.cpu_count() or 1), cache_dir=cfg.sim_cache or None)
                    params = normalizer.fit(np.stack(noisy[:: cfg.variants_per_slice]))  # one degraded copy of the slices
                    train_pairs += [SlicePair(n, clean[k // cfg.variants_per_slice], params, copy_threshold, scan=scan_index)
                                    for k, n in enumerate(noisy)]
            held_out = [val_degrade(volume[i], np.random.default_rng([cfg.seed, 10_000 + scan_index, i]), pixel_size_mm=pixel_size)
                        for i in val_slices]
            if held_out:
                val_params = normalizer.fit(np.stack(held_out))
                val_pairs += [ValidationSlice(n, volume[i], val_params) for n, i in zip(held_out, val_slices)]
            info["scans"].append({"clean": str(path), "train_slices": len(train_slices),
                                  "val_slices": f"{val_slices.start}-{val_slices.stop - 1}" if val_slices else "none",
                                  **({"validation_only": True} if validation_only else {})})
    if not val_pairs:
        raise ValueError("no validation slices: give a scan with more slices, a larger --val-fraction or --val-clean scans")
    if not train_pairs:
        raise ValueError("no training slices: give --clean scans with more slices or a smaller --val-fraction")
    val_pairs = [val_pairs[i] for i in evenly_spaced(range(len(val_pairs)), cfg.val_slices)]
    info["val_slices_used"] = len(val_pairs)
    dataset = PatchDataset(train_pairs, normalizer, cfg.patch_size, cfg.samples_per_epoch, seed=cfg.seed,
                           balance_scans=cfg.balance_scans)
    return dataset, val_pairs, info


def training_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bfloat16 autocast where the hardware runs it natively ("auto"), else None (float32).
    Only the predictors' convolutions run in bf16; losses, the fusion and sums with x are float32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


# ---------------------------------------------------------------- losses
def evaluation_window_units(modality: str) -> tuple[float, float, float]:
    """(low, high, zero) of the evaluation window in the network's normalised units, so that the SSIM
    loss sees what `slice_metrics` sees: CT's [-160, 240] HU window and HU zero through the fixed map;
    other modalities are scaled per image to about [0, 1], as their [0, 99.5th percentile] window."""
    normalizer = default_normalizer(modality)
    if normalizer.kind == "fixed":
        low, high = ((v - normalizer.offset) / normalizer.scale for v in CT_WINDOW)
        return low, high, -normalizer.offset / normalizer.scale
    return 0.0, 1.0, 0.0


def pixel_loss(cfg: TrainConfig, denoised: torch.Tensor, content: torch.Tensor, noise: torch.Tensor,
               clean: torch.Tensor, true_noise: torch.Tensor) -> torch.Tensor:
    """The weighted pixel terms of the generator loss: the denoised output and the content branch
    against the clean image, the noise branch against the true noise, in --pixel-loss's distance."""
    distance = F.mse_loss if cfg.pixel_loss == "mse" else F.l1_loss
    loss = cfg.l1_denoised * distance(denoised, clean) + cfg.l1_noise * distance(noise, true_noise)
    if cfg.l1_content:
        loss = loss + cfg.l1_content * distance(content, clean)
    return loss


def ssim_loss(denoised: torch.Tensor, clean: torch.Tensor, window: tuple[float, float, float]) -> torch.Tensor:
    """1 - SSIM of the batch, clipped to the evaluation window and measured from its zero as the metric is."""
    low, high, zero = window
    return 1 - differentiable_ssim(denoised.clamp(low, high) - zero, clean.clamp(low, high) - zero, high - low)


def adversarial_loss(scores: torch.Tensor, real: bool, kind: str) -> torch.Tensor:
    target = torch.ones_like(scores) if real else torch.zeros_like(scores)
    if kind == "lsgan":
        return F.mse_loss(scores, target)
    return F.binary_cross_entropy_with_logits(scores, target)


# ---------------------------------------------------------------- validation, pictures
def card_for(cfg: TrainConfig, model_id: str = "in-training") -> ModelCard:
    return ModelCard(
        id=model_id,
        modality=cfg.modality,
        variant=cfg.variant,
        architecture=cfg.architecture(),
        normalization=default_normalizer(cfg.modality).to_dict(),
        file="",
        sha256="",
    )


def validate(generator: torch.nn.Module, val_pairs: list[ValidationSlice], cfg: TrainConfig, device: torch.device):
    """Metrics of the generator on whole held-out slices, run through the inference engine in
    float32, plus each branch on its own (content c, and x - n) so the fusion's benefit shows."""
    model = LoadedModel(card=card_for(cfg), generator=generator)
    per_slice, outputs, branches = [], [], {"content": [], "x_minus_noise": []}
    for noisy, clean, params in val_pairs:
        window = window_for(cfg.modality, clean)
        result = denoise_volume(noisy, model, cfg.modality, device=str(device), precision="fp32", normalization=params)
        per_slice.append(slice_metrics(result.denoised, clean, window))
        outputs.append((result.denoised, result.noise))
        estimates = model_branches(model, noisy[None], str(device), normalization=params)
        branches["content"].append(slice_metrics(estimates["content branch c"][0], clean, window))
        branches["x_minus_noise"].append(slice_metrics(estimates["x - n branch"][0], clean, window))
    generator.train()
    metrics = summarize(per_slice)
    for name, values in branches.items():
        summary = summarize(values)
        metrics[f"{name}_psnr"], metrics[f"{name}_bias"] = summary["psnr"], summary["bias"]
    return metrics, outputs


def input_metrics(val_pairs, cfg: TrainConfig) -> dict[str, float]:
    return summarize([slice_metrics(v.noisy, v.clean, window_for(cfg.modality, v.clean)) for v in val_pairs])


def save_panel(path: Path, noisy: np.ndarray, denoised: np.ndarray, noise: np.ndarray, clean: np.ndarray, cfg: TrainConfig, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = window_for(cfg.modality, clean)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    noise_limit = 3 * float(np.std(noise)) or 1.0
    panels = [("noisy input", noisy, window.low, window.high), ("denoised", denoised, window.low, window.high),
              ("estimated noise", noise, -noise_limit, noise_limit), ("clean reference", clean, window.low, window.high)]
    for ax, (name, image, vmin, vmax) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_loss_curve(log_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss_g", "loss_l1", "loss_d"):
        ax1.plot(epochs, [float(r[key]) for r in rows], label=key)
    ax1.set_xlabel("epoch")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(epochs, [float(r["val_psnr"]) for r in rows], label="model")
    ax2.plot(epochs, [float(r["input_psnr"]) for r in rows], "--", label="noisy input")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation PSNR (dB)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------- checkpoints, export
def improves_on(metrics: dict[str, Any], best: dict[str, Any], metric: str = "psnr") -> bool:
    """Whether an epoch's validation `metrics` beat the best epoch so far on `metric` (--select-on;
    "last": every epoch replaces the one before)."""
    return not best or metric == "last" or metrics[metric] > best["validation"][metric]


def update_ema(average: torch.nn.Module, live: torch.nn.Module, decay: float) -> None:
    """One step of the weight average: average <- decay * average + (1 - decay) * live. Buffers
    (BatchNorm statistics) are copied from the live generator: averaging them would mix statistics
    of weights that no longer exist."""
    with torch.no_grad():
        torch._foreach_lerp_(list(average.parameters()), list(live.parameters()), 1 - decay)
        for kept, current in zip(average.buffers(), live.buffers()):
            kept.copy_(current)


def save_checkpoint(path: Path, epoch: int, generator, discriminator, opt_g, opt_d, cfg: TrainConfig, best: dict,
                    best_generator: dict | None, ema: torch.nn.Module | None = None) -> None:
    state = {
        "best_generator": best_generator,
        **({"ema_generator": ema.state_dict()} if ema is not None else {}),
        "epoch": epoch,
        "generator": unwrap(generator).state_dict(),
        "discriminator": unwrap(discriminator).state_dict(),
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict(),
        "config": json.dumps(dataclasses.asdict(cfg)),
        "metrics": json.dumps(best),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def initial_model_card(spec: str, cfg: TrainConfig) -> ModelCard:
    """The card of the model --init-from names (a registered id, an exported folder holding one model,
    or FOLDER:ID), checked against the run's modality and architecture without loading its weights."""
    folder, _, model_id = spec.rpartition(":")
    if folder and Path(folder).is_dir():
        card = ModelRegistry.from_folders([folder]).get(model_id)
    elif Path(spec).is_dir():
        cards = ModelRegistry.read_folder(spec)
        if len(cards) != 1:
            ids = ", ".join(c.id for c in cards) or "none"
            raise ValueError(f"--init-from {spec}: the folder holds {len(cards)} models ({ids}); give FOLDER:ID")
        card = cards[0]
    else:
        card = ModelRegistry.default().get(spec)
    if card.modality != cfg.modality:
        raise ValueError(f"--init-from {card.id}: a {card.modality} model, but --modality is {cfg.modality}")
    shapes = lambda arch: {k: tuple(v.shape) for k, v in build_generator(**arch).state_dict().items()}
    if shapes(starting_architecture(card, cfg)) != shapes(cfg.architecture()):
        raise ValueError(f"--init-from {card.id}: its architecture {card.architecture} differs from this run's "
                         f"{cfg.architecture()}; set --variant, --width, --depth, --downscale, --mode, --residual-content, "
                         "--refine and, for a BatchNorm-free DnCNN, --no-batch-norm to the model's (a DnCNN widens "
                         "with --no-batch-norm and a larger --width)")
    return card


def _batchnorm_free_dncnn_from_a_dncnn(card: ModelCard, cfg: TrainConfig) -> bool:
    return cfg.variant == "dncnn" and not cfg.batch_norm and card.architecture.get("variant") == "dncnn"


def folds_batchnorm(card: ModelCard, cfg: TrainConfig) -> bool:
    """Whether --init-from starts this run from a BatchNorm DnCNN whose statistics are to be folded."""
    return (_batchnorm_free_dncnn_from_a_dncnn(card, cfg)
            and card.architecture.get("predictor", {}).get("batch_norm", True))


def widens(card: ModelCard, cfg: TrainConfig) -> bool:
    """Whether --init-from starts this BatchNorm-free DnCNN run from a narrower DnCNN (widened first)."""
    return (_batchnorm_free_dncnn_from_a_dncnn(card, cfg)
            and card.architecture.get("predictor", {}).get("width", 64) < cfg.width)


def starting_architecture(card: ModelCard, cfg: TrainConfig) -> dict[str, Any]:
    """The architecture of the --init-from model as this run starts from it (BatchNorm folded away,
    widened to --width)."""
    predictor = dict(card.architecture.get("predictor", {}))
    if folds_batchnorm(card, cfg):
        predictor["batch_norm"] = False
    if widens(card, cfg):
        predictor["width"] = cfg.width
    return {**card.architecture, "predictor": predictor}


def starting_weights(card: ModelCard, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The --init-from model's weights, with its BatchNorm statistics folded into the convolutions
    when this run trains the same DnCNN without BatchNorm, and embedded in a wider DnCNN when --width
    is larger than the model's (the outputs stay the same either way)."""
    generator = load_model(card).generator.eval()
    if folds_batchnorm(card, cfg):
        generator = fold_batchnorm(generator)  # BatchNorm -> nn.Identity: the BatchNorm-free keys
    if widens(card, cfg):
        generator = widen_dncnn(generator, build_generator(**cfg.architecture()))
    return generator.state_dict()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def calibrate_fusion(generator: torch.nn.Module, train_set: PatchDataset, device: torch.device,
                     patches: int = 512) -> list[float]:
    """Refit the 1x1 fusion on training patches, with the predictors in eval mode as users run
    them, as the convex combination y = a c + (1 - a)(x - n), a in [0, 1] by least squares, no bias.

    During training the fusion follows batch-statistics outputs and, at the learning rate it needs
    to move at all, its bias jitters by several HU a step; in eval mode the branches shift with
    BatchNorm's running statistics. A closed-form fit on training data (never the validation slab)
    removes both. The weights are tied to sum to one because the two estimates are nearly equal:
    a free two-weight fit is ill-conditioned and would amplify their difference. The bias is fixed
    at zero: each branch is trained to be unbiased on its own, while a constant fitted on the
    training patches (drawn from the body) shifted the background of MR slices (+0.2 to +0.6 on a
    0-155 range, SSIM 0.913 -> 0.945 for the DnCNN without it). Returns [a, 1 - a, 0]."""
    generator.eval()
    numerator, denominator = 0.0, 0.0
    with torch.inference_mode():
        for index in range(min(patches, len(train_set))):
            noisy, clean = train_set[index]
            x = noisy[None].to(device).float()
            _, content, noise = generator(x)
            second = x - noise
            difference = (content - second).double()
            numerator += float((difference * (clean.to(device)[None].double() - second.double())).sum())
            denominator += float((difference**2).sum())
    a = numerator / denominator if denominator > 0 else 0.5
    a = min(max(a, 0.0), 1.0)
    with torch.no_grad():
        generator.fusion.weight.copy_(torch.tensor([a, 1.0 - a]).view_as(generator.fusion.weight))
        generator.fusion.bias.zero_()
    return [a, 1.0 - a, 0.0]


def recalibrate_batchnorm(generator: torch.nn.Module, train_set: PatchDataset, device: torch.device, batches: int,
                          batch_size: int) -> int:
    """Replace each BatchNorm's running mean and variance by their plain average over `batches`
    training batches (no weight changes; "precise BatchNorm"). The running averages kept during
    training weigh the last ten or so batches most, and with noise levels of 10-60 HU drawn per
    patch they moved the eval-mode DnCNN's validation by 2-3 dB from one epoch to the next.
    Returns the number of BatchNorm layers recalibrated."""
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not norms or batches <= 0:
        return 0
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    generator.train()
    with torch.no_grad():
        for b in range(batches):
            indices = [(b * batch_size + k) % len(train_set) for k in range(batch_size)]
            noisy = torch.stack([train_set[i][0] for i in indices]).to(device, memory_format=torch.channels_last)
            generator(noisy)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    generator.eval()
    return len(norms)


def round_to_storage_precision(generator: torch.nn.Module) -> torch.nn.Module:
    """Round the convolution weights to float16 (in place, kept as float32 tensors), as export
    stores them: half the file size. Small tensors, the fusion among them, keep float32: rounding
    its two weights would shift every output by up to 0.5 HU. The card's metrics are measured
    after this rounding, so they describe the shipped file."""
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, torch.nn.Conv2d) and module.weight.numel() > 64:
                module.weight.copy_(module.weight.half().float())
    return generator


def half_precision_state(generator: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with the rounded convolution weights stored as float16."""
    rounded = {id(m.weight) for m in generator.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 64}
    names = {name for name, p in generator.named_parameters() if id(p) in rounded}
    return {k: (v.half() if k in names else v) for k, v in generator.state_dict().items()}


def export_model(generator: torch.nn.Module, cfg: TrainConfig, metrics: dict[str, Any], data_info: dict[str, Any]) -> ModelCard:
    model_id = cfg.model_id or f"{cfg.modality.lower()}-{cfg.variant}-{cfg.mode}-w{cfg.width}"
    command = "medgan-train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return write_model(
        half_precision_state(unwrap(generator)),
        cfg.export,
        model_id=model_id,
        modality=cfg.modality,
        variant=cfg.variant,
        architecture=cfg.architecture(),
        normalization=default_normalizer(cfg.modality).to_dict(),
        description=cfg.description or f"{cfg.modality} {cfg.variant} content-noise generator",
        training={"data": data_info, "degradation": cfg.degradation, "command": command, "commit": git_commit(),
                  "config": dataclasses.asdict(cfg)},
        metrics=metrics,
    )


# ---------------------------------------------------------------- the loop
def train(cfg: TrainConfig) -> dict[str, Any]:
    rank, world, device = setup_distributed()
    is_main = rank == 0
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out = Path(cfg.out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)

    train_set, val_pairs, data_info = build_training_data(cfg)
    # one process too: its per-epoch shuffle makes a resumed run identical to an uninterrupted one
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, drop_last=True)

    # channels-last measured 2-8x faster for training convolutions on this CPU (and helps GPUs too)
    generator = build_generator(**cfg.architecture()).to(device, memory_format=torch.channels_last)
    discriminator = PatchDiscriminator(in_channels=3, width=cfg.disc_width).to(device, memory_format=torch.channels_last)
    init_weights(discriminator)
    fine_tuning = bool(cfg.init_from) and not (cfg.resume and (out / "checkpoint.pt").is_file())
    if fine_tuning:
        generator.load_state_dict(starting_weights(initial_model_card(cfg.init_from, cfg), cfg))
    autocast_dtype = training_autocast_dtype(cfg.precision, device)
    ssim_window = evaluation_window_units(cfg.modality)
    fusion = list(generator.fusion.parameters()) if generator.fusion is not None else []
    others = [p for p in generator.parameters() if all(p is not f for f in fusion)]
    groups = [{"params": others, "lr_scale": 1.0}] + ([{"params": fusion, "lr_scale": cfg.fusion_lr_scale}] if fusion else [])
    opt_g = torch.optim.Adam([{**g, "lr": cfg.lr * g["lr_scale"]} for g in groups], lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999))

    start_epoch, best, best_generator = 0, {}, None
    checkpoint_path = out / "checkpoint.pt"
    # the weight average that is validated and exported when --ema-decay is on (the live weights otherwise)
    ema = copy.deepcopy(generator) if cfg.ema_decay else None
    if cfg.resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        generator.load_state_dict(state["generator"])
        if ema is not None:
            ema.load_state_dict(state.get("ema_generator", state["generator"]))
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        start_epoch, best = state["epoch"] + 1, json.loads(state["metrics"])
        best_generator = state.get("best_generator")
        if is_main:
            print(f"resumed from {checkpoint_path} after epoch {state['epoch']}")
    if world > 1:
        generator = DistributedDataParallel(generator)
        discriminator = DistributedDataParallel(discriminator)

    baseline = input_metrics(val_pairs, cfg)
    window = window_for(cfg.modality, val_pairs[0][1])
    unit = "HU" if cfg.modality == "CT" else ""
    if is_main:
        print(f"noisy input: {format_summary(baseline, window, unit)}")
    log_path = out / "log.csv"
    fields = ["epoch", "seconds", "loss_g", "loss_l1", "loss_adv", "loss_d", "val_psnr", "val_psnr_std", "val_ssim",
              "val_ssim_std", "val_rmse", "val_bias", "content_psnr", "content_bias", "x_minus_noise_psnr",
              "x_minus_noise_bias", "input_psnr", "input_ssim", "window"]
    if is_main and not (cfg.resume and log_path.is_file()):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)

    def evaluated() -> torch.nn.Module:
        """The generator that is validated and exported: the weight average, or the live weights."""
        return ema if ema is not None else unwrap(generator)

    def record_best(metrics: dict[str, Any], epoch: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The best-epoch record and a copy of the evaluated generator's weights now."""
        record = {"validation": metrics, "noisy_input": baseline, "window": window.label(unit), "epoch": epoch,
                  "val_slices": len(val_pairs), "val_degradation": data_info.get("val_degradation", "paired data"),
                  **({"ema_decay": cfg.ema_decay} if ema is not None else {})}
        return record, {k: v.detach().clone() for k, v in evaluated().state_dict().items()}

    if is_main and fine_tuning:  # the starting model competes for "best": fine-tuning never exports a worse one
        metrics, _ = validate(evaluated(), val_pairs, cfg, device)
        best, best_generator = record_best(metrics, 0)
        print(f"epoch 0 (--init-from {cfg.init_from}): {format_summary(metrics, window, unit)}", flush=True)
    if is_main and cfg.resume and cfg.select_on == "last" and start_epoch >= cfg.epochs:
        # a finished run exported again with --select-on last: its final weights, whichever epoch it selected before
        metrics, _ = validate(evaluated(), val_pairs, cfg, device)
        best, best_generator = record_best(metrics, start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        if cfg.cosine_lr:  # closed form, so a resumed run needs no scheduler state
            factor = 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
            for optimizer, base in ((opt_g, cfg.lr), (opt_d, cfg.lr_d)):
                for group in optimizer.param_groups:
                    group["lr"] = base * group.get("lr_scale", 1.0) * factor
        adversarial = cfg.gan_loss != "none" and epoch >= cfg.warmup_epochs
        totals = {"loss_g": 0.0, "loss_l1": 0.0, "loss_adv": 0.0, "loss_d": 0.0}
        steps = 0
        for noisy, clean in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not is_main, leave=False):
            noisy = noisy.to(device, memory_format=torch.channels_last)
            clean = clean.to(device, memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                denoised, content, noise = generator(noisy)  # float32 out: the fusion runs outside autocast
            true_noise = noisy - clean
            loss_l1 = pixel_loss(cfg, denoised, content, noise, clean, true_noise)
            if cfg.ssim_weight:
                loss_l1 = loss_l1 + cfg.ssim_weight * ssim_loss(denoised, clean, ssim_window)
            loss_adv = torch.zeros((), device=device)
            if adversarial:
                fake = torch.cat([denoised, noise, noisy], dim=1)
                real = torch.cat([clean, true_noise, noisy], dim=1)
                with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                    opt_d.zero_grad(set_to_none=True)
                    loss_d = 0.5 * (adversarial_loss(discriminator(real).float(), True, cfg.gan_loss)
                                    + adversarial_loss(discriminator(fake.detach()).float(), False, cfg.gan_loss))
                    loss_d.backward()
                    opt_d.step()
                    totals["loss_d"] += loss_d.item()
                    loss_adv = adversarial_loss(discriminator(fake).float(), True, cfg.gan_loss)
            loss_g = cfg.adv_weight * loss_adv + loss_l1
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if ema is not None:
                update_ema(ema, unwrap(generator), cfg.ema_decay)
            totals["loss_g"] += loss_g.item()
            totals["loss_l1"] += loss_l1.item()
            totals["loss_adv"] += loss_adv.item()
            steps += 1

        if is_main:
            if cfg.bn_recalibration_each_epoch:  # other ranks receive these buffers with DDP's next broadcast
                recalibrate_batchnorm(evaluated(), train_set, device, cfg.bn_recalibration_each_epoch, cfg.batch_size)
            metrics, outputs = validate(evaluated(), val_pairs, cfg, device)
            row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 1),
                   **{k: v / max(steps, 1) for k, v in totals.items()},
                   "val_psnr": metrics["psnr"], "val_psnr_std": metrics["psnr_std"], "val_ssim": metrics["ssim"],
                   "val_ssim_std": metrics["ssim_std"], "val_rmse": metrics["rmse"], "val_bias": metrics["bias"],
                   "content_psnr": metrics["content_psnr"], "content_bias": metrics["content_bias"],
                   "x_minus_noise_psnr": metrics["x_minus_noise_psnr"], "x_minus_noise_bias": metrics["x_minus_noise_bias"],
                   "input_psnr": baseline["psnr"], "input_ssim": baseline["ssim"], "window": window.label(unit)}
            with open(log_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields).writerow(row)
            save_loss_curve(log_path, out / "loss_curve.png")
            shown = len(val_pairs) // 2
            save_panel(out / f"panel_epoch{epoch + 1:03d}.png", val_pairs[shown][0], outputs[shown][0], outputs[shown][1],
                       val_pairs[shown][1], cfg, f"epoch {epoch + 1}: {format_summary(metrics, window, unit)}")
            if improves_on(metrics, best, cfg.select_on):
                best, best_generator = record_best(metrics, epoch + 1)
            save_checkpoint(checkpoint_path, epoch, generator, discriminator, opt_g, opt_d, cfg, best, best_generator, ema)
            print(f"epoch {epoch + 1}: {format_summary(metrics, window, unit)} | content {metrics['content_psnr']:.2f} dB "
                  f"(bias {metrics['content_bias']:+.1f}), x - n {metrics['x_minus_noise_psnr']:.2f} dB | input PSNR "
                  f"{baseline['psnr']:.2f} | {row['seconds']} s", flush=True)
        if world > 1:
            dist.barrier()

    result: dict[str, Any] = {"metrics": best, "checksum": parameter_checksum(unwrap(generator))}
    if world > 1:
        print(f"rank {rank}: generator parameter checksum {result['checksum']:.12e}", flush=True)
    if is_main and cfg.export:
        final = evaluated()
        if best_generator is not None:  # export the epoch with the best validation PSNR (or SSIM), or the last
            final.load_state_dict(best_generator)
        round_to_storage_precision(final)
        if cfg.bn_recalibration_batches and any(isinstance(m, torch.nn.BatchNorm2d) for m in final.modules()):
            before, _ = validate(final, val_pairs, cfg, device)
            train_set.set_epoch(cfg.epochs)  # patches of an epoch no step trained on (the fusion fit below uses them too)
            recalibrate_batchnorm(final, train_set, device, cfg.bn_recalibration_batches, cfg.batch_size)
            best["batchnorm_recalibration"] = {"batches": cfg.bn_recalibration_batches, "batch_size": cfg.batch_size,
                                               "validation_psnr_before": before["psnr"], "validation_bias_before": before["bias"]}
            print(f"BatchNorm statistics re-estimated over {cfg.bn_recalibration_batches} training batches; validation "
                  f"before: PSNR {before['psnr']:.2f}, bias {before['bias']:+.2f}", flush=True)
        if cfg.calibrate_fusion and final.fusion is not None:
            before, _ = validate(final, val_pairs, cfg, device)
            weights = calibrate_fusion(final, train_set, device)
            best["fusion_calibration"] = {"weights": weights, "validation_psnr_before": before["psnr"],
                                          "validation_bias_before": before["bias"]}
            print(f"fusion refitted on training patches: c x {weights[0]:.4f} + (x - n) x {weights[1]:.4f} "
                  f"{weights[2]:+.5f} (normalised units); validation before: PSNR {before['psnr']:.2f}, "
                  f"bias {before['bias']:+.2f}", flush=True)
        best["validation"], _ = validate(final, val_pairs, cfg, device)
        card = export_model(final, cfg, best, data_info)
        result["model"] = card.id
        print(f"exported model {card.id} to {Path(cfg.export) / card.file}")
    if world > 1:
        dist.destroy_process_group()
    return result


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
