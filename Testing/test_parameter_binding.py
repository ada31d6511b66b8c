"""The panel's parameter binding follows the rules of Slicer's parameterNodeWrapper.

`connectGui` binds every widget that has a `SlicerParameterName` property to the parameter node
field of that name through the first GUI connector whose `canRepresent(widget, datatype)` is
true, and raises when none is, or when the connector refuses (a combo box bound to a plain `str`
without `Choice`, an unbounded number on a slider). It raises inside `setup()`, so the panel
never opens. Slicer's Qt is not importable here: MedGANDenoise.py is read with `ast` and the
.ui with ElementTree, and the rules below are those of Slicer's own source.
"""

from __future__ import annotations

import ast
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "MedGANDenoise" / "MedGANDenoise.py"
UI = ROOT / "MedGANDenoise" / "Resources" / "UI" / "MedGANDenoise.ui"

# Widget class -> value types a GUI connector accepts, from the canRepresent methods in
# Base/Python/slicer/parameterNodeWrapper/guiConnectors.py of Slicer v5.8.0 (the module must
# also run there; v5.10.0 adds ctkCheckablePushButton -> bool, ctkColorPickerButton -> QColor
# and int on the double spin boxes/sliders). The check is on the exact class (type(widget) in ...).
# "node": a vtkMRMLNode subclass or a Union/Optional of them; "enum": an enum.Enum subclass.
CONNECTORS_V5_8 = {
    "QCheckBox": {"bool"}, "ctkCheckBox": {"bool"},  # QCheckBoxToBoolConnector
    "QPushButton": {"bool"},  # QCheckablePushButtonToBoolConnector
    "QSlider": {"int"}, "QSpinBox": {"int"},  # QSliderOrSpinBoxToIntConnector
    **{cls: {"float"} for cls in ("QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider",
                                  "ctkDoubleSpinBox", "qMRMLSpinBox")},  # QDoubleSpinBoxCtkSliderWidgetToFloatConnector
    "QComboBox": {"int", "float", "str", "bool", "enum"},  # QComboBoxToStringableConnector (needs Choice), QComboBoxToEnumConnector
    "ctkComboBox": {"int", "float", "str", "bool", "enum"},
    "QLineEdit": {"str"}, "QLabel": {"str"}, "QTextEdit": {"str"},  # QLineEdit/QLabel/QTextEditPlainText ToStr
    **{cls: {"FloatRange"} for cls in ("ctkRangeWidget", "ctkDoubleRangeSlider", "qMRMLRangeWidget")},
    "ctkPathLineEdit": {"Path"}, "ctkDirectoryButton": {"Path"},  # ...ToPathConnector (pathlib types)
    "qMRMLNodeComboBox": {"node"},  # qMRMLNodeComboBoxToNodeConnector
}
NEEDS_CHOICE = {"QComboBox", "ctkComboBox"}  # for int, float, str, bool: "requires the Choice annotation"
NEEDS_BOUNDS = {"ctkSliderWidget", "qMRMLSliderWidget", "QSlider"}  # "where the float types is unbounded" / unbounded QSlider
PATH_TYPES = {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"}
COMBO_FILLING_CALLS = {"addItem", "addItems", "clear", "insertItem", "insertItems", "removeItem"}


def field_kind(annotation: ast.expr) -> tuple[str, list[str]]:
    """(kind, names of validator annotations) of a parameter node field's annotation."""
    validators: list[str] = []
    node = annotation
    while isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("Annotated", "typing.Annotated", "Optional", "typing.Optional"):
        elements = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if ast.unparse(node.value).endswith("Annotated"):
            validators += [ast.unparse(e.func) if isinstance(e, ast.Call) else ast.unparse(e) for e in elements[1:]]
        node = elements[0]
    name = ast.unparse(node).split(".")[-1]
    if name.startswith("vtkMRML"):
        return "node", validators
    if name in PATH_TYPES:
        return "Path", validators
    return name, validators


def parameter_fields(tree: ast.Module) -> dict[str, tuple[str, list[str], ast.AnnAssign]]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any("parameterNodeWrapper" in ast.unparse(d) for d in node.decorator_list):
            return {s.target.id: (*field_kind(s.annotation), s) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in the module")


def bound_widgets(ui_text: str) -> dict[str, tuple[str, str]]:
    """parameter name -> (widget name, widget class) for every widget with SlicerParameterName."""
    bound = {}
    for widget in ET.fromstring(ui_text).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound["".join(prop.itertext()).strip()] = (widget.get("name"), widget.get("class"))
    return bound


def widgets_filled_by_code(tree: ast.Module) -> set[str]:
    """Names X of self.ui.X whose items the code sets (addItem(s)/clear/... on self.ui.X, or
    self.ui.X passed to a helper that calls them on that argument)."""
    fillers: dict[str, set[int]] = {}  # helper name -> positions (in a call) of the arguments it fills
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef):
            names = [a.arg for a in function.args.args]
            offset = 1 if names[:1] == ["self"] else 0
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COMBO_FILLING_CALLS \
                        and isinstance(node.func.value, ast.Name) and node.func.value.id in names:
                    fillers.setdefault(function.name, set()).add(names.index(node.func.value.id) - offset)
    filled = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        targets = [node.func.value] if node.func.attr in COMBO_FILLING_CALLS else \
            [node.args[i] for i in fillers.get(node.func.attr, ()) if 0 <= i < len(node.args)]
        filled |= {t.attr for t in targets if isinstance(t, ast.Attribute) and ast.unparse(t).startswith("self.ui.")}
    return filled


def binding_problems(source_text: str, ui_text: str) -> list[str]:
    """Everything Slicer's connectGui would refuse, or bind wrongly, for this module and .ui."""
    tree = ast.parse(source_text)
    fields = parameter_fields(tree)
    filled = widgets_filled_by_code(tree)
    problems = []
    for parameter, (widget, cls) in bound_widgets(ui_text).items():
        if parameter not in fields:
            problems.append(f"{widget} is bound to '{parameter}', which the parameter node lacks")
            continue
        kind, validators, _ = fields[parameter]
        if kind not in CONNECTORS_V5_8.get(cls, set()):
            problems.append(f"{widget}: Slicer has no GUI connector from a {cls} to {kind} ('{parameter}')")
            continue
        if cls in NEEDS_CHOICE and kind in ("int", "float", "str", "bool") and "Choice" not in validators:
            problems.append(f"{widget}: a {cls} bound to {kind} '{parameter}' needs Choice (QComboBoxToStringableConnector raises)")
        if cls in NEEDS_BOUNDS and not ({"WithinRange"} & set(validators) or {"Minimum", "Maximum"} <= set(validators)):
            problems.append(f"{widget}: a {cls} bound to '{parameter}' needs WithinRange")
        if widget in filled:
            problems.append(f"{widget} is bound to '{parameter}' but the code fills its items: bound lists must be fixed (Choice)")
    return problems


def test_the_modules_binding_follows_slicers_rules():
    assert binding_problems(SOURCE.read_text(), UI.read_text()) == []


def test_every_bound_name_exists_on_both_sides_and_runtime_lists_stay_unbound():
    tree = ast.parse(SOURCE.read_text())
    fields = parameter_fields(tree)
    bound = bound_widgets(UI.read_text())
    assert set(bound) <= set(fields)
    # fields without a widget are kept in code on purpose: only the run-time lists
    assert set(fields) - set(bound) == {"variant", "modelId", "device"}
    names = {widget for widget, _ in bound.values()}
    assert not {"variantComboBox", "modelComboBox", "deviceComboBox"} & names
    assert {"variantComboBox", "modelComboBox", "deviceComboBox"} <= widgets_filled_by_code(tree)
    for parameter in ("modality", "sliceAxis", "ensemble"):
        kind, validators, _ = fields[parameter]
        assert kind == "str" and "Choice" in validators


def test_choice_defaults_are_among_the_choices():
    """A default outside Choice fails validation when the parameter node is first written."""
    import sys

    sys.path.insert(0, str(ROOT / "MedGANDenoise"))
    from MedGANDenoiseLib.cli_protocol import ENSEMBLE_CHOICES, MODALITY_CHOICES, SLICE_AXES
    from MedGANDenoiseLib.engine import ENSEMBLE_SIZES

    fields = parameter_fields(ast.parse(SOURCE.read_text()))
    choices = {"modality": MODALITY_CHOICES, "sliceAxis": tuple(SLICE_AXES), "ensemble": tuple(ENSEMBLE_CHOICES)}
    for parameter, allowed in choices.items():
        statement = fields[parameter][2]
        assert ast.unparse(statement.annotation).count("Choice(list(") == 1
        assert ast.literal_eval(statement.value) in allowed
    assert ENSEMBLE_CHOICES[ast.literal_eval(fields["ensemble"][2].value)] == 1, "the panel starts with the ensemble off"
    assert set(ENSEMBLE_CHOICES.values()) <= set(ENSEMBLE_SIZES)


OLD_STYLE_SOURCE = '''
@parameterNodeWrapper
class P:
    inputVolume: vtkMRMLScalarVolumeNode
    modality: str = "Auto"
    strength: float = 1.0
    notes: str = ""

class W:
    def setup(self):
        self.ui.modalityComboBox.addItems(["Auto", "CT"])
'''
OLD_STYLE_UI = '''<ui><widget class="qMRMLWidget" name="W">
<widget class="QComboBox" name="modalityComboBox"><property name="SlicerParameterName"><string>modality</string></property></widget>
<widget class="ctkSliderWidget" name="strengthSlider"><property name="SlicerParameterName"><string>strength</string></property></widget>
<widget class="QPlainTextEdit" name="notesEdit"><property name="SlicerParameterName"><string>notes</string></property></widget>
<widget class="QSpinBox" name="batchSpinBox"><property name="SlicerParameterName"><string>batchSize</string></property></widget>
<widget class="qMRMLNodeComboBox" name="inputSelector"><property name="SlicerParameterName"><string>inputVolume</string></property></widget>
</widget></ui>'''


def test_the_checker_flags_each_kind_of_refused_binding():
    problems = "\n".join(binding_problems(OLD_STYLE_SOURCE, OLD_STYLE_UI))
    assert "modalityComboBox: a QComboBox bound to str 'modality' needs Choice" in problems
    assert "modalityComboBox is bound to 'modality' but the code fills its items" in problems
    assert "strengthSlider: a ctkSliderWidget bound to 'strength' needs WithinRange" in problems
    assert "no GUI connector from a QPlainTextEdit to str" in problems
    assert "bound to 'batchSize', which the parameter node lacks" in problems
    assert "inputSelector" not in problems


def test_the_checker_refuses_the_binding_of_the_previous_release():
    """The module and .ui of commit c3cbe49 (before issue 9) raised in connectGui inside Slicer."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"c3cbe49:{path}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    try:
        source, ui = show("MedGANDenoise/MedGANDenoise.py"), show("MedGANDenoise/Resources/UI/MedGANDenoise.ui")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git history with commit c3cbe49 is not available")
    problems = binding_problems(source, ui)
    for widget in ("modalityComboBox", "variantComboBox", "deviceComboBox", "sliceAxisComboBox"):
        assert any(p.startswith(f"{widget}: a QComboBox bound to str") for p in problems), widget


# --- the GUI tag: connectGui/disconnectGui across exit() and enter() ------------------------


def import_module_with_stubs(monkeypatch, qt=None):
    """MedGANDenoise.py imported with the Qt-only parts of Slicer stubbed (slicer-core gives the
    MRML classes and slicer.util.VTKObservationMixin)."""
    import importlib.util
    import sys
    import types

    stubs = {
        "qt": qt if qt is not None else types.ModuleType("qt"),
        "slicer.parameterNodeWrapper": types.ModuleType("slicer.parameterNodeWrapper"),
        "slicer.ScriptedLoadableModule": types.ModuleType("slicer.ScriptedLoadableModule"),
    }
    wrapper = stubs["slicer.parameterNodeWrapper"]
    wrapper.Choice = wrapper.WithinRange = lambda *args: args
    wrapper.parameterNodeWrapper = lambda cls: cls
    scripted = stubs["slicer.ScriptedLoadableModule"]
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest", "ScriptedLoadableModuleWidget"):
        setattr(scripted, name, type(name, (), {}))
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("MedGANDenoise_under_test", SOURCE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class FakeParameterNode:
    """The part of Slicer's parameterNodeWrapper (wrapper.py) the widget's tag handling meets:
    connectGui allots self._nextParameterGUIsTag and keeps the connection in self._parameterGUIs;
    it returns the tag since v5.10.0 and None in v5.8 (Slicer commit b5a65a49a0)."""

    def __init__(self, returnsTag: bool):
        self.returnsTag, self._parameterGUIs, self._nextParameterGUIsTag = returnsTag, {}, 0

    def connectGui(self, gui):
        tag = self._nextParameterGUIsTag
        self._nextParameterGUIsTag += 1
        self._parameterGUIs[tag] = gui
        return tag if self.returnsTag else None

    def disconnectGui(self, tag):
        self._parameterGUIs.pop(tag, None)

    def AddObserver(self, event, method, priority=0.0):
        return 1

    def RemoveObserver(self, tag):
        pass


@pytest.mark.parametrize("returnsTag", [False, True], ids=["Slicer 5.8 (connectGui returns None)", "Slicer 5.10"])
def test_exit_and_scene_close_disconnect_the_gui_in_every_slicer_version(monkeypatch, returnsTag):
    """A connection left behind keeps old Choice connectors on the combo boxes: when the next
    connectGui refills them, the old ones write choices[-1] and then choices[0] into the parameter
    node, so the user's modality and slice axis went back to the defaults at every enter()."""
    module = import_module_with_stubs(monkeypatch)
    widget = object.__new__(module.MedGANDenoiseWidget)
    module.VTKObservationMixin.__init__(widget)
    widget._parameterNode, widget._parameterNodeGuiTag, widget._run, widget.ui = None, None, None, object()
    widget.updateButton = lambda *args: None
    node = FakeParameterNode(returnsTag)
    for _ in range(3):  # setup()/enter(), then exit()
        widget.setParameterNode(node)
        assert len(node._parameterGUIs) == 1
        widget.exit()
        assert node._parameterGUIs == {}
    widget.setParameterNode(node)
    widget.setParameterNode(None)  # scene StartCloseEvent
    assert node._parameterGUIs == {}


def test_a_finished_run_is_taken_out_of_the_scene_after_the_cli_nodes_event(monkeypatch):
    """finishRun removes the CLI node from the scene. Done inside the node's ModifiedEvent, the node
    could be deleted while vtkMRMLCommandLineModuleNode::Modified() still runs (it invokes
    StatusModifiedEvent next, and when Completed comes from the CLI logic's RequestProcessedEvent
    handler nothing else holds the node), so the widget finishes from a zero-delay timer."""
    import types

    import slicer
    import vtk

    timers = []
    qt = types.ModuleType("qt")
    qt.QTimer = types.SimpleNamespace(singleShot=lambda msec, callback: timers.append(callback))
    module = import_module_with_stubs(monkeypatch, qt)
    scene = slicer.vtkMRMLScene()
    cliNode = scene.AddNode(slicer.vtkMRMLCommandLineModuleNode())
    finished = []

    class Logic:
        lastReport = ""

        def finishRun(self, run):
            finished.append(scene.IsNodePresent(run.cliNode))
            scene.RemoveNode(run.cliNode)

    widget = object.__new__(module.MedGANDenoiseWidget)
    module.VTKObservationMixin.__init__(widget)
    text = types.SimpleNamespace(setPlainText=lambda text: None, appendPlainText=lambda text: None)
    widget.ui = types.SimpleNamespace(progressBar=types.SimpleNamespace(setValue=lambda value: None, hide=lambda: None),
                                      statusLabel=types.SimpleNamespace(text=""), detailsTextEdit=text)
    widget.logic, widget._parameterNode, widget.updateButton = Logic(), None, lambda *args: None
    widget._run = module.DenoiseRun(cliNode, None, None, None, False, "ct-unet-w32")
    widget.addObserver(cliNode, vtk.vtkCommand.ModifiedEvent, widget.onCliNodeModified)

    cliNode.SetStatus(cliNode.Running)  # progress, still busy: nothing to finish
    assert not timers and not finished
    cliNode.SetStatus(cliNode.Completed)  # Modified() -> the widget's observer
    assert not finished and len(timers) == 1, "finishRun ran inside the CLI node's event"
    assert not widget.hasObserver(cliNode, vtk.vtkCommand.ModifiedEvent, widget.onCliNodeModified)
    timers.pop()()
    assert finished == [True] and widget._run is None
    assert "scene was closed" in widget.ui.statusLabel.text  # Logic.finishRun returned None


class FakeComboBox:
    """The part of QComboBox the widget's list handling meets: items with data and tooltips."""

    def __init__(self, texts=()):
        self.items, self.currentIndex, self.tooltips = [(t, None) for t in texts], 0, {}

    @property
    def count(self):
        return len(self.items)

    @property
    def currentText(self):
        return self.items[self.currentIndex][0] if self.items else ""

    def blockSignals(self, blocked):
        return False

    def clear(self):
        self.items, self.currentIndex = [], 0

    def addItem(self, text, data=None):
        self.items.append((text, data))

    def setCurrentIndex(self, index):
        self.currentIndex = index

    def itemData(self, index, role=None):
        return self.items[index][1]

    def setItemData(self, index, value, role):
        self.tooltips[index] = value


def test_the_model_list_follows_modality_and_variant_and_reaches_the_run(monkeypatch, tmp_path):
    """The panel lists every model of the chosen modality and variant, the default first: a CT
    U-Net of the user's folder (which is read first) and the shipped ct-unet-w32; the choice is
    kept while it is listed, survives a detour through another modality, and Logic.findModel runs it."""
    import types

    from conftest import write_tiny_model

    folder = write_tiny_model(tmp_path / "models", "tiny-mr", "MR")
    write_tiny_model(folder, "my-ct", "CT")
    qt = types.ModuleType("qt")
    qt.Qt = types.SimpleNamespace(ToolTipRole=3)
    module = import_module_with_stubs(monkeypatch, qt)
    widget = object.__new__(module.MedGANDenoiseWidget)
    widget.logic = object.__new__(module.MedGANDenoiseLogic)
    widget._parameterNode = types.SimpleNamespace(variant="unet", modelId="")
    widget.ui = types.SimpleNamespace(
        inputVolumeSelector=types.SimpleNamespace(currentNode=lambda: None),
        modalityComboBox=types.SimpleNamespace(currentText="CT"),
        variantComboBox=FakeComboBox(["unet"]), modelComboBox=FakeComboBox(),
        modelsFolderPathLineEdit=types.SimpleNamespace(currentPath=str(folder)))
    widget.onVariantChanged()
    assert [data for _, data in widget.ui.modelComboBox.items] == ["my-ct", "ct-unet-w32"]
    assert widget.ui.modelComboBox.items[0][0] == "my-ct (default)"
    assert "width 32" in widget.ui.modelComboBox.tooltips[1]
    assert widget.currentModelId() == "my-ct" and widget._parameterNode.modelId == ""  # nothing picked yet
    widget.ui.modelComboBox.setCurrentIndex(1)  # the user picks the shipped model
    widget.onModelChanged()
    assert widget._parameterNode.modelId == widget.currentModelId() == "ct-unet-w32"
    widget.onVariantChanged()  # e.g. the input volume changed: the choice stays
    assert widget.currentModelId() == "ct-unet-w32"
    card = widget.logic.findModel("CT", "unet", str(folder), widget.currentModelId())
    assert (card.id, card.architecture["predictor"]["base_width"]) == ("ct-unet-w32", 32)
    with pytest.raises(ValueError, match="is a CT model, but the volume is MR"):
        widget.logic.findModel("MR", "unet", str(folder), "ct-unet-w32")
    widget.ui.modalityComboBox.currentText = "MR"  # the user's MR model joins the shipped one
    widget.onVariantChanged()
    assert [data for _, data in widget.ui.modelComboBox.items] == ["tiny-mr", "mr-unet-w16"]
    assert widget.currentModelId() == "tiny-mr" and widget._parameterNode.modelId == "ct-unet-w32"
    widget.ui.modalityComboBox.currentText = "CT"  # back from the detour: the user's pick again
    widget.onVariantChanged()
    assert widget.currentModelId() == "ct-unet-w32"
    widget.ui.modalityComboBox.currentText = "PET"
    widget.ui.variantComboBox = FakeComboBox()  # no variant: no model, nothing to run
    widget.onVariantChanged()
    assert widget.ui.modelComboBox.count == 0 and widget.currentModelId() == ""
    assert widget._parameterNode.modelId == "ct-unet-w32"


def test_the_self_ensemble_is_forwarded_on_every_path_of_the_module():
    """Slicer's Qt cannot run here: read the module's calls. The panel passes the bound choice to
    startRun, startRun hands it to the CLI's parameters, process() to both of its paths."""
    tree = ast.parse(SOURCE.read_text())
    functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}

    def keyword(function: str, callee: str) -> str:
        calls = [c for c in ast.walk(functions[function]) if isinstance(c, ast.Call) and ast.unparse(c.func).endswith(callee)]
        assert calls, f"{function} does not call {callee}"
        values = {ast.unparse(k.value) for c in calls for k in c.keywords if k.arg == "ensemble"}
        assert len(values) == 1 and all(any(k.arg == "ensemble" for k in c.keywords) for c in calls), (function, callee, values)
        return values.pop()

    assert keyword("onApplyButton", "startRun") == "ENSEMBLE_CHOICES[p.ensemble]"
    assert keyword("startRun", "cli_parameters") == "ensemble"
    assert keyword("process", "startRun") == "ensemble"
    assert keyword("process", "denoise_volume_node") == "ensemble"
