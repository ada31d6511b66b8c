"""Speed and peak memory of the denoising engine on a large volume (a measurement, not a test).

    python benchmarks/benchmark_engine.py [--slices 200 --size 512 --model ct-unet-w16 | --width 16] [--device cpu]

Builds a 200 x 512 x 512 int16 volume (a noisy body-like disc), denoises it with a shipped model
(or an untrained generator of the given width: speed and memory do not depend on the weights),
and prints a JSON line: seconds per slice, total seconds, and the peak resident memory above the
baseline, sampled from /proc every 20 ms, next to the size of the input and of the two outputs.
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time

import numpy as np
import torch

from MedGANDenoiseLib.engine import denoise_volume
from MedGANDenoiseLib.networks import build_generator
from MedGANDenoiseLib.registry import LoadedModel, ModelCard, ModelRegistry, load_model

MIB = 2**20


def resident_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler(threading.Thread):
    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.peak, self.running = interval, resident_bytes(), True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(self.interval)

    def stop(self) -> int:
        self.running = False
        self.join()
        return max(self.peak, resident_bytes())


def body_volume(slices: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - size / 2
    body = np.where(np.hypot(yy, xx) < size * 0.4, 40, -1000).astype(np.int16)
    volume = np.empty((slices, size, size), dtype=np.int16)
    rng = np.random.default_rng(0)
    for k in range(slices):
        volume[k] = body + rng.normal(0, 25, (size, size)).astype(np.int16)
    return volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--model", help="a registered model id (default: an untrained U-Net of --width)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the engine's choice (1 on the CPU)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if args.model:
        model = load_model(ModelRegistry.default().get(args.model))
    else:
        architecture = {"variant": "unet", "predictor": {"base_width": args.width}}
        card = ModelCard(id=f"untrained-unet-w{args.width}", modality="CT", variant="unet", architecture=architecture,
                         normalization={"kind": "fixed", "offset": -1024.0, "scale": 4096.0}, file="", sha256="")
        model = LoadedModel(card, build_generator(**architecture).eval())
    volume = body_volume(args.slices, args.size)
    denoise_volume(volume[:2], model, "CT", device=args.device)  # warm-up: allocator and kernels
    baseline = resident_bytes()
    sampler = PeakSampler()
    sampler.start()
    result = denoise_volume(volume, model, "CT", batch_size=args.batch_size, device=args.device)
    peak = sampler.stop()
    print(json.dumps({
        "model": model.card.id, "volume": list(volume.shape), "dtype": str(volume.dtype), "device": result.device,
        "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "seconds_total": round(result.seconds, 2), "seconds_per_slice": round(result.seconds / args.slices, 4),
        "input_mib": round(volume.nbytes / MIB, 1), "outputs_mib": round(2 * result.denoised.nbytes / MIB, 1),
        "peak_rss_above_baseline_mib": round((peak - baseline) / MIB, 1),
        "peak_beyond_outputs_mib": round((peak - baseline - 2 * result.denoised.nbytes) / MIB, 1),
    }))


if __name__ == "__main__":
    main()
