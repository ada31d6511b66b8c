"""A volume node on a real MRML scene (slicer-core) with an oblique geometry, a display window and
a parent transform: the input the scene tests and the CLI exchange tests start from."""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

OBLIQUE_IJK_TO_RAS = np.array([
    [0.6062, -0.4, 0.0, -120.0],
    [0.35, 0.6928, 0.0, 35.5],
    [0.0, 0.0, 2.5, 12.0],
    [0.0, 0.0, 0.0, 1.0],
])  # spacing (0.7, 0.8, 2.5), rotated 30 degrees about S


def add_volume_node(scene, array: np.ndarray, name: str):
    """An int16 scalar volume node holding `array` (k, j, i), oblique IJK-to-RAS, window 400/40,
    under a linear transform."""
    shape = array.shape
    image = vtk.vtkImageData()
    image.SetDimensions(shape[2], shape[1], shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.reshape(-1), deep=True, array_type=vtk.VTK_SHORT))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, OBLIQUE_IJK_TO_RAS[r, c])
    node.SetIJKToRASMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().AutoWindowLevelOff()
    node.GetDisplayNode().SetWindowLevel(400, 40)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "patient position")
    node.SetAndObserveTransformNodeID(transform.GetID())
    return node
