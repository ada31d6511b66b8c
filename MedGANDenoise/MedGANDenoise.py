"""MedGANDenoise: the 3D Slicer module. Thin: everything that runs without Qt lives in MedGANDenoiseLib."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated, Callable, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedGANDenoiseLib import scene as sceneTools

SLICE_AXES = {"K (slices)": 0, "J": 1, "I": 2}


class MedGANDenoise(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedGANDenoise"
        self.parent.categories = ["Filtering.Denoising"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedGANDenoise developers"]
        self.parent.helpText = """
Removes noise from CT, MR and PET (and X-ray, ultrasound) volumes with a GAN generator of two
complementary predictors: one predicts the clean content, one the noise, and a learned 1x1
fusion joins them. Pick the input volume, the modality (Auto reads the DICOM modality or guesses
from the intensities) and the predictor variant (U-Net, DnCNN or SRDenseNet; only variants with
weights for the modality are offered), then click Denoise. Two volumes are created: the denoised
volume and the estimated noise (input = denoised + noise). The input is never modified.
<br><br>Scripting from the Python console:
<pre>
logic = slicer.util.getModuleLogic("MedGANDenoise")
denoised, noise = logic.process(volumeNode, modality="CT", variant="unet", device="auto")
</pre>
Pass <code>cancelEvent=threading.Event()</code> and set it from another thread to cancel, and
<code>progressCallback=lambda done, total: ...</code> to follow the slices. See the README for
batch processing of many files.
"""
        self.parent.acknowledgementText = """
Implements content-noise complementary learning (Geng M. et al., "Content-Noise Complementary
Learning for Medical Image Denoising", IEEE Transactions on Medical Imaging 41(2), 2022) with a
conditional PatchGAN, and the optional refinement stage of GAN-based denoisers for multiple
noise types and modalities. Built with PyTorch, SimpleITK and the SlicerPyTorch extension.
"""


@parameterNodeWrapper
class MedGANDenoiseParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    modality: str = "Auto"
    variant: str = "unet"
    device: str = "auto"
    strength: Annotated[float, WithinRange(0.0, 1.0)] = 1.0
    batchSize: Annotated[int, WithinRange(0, 256)] = 0  # 0: automatic (8 on a GPU, 1 on the CPU)
    sliceAxis: str = "K (slices)"
    modelsFolder: Path = Path()
    denoisedVolume: Optional[vtkMRMLScalarVolumeNode] = None
    noiseVolume: Optional[vtkMRMLScalarVolumeNode] = None
    skipNoise: bool = False


class MedGANDenoiseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None  # the background run in flight, if any

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedGANDenoise.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedGANDenoiseLogic()

        self.ui.modalityComboBox.addItems(["Auto", "CT", "MR", "PET", "XRAY", "US"])
        self.ui.sliceAxisComboBox.addItems(list(SLICE_AXES))
        self.ui.progressBar.hide()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modalityComboBox.connect("currentTextChanged(QString)", lambda _: self.updateVariants())
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _: self.updateVariants())
        self.ui.modelsFolderPathLineEdit.connect("currentPathChanged(QString)", lambda _: self.updateVariants())
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self.onPollRun)
        self.initializeParameterNode()
        self.updateDevices()
        self.updateVariants()

    def cleanup(self) -> None:
        self.cancelRun()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[MedGANDenoiseParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButton)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButton)
            self.updateButton()

    def updateButton(self, caller=None, event=None) -> None:
        if self._run is not None:
            return
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self.ui.variantComboBox.count)
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.text = "Denoise"
        self.ui.applyButton.toolTip = "Denoise the input volume" if ready else "Select an input volume with a model for its modality"

    def updateDevices(self) -> None:
        """Auto, CPU and each GPU by name (needs torch; without it only Auto and CPU)."""
        self.ui.deviceComboBox.clear()
        devices = [("auto", "Auto"), ("cpu", "CPU")]
        try:
            from MedGANDenoiseLib.engine import available_devices

            devices = available_devices()
        except ImportError:
            pass
        for deviceId, label in devices:  # GPUs by name: "cuda:0 (NVIDIA H100)"; the first word is the device
            self.ui.deviceComboBox.addItem(deviceId if deviceId in ("auto", "cpu") else f"{deviceId} ({label})")

    def updateVariants(self) -> None:
        """Offer only the predictor variants that have weights for the chosen modality."""
        if not self._parameterNode:
            return
        self.ui.variantComboBox.clear()
        modality, reason = self.logic.resolveModality(self._parameterNode.inputVolume, self.ui.modalityComboBox.currentText)
        try:
            variants = sceneTools.load_registry(self._modelsFolder()).variants_for(modality) if modality else []
        except ValueError as error:
            variants, reason = [], str(error)
        self.ui.variantComboBox.addItems(variants)
        self.ui.statusLabel.text = (f"Modality: {modality} ({reason})" if modality else reason) + (
            "" if variants or not modality else f". No model for {modality}: train one and add its folder under Advanced."
        )
        self.updateButton()

    def _modelsFolder(self) -> Optional[str]:
        folder = str(self._parameterNode.modelsFolder) if self._parameterNode else ""
        return folder if folder not in ("", ".") else None

    def onApplyButton(self) -> None:
        if self._run is not None:
            self.cancelRun()
            return
        with slicer.util.tryWithErrorDisplay("Denoising could not start.", waitCursor=True):
            p = self._parameterNode
            if not self.logic.ensureTorch():
                return
            modality, _ = self.logic.resolveModality(p.inputVolume, p.modality)
            model = self.logic.loadModel(modality, p.variant, self._modelsFolder())
            cancel = threading.Event()
            state = {"done": 0, "total": 1, "result": None, "error": None}
            # everything MRML is read here, in the main thread; the worker sees only numpy and torch
            volume = sceneTools.volume_array(p.inputVolume)
            options = dict(axis=SLICE_AXES.get(p.sliceAxis, 0), batch_size=p.batchSize or None, device=p.device.split()[0],
                           strength=p.strength, should_cancel=cancel.is_set,
                           progress=lambda done, total: state.update(done=done, total=total))

            def work() -> None:
                from MedGANDenoiseLib.engine import denoise_volume

                try:
                    state["result"] = denoise_volume(volume, model, modality, **options)
                except Exception as error:  # reported in the main thread
                    state["error"] = error

            self._run = {"thread": threading.Thread(target=work, daemon=True), "cancel": cancel, "state": state,
                         "input": p.inputVolume, "denoised": p.denoisedVolume, "noise": p.noiseVolume, "skipNoise": p.skipNoise}
            self.ui.applyButton.text = "Cancel"
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.show()
            self.ui.statusLabel.text = f"Denoising on {p.device} ..."
            self._run["thread"].start()
            self.timer.start()

    def cancelRun(self) -> None:
        if self._run is not None:
            self._run["cancel"].set()
            self.ui.statusLabel.text = "Cancelling after the current batch ..."

    def onPollRun(self) -> None:
        run = self._run
        state = run["state"]
        self.ui.progressBar.setMaximum(state["total"])
        self.ui.progressBar.setValue(state["done"])
        if run["thread"].is_alive():
            return
        self.timer.stop()
        self._run = None
        self.ui.progressBar.hide()
        error = state["error"]
        if error is not None:
            from MedGANDenoiseLib.engine import DenoiseCancelled

            if isinstance(error, DenoiseCancelled):
                self.ui.statusLabel.text = "Cancelled: nothing was changed."
            else:
                self.ui.statusLabel.text = f"Failed: {error}"
                slicer.util.errorDisplay(f"Denoising failed: {error}")
        else:
            with slicer.util.tryWithErrorDisplay("Could not create the output volumes.", waitCursor=True):
                outputs = sceneTools.apply_result(slicer.mrmlScene, run["input"], state["result"], denoised_node=run["denoised"],
                                                  noise_node=run["noise"], skip_noise=run["skipNoise"])
                self._parameterNode.denoisedVolume = outputs.denoised_node
                self._parameterNode.noiseVolume = outputs.noise_node
                slicer.util.setSliceViewerLayers(background=outputs.denoised_node, fit=True)
                self.ui.statusLabel.text = outputs.summary()
        self.updateButton()


class MedGANDenoiseLogic(ScriptedLoadableModuleLogic):
    """Denoising without the GUI; usable from the Python console and batch scripts."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> MedGANDenoiseParameterNode:
        return MedGANDenoiseParameterNode(super().getParameterNode())

    def ensureTorch(self, askConfirmation: bool = True) -> bool:
        """torch is imported lazily; when it is missing, offer to install it through the PyTorch
        extension (which picks the CUDA build matching the driver)."""
        try:
            import torch  # noqa: F401

            return True
        except ImportError:
            pass
        try:
            import PyTorchUtils
        except ImportError as error:
            raise ValueError(
                "MedGANDenoise needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, "
                "restart Slicer, and click Denoise again."
            ) from error
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation, torchVersionRequirement=">=2.1")
        if torch is None:
            raise ValueError("PyTorch is not installed, so nothing was denoised. Install it from the PyTorch module and try again.")
        return True

    def resolveModality(self, volumeNode, modality: str = "Auto") -> tuple[Optional[str], str]:
        """(modality, how it was decided); 'Auto' reads the DICOM modality or guesses."""
        if modality and modality.lower() != "auto":
            return modality, "chosen"
        if volumeNode is None or volumeNode.GetImageData() is None:
            return None, "Select an input volume."
        return sceneTools.guess_modality(volumeNode)

    def loadModel(self, modality: str, variant: str, modelsFolder: Optional[str] = None):
        from MedGANDenoiseLib.registry import load_model

        return load_model(sceneTools.load_registry(modelsFolder).find(modality, variant))

    def process(self, inputVolume, modality: str = "auto", variant: str = "unet", device: str = "auto", strength: float = 1.0,
                denoisedVolume=None, noiseVolume=None, progressCallback: Optional[Callable[[int, int], None]] = None,
                cancelEvent: Optional[threading.Event] = None, batchSize: Optional[int] = None, sliceAxis: int = 0,
                modelsFolder: Optional[str] = None, skipNoise: bool = False):
        """Denoise inputVolume (blocking) and return (denoisedVolume, noiseVolume).

        Set cancelEvent (a threading.Event) from another thread to stop after the current batch:
        a DenoiseCancelled exception is raised and the scene is left as it was. Errors are
        ValueErrors with a message saying what to do.
        """
        if inputVolume is None:
            raise ValueError("no input volume given")
        self.ensureTorch()
        resolved, reason = self.resolveModality(inputVolume, modality)
        logging.info(f"MedGANDenoise: modality {resolved} ({reason})")
        model = self.loadModel(resolved, variant, modelsFolder)
        outputs = sceneTools.denoise_volume_node(
            slicer.mrmlScene, inputVolume, model, modality=resolved, denoised_node=denoisedVolume, noise_node=noiseVolume,
            skip_noise=skipNoise, axis=sliceAxis, batch_size=batchSize, device=device, strength=strength,
            progress=progressCallback, should_cancel=cancelEvent.is_set if cancelEvent is not None else None)
        logging.info(outputs.summary())
        return outputs.denoised_node, outputs.noise_node


class MedGANDenoiseTest(ScriptedLoadableModuleTest):
    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_denoise_sample_ct()

    def test_denoise_sample_ct(self) -> None:
        try:
            import torch  # noqa: F401
        except ImportError:
            self.delayDisplay("Skipped: PyTorch is not installed (install the PyTorch extension)")
            return
        import numpy as np
        import SampleData

        from MedGANDenoiseLib.engine import estimate_noise_sigma

        logic = MedGANDenoiseLogic()
        try:
            sceneTools.load_registry().find("CT", "unet")
        except ValueError as error:
            self.delayDisplay(f"Skipped: {error}")
            return
        inputVolume = SampleData.downloadSample("CTChest")
        before = slicer.util.arrayFromVolume(inputVolume).copy()
        denoised, noise = logic.process(inputVolume, modality="CT", variant="unet")
        after = slicer.util.arrayFromVolume(denoised)
        self.assertEqual(after.shape, before.shape)
        for a, b in zip(denoised.GetSpacing() + denoised.GetOrigin(), inputVolume.GetSpacing() + inputVolume.GetOrigin()):
            self.assertAlmostEqual(a, b, places=4)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputVolume), before)
        self.assertLess(estimate_noise_sigma(after), estimate_noise_sigma(before))
        np.testing.assert_allclose(after + slicer.util.arrayFromVolume(noise), before, atol=1e-2)
        self.delayDisplay("MedGANDenoise self-test passed")
