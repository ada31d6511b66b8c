"""The module's scene handling against the real MRML library (slicer-core), without Qt.

The model is a tiny untrained network: these tests check nodes, geometry and atomicity only.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from vtk.util import numpy_support

from MedGANDenoiseLib import scene as mrml
from MedGANDenoiseLib.engine import DenoiseCancelled
from mrml_volumes import OBLIQUE_IJK_TO_RAS, add_volume_node

def make_volume(scene, name="Head CT", shape=(6, 16, 20), seed=0):
    array = np.random.default_rng(seed).normal(30, 25, shape).astype(np.int16)
    array[:, :3] = -1000
    return add_volume_node(scene, array, name), array


def node_names(scene) -> list[str]:
    return sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def test_outputs_are_named_and_have_the_inputs_geometry(scene, tiny_model):
    node, array = make_volume(scene)
    input_mtime, input_matrix = node.GetImageData().GetMTime(), mrml.ijk_to_ras(node)
    input_window = (node.GetDisplayNode().GetWindow(), node.GetDisplayNode().GetLevel(), node.GetName())
    outputs = mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", batch_size=4, device="cpu")
    assert outputs.denoised_node.GetName() == "Head CT denoised"
    assert outputs.noise_node.GetName() == "Head CT noise"
    for output in (outputs.denoised_node, outputs.noise_node):
        np.testing.assert_allclose(mrml.ijk_to_ras(output), OBLIQUE_IJK_TO_RAS, atol=1e-4)
        np.testing.assert_allclose(output.GetSpacing(), (0.7, 0.8, 2.5), atol=1e-4)
        np.testing.assert_allclose(output.GetOrigin(), (-120.0, 35.5, 12.0), atol=1e-4)
        assert output.GetTransformNodeID() == node.GetTransformNodeID()
        assert mrml.volume_array(output).shape == array.shape
    total = mrml.volume_array(outputs.denoised_node) + mrml.volume_array(outputs.noise_node)
    np.testing.assert_allclose(total, array, atol=1e-3)
    # the input is untouched
    np.testing.assert_array_equal(mrml.volume_array(node), array)
    np.testing.assert_array_equal(mrml.ijk_to_ras(node), input_matrix)
    assert node.GetImageData().GetMTime() == input_mtime
    assert (node.GetDisplayNode().GetWindow(), node.GetDisplayNode().GetLevel(), node.GetName()) == input_window
    # display: the input's window/level for the denoised, a symmetric window around 0 for the noise
    assert outputs.denoised_node.GetDisplayNode().GetWindow() == pytest.approx(400)
    assert outputs.denoised_node.GetDisplayNode().GetLevel() == pytest.approx(40)
    assert outputs.noise_node.GetDisplayNode().GetLevel() == 0.0 and outputs.noise_node.GetDisplayNode().GetWindow() > 0
    assert "noise sigma" in outputs.summary()


def test_rerun_updates_the_outputs_instead_of_adding_nodes(scene, tiny_model):
    node, _ = make_volume(scene)
    first = mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", device="cpu")
    count = scene.GetNumberOfNodes()
    second = mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", device="cpu", strength=0.5,
                                      denoised_node=first.denoised_node, noise_node=first.noise_node)
    assert scene.GetNumberOfNodes() == count
    assert second.denoised_node is first.denoised_node
    np.testing.assert_allclose(mrml.volume_array(second.noise_node), 0.5 * first.result.noise, atol=1e-3)


def test_cancel_and_errors_leave_the_scene_as_it_was(scene, tiny_model):
    node, array = make_volume(scene)
    before = node_names(scene)
    with pytest.raises(DenoiseCancelled):
        mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", batch_size=2, device="cpu", should_cancel=lambda: True)
    with pytest.raises(ValueError, match="trained for CT"):
        mrml.denoise_volume_node(scene, node, tiny_model, modality="MR", device="cpu")
    with pytest.raises(ValueError, match="cannot be the input volume"):
        mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", device="cpu", noise_node=node)
    assert node_names(scene) == before
    np.testing.assert_array_equal(mrml.volume_array(node), array)


def test_skip_noise_creates_only_the_denoised_volume(scene, tiny_model):
    node, _ = make_volume(scene)
    outputs = mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", device="cpu", skip_noise=True)
    assert outputs.noise_node is None
    assert "Head CT noise" not in node_names(scene) and "Head CT denoised" in node_names(scene)


def test_outputs_go_under_the_inputs_study_in_the_subject_hierarchy(scene, tiny_model):
    node, _ = make_volume(scene)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 1")
    study = hierarchy.CreateStudyItem(patient, "CT study")
    hierarchy.CreateItem(study, node)
    outputs = mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", device="cpu")
    for output in (outputs.denoised_node, outputs.noise_node):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(output)) == study


def test_unique_names_when_outputs_of_that_name_exist(scene, tiny_model):
    node, _ = make_volume(scene)
    mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", device="cpu")
    again = mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", device="cpu")
    assert again.denoised_node.GetName() != "Head CT denoised" and again.denoised_node.GetName().startswith("Head CT denoised")


def test_guess_modality_from_dicom_attribute_or_intensities(scene):
    ct, _ = make_volume(scene, "ct")
    assert mrml.guess_modality(ct)[0] == "CT" and "Hounsfield" in mrml.guess_modality(ct)[1]
    mr, _ = make_volume(scene, "mr")
    mrml.volume_array(mr)  # a view; write through a fresh array instead
    image = mr.GetImageData()
    mr_values = np.random.default_rng(1).integers(0, 900, 6 * 16 * 20).astype(np.int16)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mr_values, deep=True, array_type=vtk.VTK_SHORT))
    assert mrml.guess_modality(mr)[0] == "MR"
    mr.SetAttribute("DICOM.Modality", "PT")
    assert mrml.guess_modality(mr) == ("PET", "DICOM modality PT")


def test_nrrd_round_trip_keeps_the_geometry(scene, tiny_model, tmp_path):
    node, _ = make_volume(scene)
    outputs = mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", device="cpu")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "denoised.nrrd"))
    assert storage.WriteData(outputs.denoised_node)
    loaded = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loaded")
    reader = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    reader.SetFileName(str(tmp_path / "denoised.nrrd"))
    assert reader.ReadData(loaded)
    np.testing.assert_allclose(mrml.ijk_to_ras(loaded), OBLIQUE_IJK_TO_RAS, atol=1e-4)
    np.testing.assert_allclose(mrml.volume_array(loaded), mrml.volume_array(outputs.denoised_node), atol=1e-5)


def test_a_volume_without_voxels_is_refused(scene, tiny_model):
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="has no voxels"):
        mrml.denoise_volume_node(scene, empty, tiny_model, modality="CT")


def test_the_same_node_as_denoised_and_noise_output_is_refused(scene, tiny_model):
    node, array = make_volume(scene)
    target = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "target")
    before = node_names(scene)
    with pytest.raises(ValueError, match="the denoised and the noise outputs are the same volume"):
        mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", device="cpu", denoised_node=target, noise_node=target)
    assert node_names(scene) == before and target.GetImageData() is None
    # with the noise skipped, the one node only receives the denoised volume
    outputs = mrml.denoise_volume_node(scene, node, tiny_model, modality="CT", device="cpu", denoised_node=target,
                                       noise_node=target, skip_noise=True)
    assert outputs.denoised_node is target and outputs.noise_node is None
    np.testing.assert_allclose(mrml.volume_array(target), outputs.result.denoised, atol=1e-5)
