"""The model registry: model cards in `registry.json` files, and safe loading of their weights.

A models folder holds `registry.json` ({"format_version": 1, "models": [card, ...]}) and the
weights files it names. Weights are plain state dicts loaded with `torch.load(weights_only=True)`
only after their SHA-256 matches the card. The shipped folder is `MedGANDenoiseLib/models`; a
user's own models live in a per-user folder (MEDGAN_DENOISE_MODELS, default
~/.MedGANDenoise/models) or any folder passed in, never inside the installed extension.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "models"
REGISTRY_FILE = "registry.json"
FORMAT_VERSION = 1
MODALITIES = ("CT", "MR", "PET", "XRAY", "US")


def user_models_dir() -> Path:
    """Per-user models folder: $MEDGAN_DENOISE_MODELS, else ~/.MedGANDenoise/models."""
    return Path(os.environ.get("MEDGAN_DENOISE_MODELS", Path.home() / ".MedGANDenoise" / "models"))


def normalize_modality(modality: str) -> str:
    """'ct' -> 'CT'; raises ValueError naming the known modalities."""
    name = str(modality).strip().upper().replace("-", "")
    aliases = {"MRI": "MR", "PT": "PET", "CR": "XRAY", "DX": "XRAY", "DR": "XRAY", "XR": "XRAY", "ULTRASOUND": "US"}
    name = aliases.get(name, name)
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    return name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelCard:
    """What a model is, how it was made, and how well it did (one registry entry)."""

    id: str
    modality: str
    variant: str
    architecture: dict[str, Any]
    normalization: dict[str, Any]
    file: str
    sha256: str
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # the share of the network's noise estimate that the model removes at strength 1: a calibration
    # chosen on validation images after training (1: the network's output as trained)
    noise_scale: float = 1.0
    folder: Path = field(default=SHIPPED_MODELS_DIR, compare=False)

    REQUIRED = ("id", "modality", "variant", "architecture", "normalization", "file", "sha256")

    def __post_init__(self) -> None:
        scale = self.noise_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 < scale <= 1.0:
            raise ValueError(f"model {self.id!r}: 'noise_scale' must be a number in (0, 1], "
                             f"the share of the noise estimate the model removes; got {scale!r}")

    @classmethod
    def from_dict(cls, entry: Any, folder: Path) -> "ModelCard":
        where = Path(folder) / REGISTRY_FILE
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: a model entry must be an object with {', '.join(cls.REQUIRED)}, got {type(entry).__name__} {entry!r:.40}")
        missing = [k for k in cls.REQUIRED if k not in entry]
        if missing:
            raise ValueError(f"model entry {entry.get('id', '?')!r} in {where} lacks {missing}")
        for key in ("id", "modality", "variant", "file", "sha256"):
            if not isinstance(entry[key], str):
                raise ValueError(f"model entry {entry.get('id', '?')!r} in {where}: {key!r} must be a string")
        for key in ("architecture", "normalization"):
            if not isinstance(entry[key], dict):
                raise ValueError(f"model entry {entry['id']!r} in {where}: {key!r} must be an object")
        known = {f for f in cls.__dataclass_fields__ if f != "folder"}
        try:
            card = cls(**{k: v for k, v in entry.items() if k in known}, folder=Path(folder))
            card.modality = normalize_modality(card.modality)
        except ValueError as error:
            raise ValueError(f"model entry {entry['id']!r} in {where}: {error}") from error
        return card

    def to_dict(self) -> dict[str, Any]:
        entry = asdict(self)
        entry.pop("folder")
        return entry

    @property
    def path(self) -> Path:
        return self.folder / self.file


@dataclass
class LoadedModel:
    """A model card with its generator, weights loaded, in eval mode."""

    card: ModelCard
    generator: Any  # ContentNoiseGenerator; typed loosely so this module imports without torch


class ModelRegistry:
    """The model cards of one or more models folders; earlier folders take precedence."""

    def __init__(self, cards: Iterable[ModelCard], problems: Iterable[str] = ()):
        self._cards: list[ModelCard] = []
        # what was skipped while reading the per-user folder: shown to the user as warnings
        self.problems: list[str] = list(problems)
        for card in cards:
            clash = next((c for c in self._cards if c.id == card.id), None)
            if clash is not None:
                raise ValueError(
                    f"model id {card.id!r} is defined twice ({clash.folder} and {card.folder}); "
                    "give your own model a different id"
                )
            self._cards.append(card)

    @staticmethod
    def read_folder(folder: str | Path) -> list[ModelCard]:
        """The cards of one models folder; ValueError naming the file if it is not a valid registry."""
        folder = Path(folder)
        registry_path = folder / REGISTRY_FILE
        if not registry_path.is_file():
            raise ValueError(f"no {REGISTRY_FILE} in the models folder {folder}")
        try:
            content = json.loads(registry_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{registry_path} is not valid JSON: {error}") from error
        except OSError as error:
            raise ValueError(f"cannot read {registry_path}: {error.strerror or error}") from error
        if not isinstance(content, dict) or not isinstance(content.get("models", []), list):
            raise ValueError(f'{registry_path} must hold an object {{"format_version": 1, "models": [...]}}, got {type(content).__name__}')
        return [ModelCard.from_dict(entry, folder) for entry in content.get("models", [])]

    @classmethod
    def from_folders(cls, folders: Iterable[str | Path], optional: Iterable[str | Path] = ()) -> "ModelRegistry":
        """The cards of `folders` (an invalid one is an error). A folder also listed in `optional`
        is skipped instead, with the reason kept in `problems`, so a broken per-user registry
        does not stop the shipped models from working."""
        optional_set = {Path(f) for f in optional}
        cards: list[ModelCard] = []
        problems: list[str] = []
        for folder in folders:
            try:
                found = cls.read_folder(folder)
                for card in found:
                    if any(c.id == card.id for c in cards) and Path(folder) in optional_set:
                        raise ValueError(f"model id {card.id!r} in {Path(folder) / REGISTRY_FILE} is already defined elsewhere")
            except ValueError as error:
                if Path(folder) not in optional_set:
                    raise
                problems.append(f"ignored your models folder {folder}: {error}")
                continue
            cards += found
        return cls(cards, problems)

    @classmethod
    def default(cls, extra_dirs: Iterable[str | Path] = ()) -> "ModelRegistry":
        """extra_dirs (must exist and be valid), then the per-user folder (if it exists; skipped
        with a problem noted if it is invalid), then the shipped models."""
        folders = [Path(d) for d in extra_dirs]
        user_dir = user_models_dir()
        optional = []
        if (user_dir / REGISTRY_FILE).is_file():
            folders.append(user_dir)
            optional.append(user_dir)
        if (SHIPPED_MODELS_DIR / REGISTRY_FILE).is_file():
            folders.append(SHIPPED_MODELS_DIR)
        return cls.from_folders(folders, optional)

    def models(self) -> list[ModelCard]:
        return list(self._cards)

    def modalities(self) -> list[str]:
        return sorted({c.modality for c in self._cards})

    def variants_for(self, modality: str) -> list[str]:
        modality = normalize_modality(modality)
        return sorted({c.variant for c in self._cards if c.modality == modality})

    def models_for(self, modality: str, variant: str) -> list[ModelCard]:
        """The models of a modality and predictor variant, in registry order (find() gives the first)."""
        modality = normalize_modality(modality)
        return [c for c in self._cards if c.modality == modality and c.variant == variant]

    def get(self, model_id: str) -> ModelCard:
        for card in self._cards:
            if card.id == model_id:
                return card
        known = ", ".join(c.id for c in self._cards) or "none"
        raise ValueError(f"unknown model {model_id!r}; known models: {known} (see --list-models)")

    def find(self, modality: str, variant: str) -> ModelCard:
        """The first model for this modality and predictor variant."""
        modality = normalize_modality(modality)
        cards = self.models_for(modality, variant)
        if cards:
            return cards[0]
        variants = self.variants_for(modality)
        if not variants:
            have = ", ".join(self.modalities()) or "none"
            raise ValueError(
                f"no model for modality {modality}; models exist for: {have}. "
                "Train one with medgan-train and add its folder (--models-dir)."
            )
        raise ValueError(f"no {variant!r} model for {modality}; available variants for {modality}: {', '.join(variants)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_model(card: ModelCard, device: str = "cpu") -> LoadedModel:
    """Verify the weights' SHA-256, load them without unpickling objects, build the generator."""
    import torch

    from .networks import build_generator

    path = card.path
    if not path.is_file():
        raise ValueError(f"the weights file of model {card.id!r} is missing: {path}. Reinstall the extension or re-export the model.")
    actual = sha256_of(path)
    if actual != card.sha256:
        raise ValueError(
            f"the weights file {path} does not match the registry's SHA-256 for model {card.id!r} "
            f"(expected {card.sha256[:12]}..., found {actual[:12]}...): the file is corrupt or was replaced. "
            "Reinstall the extension or re-export the model."
        )
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # it holds Python objects (possibly code): never loaded
        raise ValueError(
            f"the weights file {path} of model {card.id!r} is not a plain weights file (it holds Python objects) "
            "and was not loaded; use weights exported with medgan-train"
        ) from error
    except Exception as error:  # torch raises several kinds for a bad file
        raise ValueError(f"cannot read the weights file {path} of model {card.id!r}: {_first_line(error)}") from error
    if not isinstance(state, dict):
        raise ValueError(f"the weights file {path} of model {card.id!r} is not a plain weights file (no state dict) and was not used")
    try:
        generator = build_generator(**card.architecture)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"model {card.id!r} in {card.folder / REGISTRY_FILE} has an invalid architecture {card.architecture}: {_first_line(error)}"
        ) from error
    try:
        generator.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ValueError(
            f"the weights of model {card.id!r} do not fit its declared architecture {card.architecture}: {_first_line(error)}"
        ) from error
    generator.eval().to(device)
    return LoadedModel(card=card, generator=generator)


def write_model(
    generator: Any,
    folder: str | Path,
    *,
    model_id: str,
    modality: str,
    variant: str,
    architecture: dict[str, Any],
    normalization: dict[str, Any],
    description: str = "",
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelCard:
    """Save the generator's weights as `<model_id>.pt` and add (or replace) its card in the
    folder's registry.json. Both files are written atomically."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_path = folder / f"{model_id}.pt"
    state = generator if isinstance(generator, dict) else generator.state_dict()  # a module or its state dict
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
        torch.save(state, tmp)
    os.replace(tmp.name, weights_path)
    card = ModelCard(
        id=model_id,
        modality=normalize_modality(modality),
        variant=variant,
        architecture=architecture,
        normalization=normalization,
        file=weights_path.name,
        sha256=sha256_of(weights_path),
        description=description,
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        folder=folder,
    )
    registry_path = folder / REGISTRY_FILE
    content = json.loads(registry_path.read_text()) if registry_path.is_file() else {"format_version": FORMAT_VERSION, "models": []}
    content["models"] = [m for m in content.get("models", []) if m.get("id") != model_id] + [card.to_dict()]
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as tmp:
        json.dump(content, tmp, indent=2)
        tmp.write("\n")
    os.replace(tmp.name, registry_path)
    return card
