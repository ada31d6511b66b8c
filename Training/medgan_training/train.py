"""Train a content-noise complementary GAN denoiser.

One readable loop; all settings in TrainConfig. Runs on one process as it is, and under
`torchrun --nproc_per_node=N` with DistributedDataParallel (NCCL on GPUs, gloo on CPU):

    medgan-train --clean data/ct_head_cranium.nii.gz --modality CT \
        --degradation "ct_low_dose:dose=0.1-0.5" --out runs/ct_unet --epochs 20
    torchrun --nproc_per_node=2 -m medgan_training.train ...same arguments...

Every epoch: validation on held-out whole slices through the inference engine (eval mode,
exactly as users run it), a CSV log, a loss-curve PNG, a picture panel and a checkpoint
(`--resume` continues from it). `--export DIR` writes the weights and their model card.
"""

from __future__ import annotations

import argparse
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

from MedGANDenoiseLib.engine import denoise_volume
from MedGANDenoiseLib.networks import PatchDiscriminator, build_generator, init_weights
from MedGANDenoiseLib.normalization import default_normalizer
from MedGANDenoiseLib.registry import LoadedModel, ModelCard, normalize_modality, write_model

from .datasets import PatchDataset, SlicePair, evenly_spaced, foreground_threshold, load_volume, pair_folders, simulate_pairs, split_slabs
from .degradations import make_degradation
from .metrics import format_summary, slice_metrics, summarize, window_for


@dataclass
class TrainConfig:
    # data: clean scans + a simulated degradation, or paired low/high folders
    clean: list[str] = field(default_factory=list)
    low: str = ""
    high: str = ""
    modality: str = "CT"
    degradation: str = "ct_low_dose:dose=0.1-0.5"
    val_degradation: str = ""  # default: the training degradation (CT: dose 0.25)
    axis: int = 0
    patch_size: int = 96
    samples_per_epoch: int = 1600
    variants_per_slice: int = 4  # degraded versions precomputed per training slice
    val_fraction: float = 0.15
    val_position: float = 1.0  # where the held-out slab lies: 0 = first slices, 1 = last
    val_slices: int = 8
    # model
    variant: str = "unet"
    width: int = 16  # U-Net base width / DnCNN width / SRDenseNet growth rate
    depth: int = 0  # U-Net pooling levels / DnCNN layers / SRDenseNet blocks; 0 = the variant's default
    mode: str = "both"  # both | content | noise (ablations)
    refine: bool = False
    disc_width: int = 64  # PatchGAN width (32 halves the discriminator's cost on a CPU)
    # losses: adversarial + l1_denoised * L1(y, clean) + l1_noise * L1(n, x - clean) [+ l1_content * L1(c, clean)]
    gan_loss: str = "lsgan"  # lsgan | bce | none
    adv_weight: float = 1.0
    l1_denoised: float = 100.0
    l1_noise: float = 100.0
    l1_content: float = 0.0  # optional direct L1(c, clean) on the content predictor
    warmup_epochs: int = 0  # L1 only before the adversarial term is switched on
    # optimisation
    lr: float = 2e-4
    lr_d: float = 2e-4
    fusion_lr_scale: float = 10.0  # Adam moves each weight by about lr a step: the 2-weight fusion needs more
    cosine_lr: bool = False  # anneal both learning rates to zero over the epochs
    batch_size: int = 16
    epochs: int = 20
    seed: int = 0
    num_workers: int = 0
    # output
    out: str = "runs/train"
    resume: bool = False
    export: str = ""
    model_id: str = ""
    description: str = ""

    def predictor_kwargs(self) -> dict[str, Any]:
        if self.variant == "unet":
            return {"base_width": self.width, **({"depth": self.depth} if self.depth else {})}
        if self.variant == "dncnn":
            return {"width": self.width, **({"num_layers": self.depth} if self.depth else {})}
        return {"growth_rate": self.width, **({"num_blocks": self.depth} if self.depth else {})}

    def architecture(self) -> dict[str, Any]:
        return {"variant": self.variant, "predictor": self.predictor_kwargs(), "mode": self.mode, "refine": self.refine}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="medgan-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, list):
            parser.add_argument(flag, nargs="+", default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    cfg.modality = normalize_modality(cfg.modality)
    if not cfg.clean and not (cfg.low and cfg.high):
        parser.error("give clean scans (--clean FILE ...) or paired folders (--low DIR --high DIR)")
    if cfg.gan_loss not in ("lsgan", "bce", "none"):
        parser.error("--gan-loss must be lsgan, bce or none")
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
def build_training_data(cfg: TrainConfig) -> tuple[PatchDataset, list[tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Training patches and whole validation slices (noisy, clean in original units) from
    paired folders or from clean scans plus the simulated degradation."""
    normalizer = default_normalizer(cfg.modality)
    train_pairs: list[SlicePair] = []
    val_pairs: list[tuple[np.ndarray, np.ndarray]] = []
    info: dict[str, Any] = {"axis": cfg.axis, "val_fraction": cfg.val_fraction, "scans": []}
    if cfg.low and cfg.high:
        for low_path, high_path in pair_folders(cfg.low, cfg.high):
            low, high = (np.moveaxis(load_volume(p)[0], cfg.axis, 0) for p in (low_path, high_path))
            if low.shape != high.shape:
                raise ValueError(f"{low_path.name}: low- and high-quality scans differ in shape ({low.shape} vs {high.shape})")
            params, threshold = normalizer.fit(low), foreground_threshold(high, cfg.modality)
            train_slices, val_slices = split_slabs(len(high), cfg.val_fraction, position=cfg.val_position)
            train_pairs += [SlicePair(low[i], high[i], params, threshold) for i in train_slices]
            val_pairs += [(low[i], high[i]) for i in val_slices]
            info["scans"].append({"low": str(low_path), "high": str(high_path), "train_slices": len(train_slices), "val_slices": len(val_slices)})
    else:
        degrade = make_degradation(cfg.degradation)
        val_spec = cfg.val_degradation or ("ct_low_dose:dose=0.25" if cfg.degradation.startswith("ct_low_dose") else cfg.degradation)
        val_degrade = make_degradation(val_spec)
        info["val_degradation"] = val_spec
        for scan_index, path in enumerate(cfg.clean):
            volume, spacing = load_volume(path)
            volume = np.moveaxis(volume, cfg.axis, 0)
            pixel_size = float(spacing[1] if cfg.axis == 2 else spacing[0])
            params, threshold = normalizer.fit(volume), foreground_threshold(volume, cfg.modality)
            train_slices, val_slices = split_slabs(len(volume), cfg.val_fraction, position=cfg.val_position)
            clean = [volume[i] for i in train_slices]
            noisy = simulate_pairs(clean, degrade, cfg.variants_per_slice, cfg.seed + scan_index, pixel_size,
                                   workers=min(2, os.cpu_count() or 1))
            train_pairs += [SlicePair(n, clean[k // cfg.variants_per_slice], params, threshold) for k, n in enumerate(noisy)]
            for i in val_slices:
                rng = np.random.default_rng([cfg.seed, 10_000 + scan_index, i])
                val_pairs.append((val_degrade(volume[i], rng, pixel_size_mm=pixel_size), volume[i]))
            info["scans"].append({"clean": str(path), "train_slices": len(train_slices),
                                  "val_slices": f"{val_slices.start}-{val_slices.stop - 1}" if val_slices else "none"})
    if not val_pairs:
        raise ValueError("no validation slices: give a scan with more slices or a larger --val-fraction")
    val_pairs = [val_pairs[i] for i in evenly_spaced(range(len(val_pairs)), cfg.val_slices)]
    info["val_slices_used"] = len(val_pairs)
    dataset = PatchDataset(train_pairs, normalizer, cfg.patch_size, cfg.samples_per_epoch, seed=cfg.seed)
    return dataset, val_pairs, info


# ---------------------------------------------------------------- losses
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


def validate(generator: torch.nn.Module, val_pairs: list[tuple[np.ndarray, np.ndarray]], cfg: TrainConfig, device: torch.device):
    """Metrics of the generator on whole held-out slices, run through the inference engine."""
    model = LoadedModel(card=card_for(cfg), generator=generator)
    per_slice, outputs = [], []
    for noisy, clean in val_pairs:
        result = denoise_volume(noisy, model, cfg.modality, device=str(device))
        per_slice.append(slice_metrics(result.denoised, clean, window_for(cfg.modality, clean)))
        outputs.append((result.denoised, result.noise))
    generator.train()
    return summarize(per_slice), outputs


def input_metrics(val_pairs, cfg: TrainConfig) -> dict[str, float]:
    return summarize([slice_metrics(noisy, clean, window_for(cfg.modality, clean)) for noisy, clean in val_pairs])


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
def save_checkpoint(path: Path, epoch: int, generator, discriminator, opt_g, opt_d, cfg: TrainConfig, best: dict,
                    best_generator: dict | None) -> None:
    state = {
        "best_generator": best_generator,
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


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def export_model(generator: torch.nn.Module, cfg: TrainConfig, metrics: dict[str, Any], data_info: dict[str, Any]) -> ModelCard:
    model_id = cfg.model_id or f"{cfg.modality.lower()}-{cfg.variant}-{cfg.mode}-w{cfg.width}"
    command = "medgan-train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return write_model(
        unwrap(generator),
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

    generator = build_generator(**cfg.architecture()).to(device)
    discriminator = PatchDiscriminator(in_channels=3, width=cfg.disc_width).to(device)
    init_weights(discriminator)
    fusion = list(generator.fusion.parameters()) if generator.fusion is not None else []
    others = [p for p in generator.parameters() if all(p is not f for f in fusion)]
    groups = [{"params": others, "lr_scale": 1.0}] + ([{"params": fusion, "lr_scale": cfg.fusion_lr_scale}] if fusion else [])
    opt_g = torch.optim.Adam([{**g, "lr": cfg.lr * g["lr_scale"]} for g in groups], lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999))

    start_epoch, best, best_generator = 0, {}, None
    checkpoint_path = out / "checkpoint.pt"
    if cfg.resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        generator.load_state_dict(state["generator"])
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
              "val_ssim_std", "val_rmse", "val_bias", "input_psnr", "input_ssim", "window"]
    if is_main and not (cfg.resume and log_path.is_file()):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)

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
            noisy, clean = noisy.to(device), clean.to(device)
            denoised, content, noise = generator(noisy)
            true_noise = noisy - clean
            loss_l1 = cfg.l1_denoised * F.l1_loss(denoised, clean) + cfg.l1_noise * F.l1_loss(noise, true_noise)
            if cfg.l1_content:
                loss_l1 = loss_l1 + cfg.l1_content * F.l1_loss(content, clean)
            loss_adv = torch.zeros((), device=device)
            if adversarial:
                fake = torch.cat([denoised, noise, noisy], dim=1)
                real = torch.cat([clean, true_noise, noisy], dim=1)
                opt_d.zero_grad(set_to_none=True)
                loss_d = 0.5 * (adversarial_loss(discriminator(real), True, cfg.gan_loss)
                                + adversarial_loss(discriminator(fake.detach()), False, cfg.gan_loss))
                loss_d.backward()
                opt_d.step()
                totals["loss_d"] += loss_d.item()
                loss_adv = adversarial_loss(discriminator(fake), True, cfg.gan_loss)
            loss_g = cfg.adv_weight * loss_adv + loss_l1
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            totals["loss_g"] += loss_g.item()
            totals["loss_l1"] += loss_l1.item()
            totals["loss_adv"] += loss_adv.item()
            steps += 1

        if is_main:
            metrics, outputs = validate(unwrap(generator), val_pairs, cfg, device)
            row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 1),
                   **{k: v / max(steps, 1) for k, v in totals.items()},
                   "val_psnr": metrics["psnr"], "val_psnr_std": metrics["psnr_std"], "val_ssim": metrics["ssim"],
                   "val_ssim_std": metrics["ssim_std"], "val_rmse": metrics["rmse"], "val_bias": metrics["bias"],
                   "input_psnr": baseline["psnr"], "input_ssim": baseline["ssim"], "window": window.label(unit)}
            with open(log_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields).writerow(row)
            save_loss_curve(log_path, out / "loss_curve.png")
            shown = len(val_pairs) // 2
            save_panel(out / f"panel_epoch{epoch + 1:03d}.png", val_pairs[shown][0], outputs[shown][0], outputs[shown][1],
                       val_pairs[shown][1], cfg, f"epoch {epoch + 1}: {format_summary(metrics, window, unit)}")
            if not best or metrics["psnr"] > best["validation"]["psnr"]:
                best = {"validation": metrics, "noisy_input": baseline, "window": window.label(unit), "epoch": epoch + 1,
                        "val_slices": len(val_pairs), "val_degradation": data_info.get("val_degradation", "paired data")}
                best_generator = {k: v.detach().clone() for k, v in unwrap(generator).state_dict().items()}
            save_checkpoint(checkpoint_path, epoch, generator, discriminator, opt_g, opt_d, cfg, best, best_generator)
            print(f"epoch {epoch + 1}: {format_summary(metrics, window, unit)} | input PSNR {baseline['psnr']:.2f} "
                  f"| {row['seconds']} s", flush=True)
        if world > 1:
            dist.barrier()

    result: dict[str, Any] = {"metrics": best, "checksum": parameter_checksum(unwrap(generator))}
    if world > 1:
        print(f"rank {rank}: generator parameter checksum {result['checksum']:.12e}", flush=True)
    if is_main and cfg.export:
        final = unwrap(generator)
        if best_generator is not None:  # export the epoch with the best validation PSNR
            final.load_state_dict(best_generator)
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
