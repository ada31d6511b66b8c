"""Scene handling for the Slicer module, importable with the MRML library alone (no Qt).

Reads an input scalar volume node, runs the engine on a copy of its voxels, and only after a
successful run creates (or updates) the "<input> denoised" and "<input> noise" nodes with the
input's exact geometry, parent transform, subject-hierarchy folder and display settings. A
failed or cancelled run leaves the scene as it was; the input node is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support

from .cli_protocol import CLI_AXES, guess_modality_of_array
from .engine import DenoiseResult, denoise_volume, estimate_noise_sigma
from .registry import LoadedModel, ModelRegistry, normalize_modality

NOISE_WINDOW_SIGMAS = 3.0  # the noise volume is shown over +-3 sigma around zero


def volume_array(node) -> np.ndarray:
    """The node's voxels as a read-only (k, j, i) numpy view (no copy)."""
    image = node.GetImageData() if node is not None else None
    if image is None or image.GetPointData().GetScalars() is None:
        raise ValueError("the input volume has no voxels: load a scan into it first")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"the input volume has {image.GetNumberOfScalarComponents()} components per voxel (e.g. RGB); "
            "denoising needs a scalar volume"
        )
    i, j, k = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i)
    array.flags.writeable = False
    return array


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def guess_modality(node) -> tuple[str, str]:
    """(modality, reason): the DICOM modality when the node carries one, else a guess from the
    intensity range, with the reason in words so the user can check it."""
    for key in ("DICOM.Modality", "DICOM.modality"):
        value = node.GetAttribute(key)
        if value:
            try:
                return normalize_modality(value), f"DICOM modality {value}"
            except ValueError:
                pass
    return guess_modality_of_array(volume_array(node))


@dataclass
class DenoiseOutputs:
    denoised_node: Any
    noise_node: Any | None
    result: DenoiseResult
    sigma_before: float
    sigma_after: float

    def summary(self) -> str:
        return (
            f"Denoised {'x'.join(map(str, self.result.denoised.shape))} voxels on {self.result.device} in "
            f"{self.result.seconds:.1f} s; estimated noise sigma {self.sigma_before:.3g} -> {self.sigma_after:.3g}"
        )


def run_engine(input_node, model: LoadedModel, modality: str | None = None, **engine_kwargs: Any) -> DenoiseResult:
    """The engine on the input node's voxels (read through a view; the node is not touched).
    Safe to call from a worker thread: it creates no nodes."""
    return denoise_volume(volume_array(input_node), model, modality, **engine_kwargs)


def apply_result(scene, input_node, result: DenoiseResult, *, denoised_node=None, noise_node=None, skip_noise: bool = False) -> DenoiseOutputs:
    """Put a finished result into the scene: update the given output nodes or create new ones.
    Nodes created here are removed again if anything fails, so the scene never keeps half-made nodes."""
    for node in (denoised_node, noise_node):
        if node is not None and node is input_node:
            raise ValueError("an output volume cannot be the input volume: pick another output or 'Create new volume'")
    if denoised_node is not None and denoised_node is noise_node and not skip_noise:
        raise ValueError("the denoised and the noise outputs are the same volume: pick two different volumes or 'Create new volume'")
    created = []
    try:
        name = input_node.GetName()
        if denoised_node is None:
            denoised_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{name} denoised"))
            created.append(denoised_node)
        _fill(denoised_node, input_node, result.denoised)
        if not skip_noise:
            if noise_node is None:
                noise_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{name} noise"))
                created.append(noise_node)
            _fill(noise_node, input_node, result.noise)
        else:
            noise_node = None
        input_array = volume_array(input_node)
        sigma_before, sigma_after = estimate_noise_sigma(input_array), estimate_noise_sigma(result.denoised)
        _show(denoised_node, input_node, noise_node, float(np.std(result.noise[:: max(1, result.noise.shape[0] // 8)])))
        _place_in_hierarchy(scene, input_node, [n for n in (denoised_node, noise_node) if n is not None])
    except BaseException:
        for node in created:
            scene.RemoveNode(node)
        raise
    return DenoiseOutputs(denoised_node, noise_node, result, sigma_before, sigma_after)


def denoise_volume_node(scene, input_node, model: LoadedModel, *, modality: str | None = None, denoised_node=None,
                        noise_node=None, skip_noise: bool = False, **engine_kwargs: Any) -> DenoiseOutputs:
    """Blocking: run the engine, then put the result into the scene."""
    result = run_engine(input_node, model, modality, **engine_kwargs)
    return apply_result(scene, input_node, result, denoised_node=denoised_node, noise_node=noise_node, skip_noise=skip_noise)


EXCHANGE_ATTRIBUTE = "MedGANDenoise.Exchange"


@dataclass
class CliExchange:
    """One run through the scripted CLI. Slicer's CLI logic writes the input node to a file for
    the CLI and reads the CLI's output files back into the hidden exchange nodes; only a completed
    run's exchange nodes are copied into the real outputs (see finish_exchange)."""

    input_node: Any
    denoised: Any
    noise: Any | None
    generation: int  # the scene generation at the start (see SceneGeneration)


class SceneGeneration:
    """Counts scene closes (StartCloseEvent and EndCloseEvent), so a run started before a close
    can tell that its results belong to a scene that is gone."""

    def __init__(self, scene) -> None:
        self.scene, self.value = scene, 0
        self._tags = [scene.AddObserver(event, self._bump) for event in (scene.StartCloseEvent, scene.EndCloseEvent)]

    def _bump(self, caller=None, event=None) -> None:
        self.value += 1

    def close(self) -> None:
        for tag in self._tags:
            self.scene.RemoveObserver(tag)
        self._tags = []


def create_exchange(scene, input_node, *, skip_noise: bool = False, generation: int = 0) -> CliExchange:
    """Hidden volume nodes for the CLI's outputs (not shown in node selectors or the data tree)."""
    volume_array(input_node)  # refuse an empty or multi-component input before anything runs
    nodes = []
    for role in ("denoised",) if skip_noise else ("denoised", "noise"):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"MedGANDenoise exchange {role}"))
        node.SetHideFromEditors(True)
        node.SetSelectable(False)
        node.SetSaveWithScene(False)
        node.SetAttribute(EXCHANGE_ATTRIBUTE, role)
        nodes.append(node)
    return CliExchange(input_node, nodes[0], nodes[1] if len(nodes) > 1 else None, generation)


def cli_parameters(exchange: CliExchange, *, modality: str, variant: str = "unet", model_id: str = "", device: str = "auto",
                   strength: float = 1.0, batch_size: int | None = None, axis: int = 0, models_folder: str | Path | None = None,
                   ensemble: int = 1) -> dict[str, Any]:
    """The MedGANDenoiseCLI parameters (names of MedGANDenoiseCLI.xml) for slicer.cli.run."""
    axes = {v: k for k, v in CLI_AXES.items()}
    if axis not in axes:
        raise ValueError(f"slice axis must be 0 (K), 1 (J) or 2 (I), got {axis}")
    parameters = {
        "inputVolume": exchange.input_node, "denoisedVolume": exchange.denoised, "modality": str(modality), "variant": str(variant),
        "modelId": str(model_id or ""), "device": str(device or "auto"), "strength": float(strength), "batchSize": int(batch_size or 0),
        "ensemble": int(ensemble),
        "sliceAxis": axes[axis], "modelsFolder": str(models_folder or ""),
    }
    if exchange.noise is not None:
        parameters["noiseVolume"] = exchange.noise
    return parameters


def remove_exchange(scene, exchange: CliExchange) -> None:
    """Remove the exchange nodes with their storage and display nodes (whatever is still there)."""
    for node in (exchange.denoised, exchange.noise):
        if node is None or not scene.IsNodePresent(node):
            continue
        helpers = [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        scene.RemoveNode(node)
        for helper in helpers:
            if helper is not None and scene.IsNodePresent(helper):
                scene.RemoveNode(helper)


def finish_exchange(scene, exchange: CliExchange, report: dict[str, Any], *, generation: int | None = None, denoised_node=None,
                    noise_node=None, skip_noise: bool = False) -> DenoiseOutputs | None:
    """Copy a completed CLI run's outputs into the real output nodes (created or updated with the
    input's geometry, transform, folder and display, as apply_result does) and remove the
    exchange nodes. Returns None, changing nothing, when the scene was closed during the run
    (generation differs) or the input is gone."""
    try:
        input_node = exchange.input_node
        if (generation is not None and generation != exchange.generation) or input_node is None or not scene.IsNodePresent(input_node):
            return None
        input_array = volume_array(input_node)
        try:
            denoised = volume_array(exchange.denoised)
        except ValueError:
            raise ValueError("the CLI finished without a denoised volume: see its output in the Error Log") from None
        if denoised.shape != input_array.shape:
            raise ValueError(f"the CLI's denoised volume has shape {denoised.shape}, the input {input_array.shape}")
        denoised = np.array(denoised, dtype=np.float32)  # copies: the exchange nodes are removed below
        noise = np.array(volume_array(exchange.noise), dtype=np.float32) if exchange.noise is not None else input_array - denoised
        result = DenoiseResult(denoised, noise, str(report.get("device", "?")), float(report.get("seconds", 0.0)),
                               int(report.get("batch_size", 0)), precision=str(report.get("precision", "?")),
                               warnings=list(report.get("warnings", [])))
        return apply_result(scene, input_node, result, denoised_node=denoised_node, noise_node=noise_node, skip_noise=skip_noise)
    finally:
        remove_exchange(scene, exchange)


def _fill(node, reference, array: np.ndarray) -> None:
    """Voxels into the node, with the reference's IJK-to-RAS (oblique directions, spacing, origin)
    and parent transform."""
    image = vtk.vtkImageData()
    k, j, i = array.shape
    image.SetDimensions(i, j, k)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array, dtype=np.float32).reshape(-1), deep=True, array_type=vtk.VTK_FLOAT)
    image.GetPointData().SetScalars(scalars)
    was_modifying = node.StartModify()
    node.SetIJKToRASMatrix(_matrix(reference))
    node.SetAndObserveImageData(image)
    node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
    node.EndModify(was_modifying)


def _matrix(node) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix


def _show(denoised_node, input_node, noise_node, noise_std: float) -> None:
    """Denoised: the input's window/level. Noise: a symmetric window around zero."""
    denoised_node.CreateDefaultDisplayNodes()
    display, source = denoised_node.GetDisplayNode(), input_node.GetDisplayNode()
    if display is not None and source is not None:
        display.AutoWindowLevelOff()
        display.SetWindowLevel(source.GetWindow(), source.GetLevel())
    if noise_node is not None:
        noise_node.CreateDefaultDisplayNodes()
        noise_display = noise_node.GetDisplayNode()
        if noise_display is not None:
            noise_display.AutoWindowLevelOff()
            noise_display.SetWindowLevel(max(2 * NOISE_WINDOW_SIGMAS * noise_std, 1e-6), 0.0)


def _place_in_hierarchy(scene, input_node, nodes) -> None:
    """Beside the input: under the same study/folder of the subject hierarchy, if there is one."""
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    input_item = hierarchy.GetItemByDataNode(input_node) if hierarchy is not None else 0
    if not input_item:
        return
    parent = hierarchy.GetItemParent(input_item)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, parent)
        else:  # Slicer's subject hierarchy plugins add items by themselves; bare MRML does not
            hierarchy.CreateItem(parent, node)


def load_registry(models_folder: str | Path | None = None) -> ModelRegistry:
    """The shipped and per-user models, plus a folder of the user's own models if given."""
    return ModelRegistry.default([models_folder] if models_folder else [])
