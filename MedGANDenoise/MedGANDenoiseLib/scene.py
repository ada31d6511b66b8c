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
    array = volume_array(node)
    sample = array.reshape(-1)[:: max(1, array.size // 1_000_000)]
    low, high = float(np.percentile(sample, 0.5)), float(np.percentile(sample, 99.5))
    if low <= -500:  # air in Hounsfield units; MR and PET are not negative like this
        return "CT", f"intensities from {low:.0f} to {high:.0f} look like Hounsfield units"
    if low >= 0 and high <= 50 and np.issubdtype(array.dtype, np.floating):
        return "PET", f"small non-negative floating-point values (up to {high:.3g}) look like PET uptake"
    return "MR", f"non-negative intensities up to {high:.0f} without HU air look like MR"


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
