"""MedGANDenoise: the 3D Slicer module. Thin: everything that runs without Qt lives in MedGANDenoiseLib."""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedGANDenoiseLib import cli_protocol
from MedGANDenoiseLib import scene as sceneTools
from MedGANDenoiseLib.cli_protocol import ENSEMBLE_CHOICES, MODALITY_CHOICES, SLICE_AXES
from MedGANDenoiseLib.registry import normalize_modality

SETTINGS_DEVICE = "MedGANDenoise/device"
SETTINGS_MODELS_FOLDER = "MedGANDenoise/modelsFolder"


class MedGANDenoise(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedGANDenoise"
        self.parent.categories = ["Filtering.Denoising"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedGANDenoise developers (MedGANDenoise project)"]
        self.parent.helpText = """
Removes noise from CT, MR and PET (and X-ray, ultrasound) volumes with a GAN generator of two
complementary predictors: one predicts the clean content, one the noise, and a learned 1x1
fusion joins them. Pick the input volume, the modality (Auto reads the DICOM modality or guesses
from the intensities) and the predictor variant (U-Net, DnCNN or SRDenseNet; only variants with
weights for the modality are offered) and, where there are several (the shipped one and models of
your own folder), the model, then click Denoise. Two volumes are created: the denoised
volume and the estimated noise (input = denoised + noise). The input is never modified. The model
runs in a separate process (the MedGANDenoiseCLI module): the application stays responsive and
Cancel stops it at once. The Details section shows what ran. Self-ensemble (below Strength)
averages the model's outputs over 4 mirrorings or 8 flips and rotations of each slice: 4 or 8
times the time for a slightly better estimate.
<br><br>Scripting from the Python console:
<pre>
logic = slicer.util.getModuleLogic("MedGANDenoise")
denoised, noise = logic.process(volumeNode, modality="CT", variant="unet", device="auto")
</pre>
Pass <code>cancelEvent=threading.Event()</code> and set it to cancel,
<code>progressCallback=lambda percent, total: ...</code> to follow the run, and
<code>modelId="ct-dncnn-w48"</code> to pick a model, <code>ensemble=4</code> for the self-ensemble, <code>inProcess=True</code> to run the engine in Slicer's own process. See the README for batch
processing of many files.
"""
        self.parent.acknowledgementText = """
Implements content-noise complementary learning (Geng M. et al., "Content-Noise Complementary
Learning for Medical Image Denoising", IEEE Transactions on Medical Imaging 41(2), 2022) with a
conditional PatchGAN, and the optional refinement stage of GAN-based denoisers for multiple
noise types and modalities. Built with PyTorch, SimpleITK and the SlicerPyTorch extension.
"""


@parameterNodeWrapper
class MedGANDenoiseParameterNode:
    """Bound to the panel through the widgets' SlicerParameterName. Fixed lists use Choice; the
    variant, model and device lists depend on the models and GPUs found at run time, so their combo
    boxes are not bound: the widget keeps variant, model and device here in code."""

    inputVolume: vtkMRMLScalarVolumeNode
    modality: Annotated[str, Choice(list(MODALITY_CHOICES))] = "Auto"
    strength: Annotated[float, WithinRange(0.0, 1.0)] = 1.0
    ensemble: Annotated[str, Choice(list(ENSEMBLE_CHOICES))] = "Off"
    batchSize: Annotated[int, WithinRange(0, 256)] = 0  # 0: automatic (8 on a GPU, 1 on the CPU)
    sliceAxis: Annotated[str, Choice(list(SLICE_AXES))] = "K (slices)"
    modelsFolder: Path = Path()
    denoisedVolume: Optional[vtkMRMLScalarVolumeNode] = None
    noiseVolume: Optional[vtkMRMLScalarVolumeNode] = None
    skipNoise: bool = False
    variant: str = "unet"  # not bound (see above)
    modelId: str = ""  # not bound; "" is the first model of the modality and variant
    device: str = "auto"  # not bound (see above)


@dataclass
class DenoiseRun:
    """A run of the MedGANDenoiseCLI module in flight."""

    cliNode: Any
    exchange: sceneTools.CliExchange
    denoisedVolume: Any
    noiseVolume: Any
    skipNoise: bool
    modelId: str


class MedGANDenoiseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run: Optional[DenoiseRun] = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedGANDenoise.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedGANDenoiseLogic()
        self.ui.progressBar.hide()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        # These handlers read the widgets, never the parameter node, so they see the new value
        # whatever the order in which Qt calls them and connectGui's connectors.
        self.ui.modalityComboBox.connect("currentIndexChanged(int)", self.updateVariants)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateVariants)
        self.ui.modelsFolderPathLineEdit.connect("currentPathChanged(QString)", self.onModelsFolderChanged)
        self.ui.variantComboBox.connect("currentIndexChanged(int)", self.onVariantChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.initializeParameterNode()
        self.updateDevices()
        self.updateVariants()

    def cleanup(self) -> None:
        self.cancelRun()
        self.removeObservers()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        if self.logic is not None:  # None when setup() did not get that far
            self.logic.cleanup()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.updateDevices()  # GPUs appear once PyTorch was installed through the PyTorch extension
        self.updateVariants()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButton)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
            self.updateVariants()

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        if not parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                parameterNode.inputVolume = first
        if str(parameterNode.modelsFolder) in ("", ".") and qt.QSettings().value(SETTINGS_MODELS_FOLDER):
            parameterNode.modelsFolder = Path(qt.QSettings().value(SETTINGS_MODELS_FOLDER))
        self.setParameterNode(parameterNode)

    def setParameterNode(self, inputParameterNode: Optional[MedGANDenoiseParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButton):  # exit() removed it
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButton)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self.connectParameterNodeGui(self._parameterNode, self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButton)
            self.updateButton()

    @staticmethod
    def connectParameterNodeGui(parameterNode, gui):
        """parameterNode.connectGui(gui), returning a tag that disconnectGui accepts. Slicer 5.8's
        connectGui returns None (fixed by Slicer commit b5a65a49a0, in 5.10), so disconnectGui(None)
        left the old connectors connected: at the next enter() the new Choice connectors clear the
        combo boxes and the old ones write choices[-1], then choices[0], back into the parameter
        node, resetting the modality and slice axis. The tag is the one connectGui allots."""
        expected = getattr(parameterNode, "_nextParameterGUIsTag", None)
        tag = parameterNode.connectGui(gui)
        return tag if tag is not None else expected

    def updateButton(self, caller=None, event=None) -> None:
        if self._run is not None:
            return
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self.ui.variantComboBox.count)
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.text = "Denoise"
        self.ui.applyButton.toolTip = "Denoise the input volume" if ready else "Select an input volume with a model for its modality"

    @staticmethod
    def _refill(comboBox, items: list[tuple[str, str]], wanted: str) -> None:
        """Replace the (label, value) items without emitting signals and select `wanted`
        (else the first item)."""
        wasBlocked = comboBox.blockSignals(True)
        comboBox.clear()
        for label, value in items:
            comboBox.addItem(label, value)
        values = [value for _, value in items]
        comboBox.setCurrentIndex(values.index(wanted) if wanted in values else 0)
        comboBox.blockSignals(wasBlocked)

    def currentDevice(self) -> str:
        return self.ui.deviceComboBox.itemData(self.ui.deviceComboBox.currentIndex) or "auto"

    def updateDevices(self) -> None:
        """Auto, CPU and each GPU by name; the saved choice is kept (QSettings)."""
        devices = [(label if deviceId in ("auto", "cpu") else f"{deviceId} ({label})", deviceId) for deviceId, label in self.logic.availableDevices()]
        wanted = qt.QSettings().value(SETTINGS_DEVICE) or (self._parameterNode.device if self._parameterNode else "auto")
        self._refill(self.ui.deviceComboBox, devices, wanted)
        if self._parameterNode:
            self._parameterNode.device = self.currentDevice()

    def onDeviceChanged(self, index: int = 0) -> None:
        if self.ui.deviceComboBox.count:
            qt.QSettings().setValue(SETTINGS_DEVICE, self.currentDevice())
            if self._parameterNode:
                self._parameterNode.device = self.currentDevice()

    def onVariantChanged(self, index: int = 0) -> None:
        if self._parameterNode and self.ui.variantComboBox.count:
            self._parameterNode.variant = self.ui.variantComboBox.currentText
        self.updateModels()

    def currentModelId(self) -> str:
        if not self.ui.modelComboBox.count:
            return ""
        return self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex) or ""

    def updateModels(self) -> None:
        """Offer the models of the chosen modality and variant, the default (first) on top, each
        with its description as tooltip; the model the user picked (kept in the parameter node) is
        selected again whenever it is listed, e.g. after a detour through another modality."""
        if not self._parameterNode:
            return
        modality, _ = self.logic.resolveModality(self.ui.inputVolumeSelector.currentNode(), self.ui.modalityComboBox.currentText)
        variant = self.ui.variantComboBox.currentText if self.ui.variantComboBox.count else ""
        try:
            cards = sceneTools.load_registry(self._modelsFolder()).models_for(modality, variant) if modality and variant else []
        except ValueError:
            cards = []
        labels = [(f"{card.id} (default)" if index == 0 and len(cards) > 1 else card.id, card.id) for index, card in enumerate(cards)]
        self._refill(self.ui.modelComboBox, labels, self._parameterNode.modelId)
        for index, card in enumerate(cards):
            self.ui.modelComboBox.setItemData(index, card.description, qt.Qt.ToolTipRole)

    def onModelChanged(self, index: int = 0) -> None:
        """The user picked a model: remember it (a refill of the list does not emit this)."""
        if self._parameterNode and self.ui.modelComboBox.count:
            self._parameterNode.modelId = self.currentModelId()

    def onModelsFolderChanged(self, path: str = "") -> None:
        qt.QSettings().setValue(SETTINGS_MODELS_FOLDER, self.ui.modelsFolderPathLineEdit.currentPath)
        self.updateVariants()

    def _modelsFolder(self) -> Optional[str]:
        folder = self.ui.modelsFolderPathLineEdit.currentPath
        return folder if folder not in ("", ".") else None

    def updateVariants(self, *unused) -> None:
        """Offer only the predictor variants that have weights for the chosen modality (read
        from the widgets, so the list follows the selection that was just made)."""
        if not self._parameterNode:
            return
        modality, reason = self.logic.resolveModality(self.ui.inputVolumeSelector.currentNode(), self.ui.modalityComboBox.currentText)
        try:
            variants = sceneTools.load_registry(self._modelsFolder()).variants_for(modality) if modality else []
        except ValueError as error:
            variants, reason = [], str(error)
        self._refill(self.ui.variantComboBox, [(v, v) for v in variants], self._parameterNode.variant)
        self.onVariantChanged()
        self.ui.statusLabel.text = (f"Modality: {modality} ({reason})" if modality else reason) + (
            "" if variants or not modality else f". No model for {modality}: train one and add its folder under Advanced."
        )
        self.updateButton()

    def onApplyButton(self) -> None:
        if self._run is not None:
            self.cancelRun()
            return
        with slicer.util.tryWithErrorDisplay("Denoising could not start.", waitCursor=True):
            p = self._parameterNode
            self.logic.ensureTorch()
            modality, reason = self.logic.resolveModality(p.inputVolume, p.modality)
            run = self.logic.startRun(
                p.inputVolume, modality=modality, variant=self.ui.variantComboBox.currentText, modelId=self.currentModelId(),
                device=self.currentDevice(),
                strength=p.strength, ensemble=ENSEMBLE_CHOICES[p.ensemble], batchSize=p.batchSize or None, sliceAxis=SLICE_AXES[p.sliceAxis], modelsFolder=self._modelsFolder(),
                denoisedVolume=p.denoisedVolume, noiseVolume=p.noiseVolume, skipNoise=p.skipNoise)
            self._run = run
            self.addObserver(run.cliNode, vtk.vtkCommand.ModifiedEvent, self.onCliNodeModified)
            self.ui.applyButton.text = "Cancel"
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.show()
            self.ui.statusLabel.text = f"Denoising with {run.modelId} ({modality}: {reason}) on {self.currentDevice()} ..."
            self.ui.detailsTextEdit.setPlainText(f"Input: {p.inputVolume.GetName()}\nModel: {run.modelId}\nRunning in a separate process ...")

    def cancelRun(self) -> None:
        if self._run is not None:
            self.logic.cancelRun(self._run)
            self.ui.statusLabel.text = "Cancelling ..."

    def onCliNodeModified(self, caller, event) -> None:
        run = self._run
        if run is None or caller is not run.cliNode:
            return
        self.ui.progressBar.setValue(run.cliNode.GetProgress())
        if run.cliNode.IsBusy():
            return
        self.removeObserver(run.cliNode, vtk.vtkCommand.ModifiedEvent, self.onCliNodeModified)
        # Finish once this event has been delivered: finishRun removes the CLI node from the scene,
        # and when Completed comes from vtkSlicerCLIModuleLogic::ProcessMRMLLogicsEvents nothing
        # else holds the node, which vtkMRMLCommandLineModuleNode::Modified() still uses (it invokes
        # StatusModifiedEvent after ModifiedEvent). The lambda keeps the node alive until then.
        qt.QTimer.singleShot(0, lambda: self.onRunFinished(run))

    def onRunFinished(self, run: DenoiseRun) -> None:
        if self._run is not run:
            return
        self._run = None
        self.ui.progressBar.hide()
        try:
            outputs = self.logic.finishRun(run)
        except Exception as error:
            from MedGANDenoiseLib.engine import DenoiseCancelled

            cancelled = isinstance(error, DenoiseCancelled)
            self.ui.statusLabel.text = "Cancelled: nothing was changed." if cancelled else f"Failed: {error}"
            self.ui.detailsTextEdit.appendPlainText(self.ui.statusLabel.text)
            if not cancelled:
                slicer.util.errorDisplay(f"Denoising failed: {error}")
        else:
            if outputs is None:
                self.ui.statusLabel.text = "The scene was closed during the run: the results were discarded."
            elif self._parameterNode is not None:
                self._parameterNode.denoisedVolume = outputs.denoised_node
                self._parameterNode.noiseVolume = outputs.noise_node
                slicer.util.setSliceViewerLayers(background=outputs.denoised_node, fit=True)
                self.ui.statusLabel.text = outputs.summary()
            self.ui.detailsTextEdit.setPlainText(self.logic.lastReport)
        self.updateButton()


class MedGANDenoiseLogic(ScriptedLoadableModuleLogic):
    """Denoising without the GUI; usable from the Python console and batch scripts."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.sceneGeneration = sceneTools.SceneGeneration(slicer.mrmlScene)
        self.lastReport = ""

    def cleanup(self) -> None:
        self.sceneGeneration.close()

    def getParameterNode(self) -> MedGANDenoiseParameterNode:
        return MedGANDenoiseParameterNode(super().getParameterNode())

    @staticmethod
    def torchInstalled() -> bool:
        """Whether Slicer's Python (which also runs the CLI) has torch; it is not imported here."""
        return importlib.util.find_spec("torch") is not None

    def availableDevices(self) -> list[tuple[str, str]]:
        if not self.torchInstalled():
            return [("auto", "Auto"), ("cpu", "CPU")]
        from MedGANDenoiseLib.engine import available_devices

        return available_devices()

    def ensureTorch(self, askConfirmation: bool = True) -> bool:
        """When torch is missing, offer to install it through the PyTorch extension (which picks
        the CUDA build matching the driver)."""
        if self.torchInstalled():
            return True
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

    @staticmethod
    def findModel(modality: str, variant: str, modelsFolder: Optional[str] = None, modelId: Optional[str] = None):
        """The card of modelId (which must be a model of `modality`; its own variant wins over
        `variant`), or else the first model of the modality and variant; ValueError naming what
        exists when there is none."""
        registry = sceneTools.load_registry(modelsFolder)
        if not modelId:
            return registry.find(modality, variant)
        card = registry.get(modelId)
        if card.modality != normalize_modality(modality):
            raise ValueError(f"model {card.id!r} is a {card.modality} model, but the volume is {modality}: pick a {modality} model")
        return card

    def loadModel(self, modality: str, variant: str, modelsFolder: Optional[str] = None, modelId: Optional[str] = None):
        from MedGANDenoiseLib.registry import load_model

        return load_model(self.findModel(modality, variant, modelsFolder, modelId))

    def startRun(self, inputVolume, *, modality: str, variant: str = "unet", device: str = "auto", strength: float = 1.0,
                 ensemble: int = 1, batchSize: Optional[int] = None, sliceAxis: int = 0, modelsFolder: Optional[str] = None, denoisedVolume=None,
                 noiseVolume=None, skipNoise: bool = False, wait: bool = False, modelId: Optional[str] = None) -> DenoiseRun:
        """Start the MedGANDenoiseCLI module on inputVolume (returns at once unless wait) with the
        model modelId, or the first model of the modality and variant. The outputs are put into
        the scene by finishRun once the CLI node is no longer busy."""
        if inputVolume is None:
            raise ValueError("no input volume given")
        for output in (denoisedVolume, noiseVolume):
            if output is not None and output is inputVolume:
                raise ValueError("an output volume cannot be the input volume: pick another output or 'Create new volume'")
        if denoisedVolume is not None and denoisedVolume is noiseVolume and not skipNoise:
            raise ValueError("the denoised and the noise outputs are the same volume: pick two different volumes or 'Create new volume'")
        card = self.findModel(modality, variant, modelsFolder, modelId)  # a missing model fails here, before any process starts
        cliModule = getattr(slicer.modules, cli_protocol.CLI_MODULE_NAME.lower(), None)
        if cliModule is None:
            raise ValueError(f"the {cli_protocol.CLI_MODULE_NAME} module is not loaded: reinstall the extension (from a checkout, add "
                             "MedGANDenoise/MedGANDenoiseCLI to the additional module paths), or call process(..., inProcess=True)")
        exchange = sceneTools.create_exchange(slicer.mrmlScene, inputVolume, skip_noise=skipNoise, generation=self.sceneGeneration.value)
        parameters = sceneTools.cli_parameters(exchange, modality=card.modality, variant=card.variant, model_id=card.id, device=device,
                                               strength=strength, batch_size=batchSize, axis=sliceAxis, models_folder=modelsFolder,
                                               ensemble=ensemble)
        try:
            cliNode = slicer.cli.run(cliModule, None, parameters, wait_for_completion=wait, update_display=False)
        except Exception:
            sceneTools.remove_exchange(slicer.mrmlScene, exchange)
            raise
        return DenoiseRun(cliNode, exchange, denoisedVolume, noiseVolume, skipNoise, card.id)

    def cancelRun(self, run: DenoiseRun) -> None:
        """Stop the CLI process now (Slicer kills it; it writes no output file)."""
        run.cliNode.Cancel()

    def finishRun(self, run: DenoiseRun):
        """The outputs (sceneTools.DenoiseOutputs) of a run whose CLI node is no longer busy, or
        None when the scene was closed during the run. Raises DenoiseCancelled if it was
        cancelled and ValueError if it failed; either way the scene is left as it was."""
        from MedGANDenoiseLib.engine import DenoiseCancelled

        cliNode = run.cliNode
        try:
            status = cliNode.GetStatus()
            if status == cliNode.Cancelled:
                raise DenoiseCancelled("denoising was cancelled")
            if status != cliNode.Completed:
                lines = [line for line in (cliNode.GetErrorText() or "").splitlines() if line.strip()]
                raise ValueError(lines[-1] if lines else f"the {cli_protocol.CLI_MODULE_NAME} process ended with status {cliNode.GetStatusString()}")
            report = cli_protocol.decode_report(cliNode.GetParameterAsString(cli_protocol.REPORT_PARAMETER))
            self.lastReport = cli_protocol.format_report(report)
            outputs = sceneTools.finish_exchange(slicer.mrmlScene, run.exchange, report, generation=self.sceneGeneration.value,
                                                 denoised_node=run.denoisedVolume, noise_node=run.noiseVolume, skip_noise=run.skipNoise)
            if outputs is not None:
                self.lastReport += "\n" + outputs.summary()
            return outputs
        finally:
            sceneTools.remove_exchange(slicer.mrmlScene, run.exchange)
            if slicer.mrmlScene.IsNodePresent(cliNode):
                slicer.mrmlScene.RemoveNode(cliNode)

    def process(self, inputVolume, modality: str = "auto", variant: str = "unet", device: str = "auto", strength: float = 1.0,
                denoisedVolume=None, noiseVolume=None, progressCallback: Optional[Callable[[int, int], None]] = None,
                cancelEvent: Optional[threading.Event] = None, batchSize: Optional[int] = None, sliceAxis: int = 0,
                modelsFolder: Optional[str] = None, skipNoise: bool = False, inProcess: bool = False, modelId: Optional[str] = None,
                ensemble: int = 1):
        """Denoise inputVolume (blocking) and return (denoisedVolume, noiseVolume).

        Runs the MedGANDenoiseCLI module in a separate process (inProcess=True: the engine in
        Slicer's process) with the model modelId (e.g. "ct-dncnn-w48"; default: the
        first model of the modality and variant; a modelId brings its own variant). progressCallback(percent, 100) follows the run; setting cancelEvent
        (a threading.Event) stops it: DenoiseCancelled is raised and the scene is left as it
        was. ensemble 2, 4 or 8 averages the model's outputs over that many flips and rotations of
        each slice (N times the time). Errors are ValueErrors with a message saying what to do.
        """
        if inputVolume is None:
            raise ValueError("no input volume given")
        self.ensureTorch()
        resolved, reason = self.resolveModality(inputVolume, modality)
        logging.info(f"MedGANDenoise: modality {resolved} ({reason})")
        if inProcess:
            model = self.loadModel(resolved, variant, modelsFolder, modelId)
            outputs = sceneTools.denoise_volume_node(
                slicer.mrmlScene, inputVolume, model, modality=resolved, denoised_node=denoisedVolume, noise_node=noiseVolume,
                skip_noise=skipNoise, axis=sliceAxis, batch_size=batchSize, device=device, strength=strength, ensemble=ensemble,
                progress=progressCallback, should_cancel=cancelEvent.is_set if cancelEvent is not None else None)
        else:
            blocking = progressCallback is None and cancelEvent is None  # slicer.cli.runSync
            run = self.startRun(inputVolume, modality=resolved, variant=variant, modelId=modelId, device=device, strength=strength,
                                ensemble=ensemble, batchSize=batchSize,
                                sliceAxis=sliceAxis, modelsFolder=modelsFolder, denoisedVolume=denoisedVolume, noiseVolume=noiseVolume,
                                skipNoise=skipNoise, wait=blocking)
            reported = None
            while run.cliNode.IsBusy():
                slicer.app.processEvents()
                if progressCallback is not None and run.cliNode.GetProgress() != reported:  # not 20 calls a second
                    reported = run.cliNode.GetProgress()
                    progressCallback(reported, 100)
                if cancelEvent is not None and cancelEvent.is_set() and run.cliNode.GetStatus() != run.cliNode.Cancelling:
                    self.cancelRun(run)
                time.sleep(0.05)
            outputs = self.finishRun(run)
            if outputs is None:
                raise ValueError("the scene was closed during the run: the results were discarded")
        logging.info(outputs.summary())
        return outputs.denoised_node, outputs.noise_node


class MedGANDenoiseTest(ScriptedLoadableModuleTest):
    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_denoise_sample_ct()

    def test_denoise_sample_ct(self) -> None:
        """Through the CLI process (the panel's path): geometry kept, input untouched, noise reduced."""
        logic = MedGANDenoiseLogic()
        if not logic.torchInstalled():
            self.skipTest("PyTorch is not installed (install the PyTorch extension)")
        try:
            sceneTools.load_registry().find("CT", "unet")
        except ValueError as error:
            self.skipTest(str(error))
        import numpy as np
        import SampleData

        from MedGANDenoiseLib.engine import estimate_noise_sigma

        inputVolume = SampleData.downloadSample("CTChest")
        before = slicer.util.arrayFromVolume(inputVolume).copy()
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        denoised, noise = logic.process(inputVolume, modality="CT", variant="unet")
        after = slicer.util.arrayFromVolume(denoised)
        self.assertEqual(after.shape, before.shape)
        for a, b in zip(denoised.GetSpacing() + denoised.GetOrigin(), inputVolume.GetSpacing() + inputVolume.GetOrigin()):
            self.assertAlmostEqual(a, b, places=4)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputVolume), before)
        self.assertLess(estimate_noise_sigma(after), estimate_noise_sigma(before))
        np.testing.assert_allclose(after + slicer.util.arrayFromVolume(noise), before, atol=1e-2)
        self.assertIsNone(slicer.mrmlScene.GetFirstNodeByName("MedGANDenoise exchange denoised"))
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.delayDisplay("MedGANDenoise self-test passed")
