"""Speed and memory of the denoising engine beside the classical filters (a measurement, not a test).

    python benchmarks/benchmark_engine.py [--models ID ...] [--slices 6] [--volume-slices 200] [--write-cards]

For each model (default: every shipped model), on the same 512 x 512 slices of a noisy body-like
phantom and in the same run:
- seconds per slice on the CPU with the engine's default precision ("auto") and in float32, and
  the largest difference between the two in the model's units (HU for CT);
- scikit-image non-local means (fast mode) and BM3D on the same slices, and the ratios;
- peak resident memory above the baseline while denoising a --volume-slices x 512 x 512 int16
  volume with the default model (sampled from /proc every 20 ms), beside the two outputs' size;
- on a CUDA GPU, when present: slices per second, peak GPU memory and the batch size, per model.
Prints one JSON line per measurement and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time

import numpy as np
import torch

from MedGANDenoiseLib.engine import ENSEMBLE_SIZES, denoise_volume, estimate_noise_sigma
from MedGANDenoiseLib.registry import ModelRegistry, load_model

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


def body_volume(slices: int, size: int, seed: int = 0) -> np.ndarray:
    """int16 HU slices: an elliptical soft-tissue body with fat, a bony ring, in air, plus 25 HU noise."""
    yy, xx = (np.mgrid[:size, :size] - size / 2) / size
    body = np.full((size, size), -1000, dtype=np.int16)
    body[(xx / 0.45) ** 2 + (yy / 0.33) ** 2 < 1] = -90
    body[(xx / 0.41) ** 2 + (yy / 0.29) ** 2 < 1] = 40
    body[np.abs(np.hypot(xx, yy + 0.15) - 0.05) < 0.012] = 700
    rng = np.random.default_rng(seed)
    return np.stack([body + rng.normal(0, 25, (size, size)).astype(np.int16) for _ in range(slices)])


def per_slice_seconds(function, slices: np.ndarray) -> float:
    function(slices[0])  # warm-up
    started = time.perf_counter()
    for s in slices:
        function(s)
    return (time.perf_counter() - started) / len(slices)


def classical_filters(slices: np.ndarray) -> dict[str, float]:
    """Seconds per slice of NLM (fast mode) and BM3D with estimated sigma, as users would run them."""
    import bm3d
    from skimage.restoration import denoise_nl_means

    scale = 400.0  # both work on a window-sized range, like the evaluation
    def nlm(s):
        x = s.astype(np.float32) / scale
        sigma = estimate_noise_sigma(x)
        return denoise_nl_means(x, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)

    def bm3d_filter(s):
        x = s.astype(np.float32) / scale
        return bm3d.bm3d(x, sigma_psd=estimate_noise_sigma(x))

    return {"nlm_fast": per_slice_seconds(nlm, slices), "bm3d": per_slice_seconds(bm3d_filter, slices[:2])}


def cpu_model_timing(model, slices: np.ndarray, ensemble: int = 1) -> dict[str, float | str]:
    """Seconds per slice when the slices are denoised as one volume, as users run the engine (the
    inference copy of the generator is made once per call), in the default precision and fp32, and
    with the self-ensemble of `ensemble` passes (default precision) when it is above 1."""
    modality = model.card.modality
    denoise_volume(slices[:1], model, modality, device="cpu")  # warm-up
    a = denoise_volume(slices, model, modality, device="cpu")
    b = denoise_volume(slices, model, modality, device="cpu", precision="fp32")
    timing = {"auto_precision": a.precision, "seconds_per_slice": a.seconds / len(slices),
              "seconds_per_slice_fp32": b.seconds / len(slices),
              "max_abs_difference_auto_vs_fp32": float(np.abs(a.denoised - b.denoised).max())}
    if ensemble > 1:
        timing[f"seconds_per_slice_ensemble_{ensemble}"] = denoise_volume(slices, model, modality, device="cpu",
                                                                          ensemble=ensemble).seconds / len(slices)
    return timing


def volume_memory(model, slices: int, size: int) -> dict[str, float]:
    volume = body_volume(slices, size, seed=1)
    denoise_volume(volume[:2], model, model.card.modality, device="cpu")
    baseline = resident_bytes()
    sampler = PeakSampler()
    sampler.start()
    result = denoise_volume(volume, model, model.card.modality, device="cpu")
    peak = sampler.stop()
    outputs = 2 * result.denoised.nbytes
    return {"volume": f"{slices} x {size} x {size} int16", "seconds_total": round(result.seconds, 1),
            "outputs_mib": round(outputs / MIB, 1), "peak_rss_above_baseline_mib": round((peak - baseline) / MIB, 1),
            "peak_beyond_outputs_mib": round((peak - baseline - outputs) / MIB, 1)}


def gpu_timing(model, size: int, batch_size: int) -> dict[str, float]:
    volume = body_volume(max(4 * batch_size, 64), size, seed=2)
    denoise_volume(volume[:batch_size], model, model.card.modality, device="cuda", batch_size=batch_size)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    result = denoise_volume(volume, model, model.card.modality, device="cuda", batch_size=batch_size)
    torch.cuda.synchronize()
    return {"gpu": torch.cuda.get_device_name(), "batch_size": batch_size, "precision": result.precision,
            "slices_per_second": len(volume) / result.seconds,
            "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / MIB}


def write_speed_to_cards(rows: list[dict], classical: dict[str, float], args) -> None:
    """metrics.speed of each timed model in the shipped registry.json (weights untouched)."""
    import sys

    from MedGANDenoiseLib.registry import REGISTRY_FILE, SHIPPED_MODELS_DIR

    path = SHIPPED_MODELS_DIR / REGISTRY_FILE
    content = json.loads(path.read_text())
    timed = {r["model"]: r for r in rows}
    for entry in content["models"]:
        if entry["id"] in timed:
            entry.pop("speed", None)  # older cards kept it beside the metrics, where the registry does not read it
            entry.setdefault("metrics", {})["speed"] = {
                f"cpu_seconds_per_slice_{args.size}": round(timed[entry["id"]]["seconds_per_slice"], 3),
                "cpu_precision": timed[entry["id"]]["auto_precision"],
                f"cpu_seconds_per_slice_{args.size}_fp32": round(timed[entry["id"]]["seconds_per_slice_fp32"], 3),
                "note": f"{args.slices} slices of {args.size} x {args.size} denoised as one volume, in the CPU default "
                        + ("precision (bf16: U-Net coarse levels in bfloat16, the three finest in float32) and in float32"
                           if timed[entry["id"]]["auto_precision"] == "bf16" else "precision (float32 for this model) and again in float32"),
                "nlm_fast_seconds_per_slice": round(classical["nlm_fast"], 3),
                "bm3d_seconds_per_slice": round(classical["bm3d"], 2),
                "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
                "command": "python " + " ".join(sys.argv),
            }
    path.write_text(json.dumps(content, indent=2) + "\n")
    print(f"wrote the speed of {len(timed)} model(s) into {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="registered model ids (default: every shipped model)")
    parser.add_argument("--slices", type=int, default=6, help="512 x 512 slices timed per method")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--volume-slices", type=int, default=200, help="slices of the memory test volume (0: skip)")
    parser.add_argument("--gpu-batch-sizes", type=int, nargs="*", default=[8, 32, 64])
    parser.add_argument("--ensemble", type=int, default=1, choices=ENSEMBLE_SIZES,
                        help="also time each model with this self-ensemble (passes per slice), in the default precision")
    parser.add_argument("--write-cards", action="store_true",
                        help="store each timed shipped model's CPU seconds per slice in its card (metrics.speed)")
    args = parser.parse_args()

    registry = ModelRegistry.default()
    ids = args.models or [card.id for card in registry.models()]
    slices = body_volume(args.slices, args.size)
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                      "torch": torch.__version__}))
    classical = classical_filters(slices)
    print(json.dumps({"classical_seconds_per_slice": classical}))
    rows = []
    for model_id in ids:
        model = load_model(registry.get(model_id))
        timing = cpu_model_timing(model, slices, args.ensemble)
        timing |= {"model": model_id, "nlm_ratio": timing["seconds_per_slice"] / classical["nlm_fast"],
                   "bm3d_speedup": classical["bm3d"] / timing["seconds_per_slice"]}
        print(json.dumps(timing))
        rows.append(timing)
    if args.write_cards:
        write_speed_to_cards(rows, classical, args)
    memory = None
    if args.volume_slices and ids:
        memory = volume_memory(load_model(registry.get(ids[0])), args.volume_slices, args.size)
        print(json.dumps({"model": ids[0], **memory}))
    gpu_rows = []
    if torch.cuda.is_available():
        for model_id in ids:
            model = load_model(registry.get(model_id))
            for batch_size in args.gpu_batch_sizes:
                gpu_rows.append({"model": model_id, **gpu_timing(model, args.size, batch_size)})
                print(json.dumps(gpu_rows[-1]))

    print(f"\n| model | precision | s/slice (auto) | s/slice (fp32) | vs NLM fast ({classical['nlm_fast']:.3f} s) "
          f"| vs BM3D ({classical['bm3d']:.2f} s) | max diff auto vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['auto_precision']} | {r['seconds_per_slice']:.3f} | {r['seconds_per_slice_fp32']:.3f} "
              f"| {r['nlm_ratio']:.2f}x the time | {r['bm3d_speedup']:.0f}x faster | {r['max_abs_difference_auto_vs_fp32']:.3f} |")
    for r in rows if args.ensemble > 1 else []:
        print(f"{r['model']}: self-ensemble x{args.ensemble} {r[f'seconds_per_slice_ensemble_{args.ensemble}']:.3f} s per slice")
    if memory:
        print(f"\n{ids[0]} on a {memory['volume']} volume: {memory['seconds_total']} s, peak memory "
              f"{memory['peak_rss_above_baseline_mib']} MiB above baseline = outputs {memory['outputs_mib']} MiB "
              f"+ {memory['peak_beyond_outputs_mib']} MiB")
    for r in gpu_rows:
        print(f"GPU {r['gpu']}: {r['model']} batch {r['batch_size']} ({r['precision']}): {r['slices_per_second']:.0f} "
              f"slices/s, peak {r['peak_gpu_memory_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
