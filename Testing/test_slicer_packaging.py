"""The Slicer extension's files agree with each other: .ui, module code, parameter node, CMake, catalog.

MedGANDenoise.py needs Slicer's Qt, which these machines lack, so it is read with `ast`.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "MedGANDenoise"
UI = MODULE / "Resources" / "UI" / "MedGANDenoise.ui"
SOURCE = MODULE / "MedGANDenoise.py"


def ui_widgets() -> dict[str, tuple[str, dict[str, str]]]:
    """name -> (class, {dynamic property: value}) for every widget of the .ui."""
    widgets = {}
    for widget in ET.parse(UI).iter("widget"):
        properties = {p.get("name"): "".join(p.itertext()).strip() for p in widget.findall("property")}
        widgets[widget.get("name")] = (widget.get("class"), properties)
    return widgets


def module_tree() -> ast.Module:
    return ast.parse(SOURCE.read_text())


def ui_names_used_by_the_widget() -> set[str]:
    names = set()
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
            if isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
                names.add(node.attr)
    return names


def parameter_fields() -> dict[str, str]:
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and node.name == "MedGANDenoiseParameterNode":
            assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)
            return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no MedGANDenoiseParameterNode class")


EXPECTED_CLASSES = {
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "modalityComboBox": "QComboBox",
    "variantComboBox": "QComboBox",
    "modelComboBox": "QComboBox",
    "deviceComboBox": "QComboBox",
    "strengthSliderWidget": "ctkSliderWidget",
    "batchSizeSpinBox": "QSpinBox",
    "sliceAxisComboBox": "QComboBox",
    "modelsFolderPathLineEdit": "ctkPathLineEdit",
    "denoisedVolumeSelector": "qMRMLNodeComboBox",
    "noiseVolumeSelector": "qMRMLNodeComboBox",
    "skipNoiseCheckBox": "QCheckBox",
    "applyButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "advancedCollapsibleButton": "ctkCollapsibleButton",
    "detailsCollapsibleButton": "ctkCollapsibleButton",
    "detailsTextEdit": "QPlainTextEdit",
}


def test_every_widget_the_code_uses_exists_with_the_expected_class():
    widgets = ui_widgets()
    used = ui_names_used_by_the_widget()
    assert used, "the widget code refers to no self.ui.* names"
    missing = used - set(widgets)
    assert not missing, f"used in MedGANDenoise.py but absent from the .ui: {missing}"
    for name, cls in EXPECTED_CLASSES.items():
        assert widgets[name][0] == cls, f"{name} is a {widgets[name][0]}, expected {cls}"


def test_every_bound_widget_has_a_parameter():
    """Slicer's binding rules themselves are checked in test_parameter_binding.py."""
    fields = parameter_fields()
    bound = {props["SlicerParameterName"]: name for name, (_, props) in ui_widgets().items() if "SlicerParameterName" in props}
    assert set(bound) <= set(fields), f"bound to missing parameters: {set(bound) - set(fields)}"
    assert "vtkMRMLScalarVolumeNode" in fields["inputVolume"]
    assert "WithinRange(0.0, 1.0)" in fields["strength"]


def test_panel_layout_as_users_expect():
    widgets = ui_widgets()
    assert widgets["advancedCollapsibleButton"][1].get("collapsed") == "true"
    for selector in ("denoisedVolumeSelector", "noiseVolumeSelector"):
        assert widgets[selector][1].get("noneDisplay") == "Create new volume"
    assert "vtkMRMLScalarVolumeNode" in widgets["inputVolumeSelector"][1]["nodeTypes"]
    # the details/log area: collapsed by default, read-only
    assert widgets["detailsCollapsibleButton"][1].get("collapsed") == "true"
    assert widgets["detailsTextEdit"][1].get("readOnly") == "true"
    details = next(w for w in ET.parse(UI).iter("widget") if w.get("name") == "detailsCollapsibleButton")
    assert any(w.get("name") == "detailsTextEdit" for w in details.iter("widget"))


def test_module_classes_and_metadata():
    classes = {n.name: n for n in module_tree().body if isinstance(n, ast.ClassDef)}
    for name in ("MedGANDenoise", "MedGANDenoiseParameterNode", "MedGANDenoiseWidget", "MedGANDenoiseLogic", "MedGANDenoiseTest"):
        assert name in classes
    text = " ".join(SOURCE.read_text().split())
    assert 'self.parent.categories = ["Filtering.Denoising"]' in text
    assert "Content-Noise Complementary Learning" in text
    process = next(f for f in classes["MedGANDenoiseLogic"].body if isinstance(f, ast.FunctionDef) and f.name == "process")
    arguments = [a.arg for a in process.args.args]
    assert arguments[:9] == ["self", "inputVolume", "modality", "variant", "device", "strength", "denoisedVolume", "noiseVolume", "progressCallback"]
    # torch is never imported at module level: the module loads without it
    top_level_imports = [n for n in module_tree().body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not any("torch" in ast.unparse(n) for n in top_level_imports)


def cmake_list(text: str, variable: str) -> list[str]:
    body = re.search(rf"set\({variable}\s(.*?)\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "MedGANDenoise") for line in body.splitlines() if line.strip()]


def test_module_cmake_lists_every_file_of_the_module():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts = set(cmake_list(text, "MODULE_PYTHON_SCRIPTS"))
    on_disk = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts and "MedGANDenoiseCLI" not in p.parts}
    assert on_disk == scripts, f"missing from CMake: {on_disk - scripts}; listed but absent: {scripts - on_disk}"
    resources = set(cmake_list(text, "MODULE_PYTHON_RESOURCES"))
    resource_files = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert resource_files <= resources, f"resources missing from CMake: {resource_files - resources}"
    assert "${MODULE_MODEL_FILES}" in resources
    assert "MedGANDenoiseLib/models/*.pt" in text.replace("${MODULE_NAME}", "MedGANDenoise")
    assert "MedGANDenoiseLib/models/registry.json" in text.replace("${MODULE_NAME}", "MedGANDenoise")
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_scripted_cli_is_built_next_to_the_module():
    cli = MODULE / "MedGANDenoiseCLI"
    text = (cli / "CMakeLists.txt").read_text()
    assert "set(MODULE_NAME MedGANDenoiseCLI)" in text
    assert re.search(r"SlicerMacroBuildScriptedCLI\(\s*NAME \$\{MODULE_NAME\}\s*\)", text)
    # the macro installs <NAME>.py and <NAME>.xml; Slicer runs a .py CLI whose first line is a #! line
    assert (cli / "MedGANDenoiseCLI.py").read_text().startswith("#!/usr/bin/env python-real\n")
    assert ET.parse(cli / "MedGANDenoiseCLI.xml").getroot().tag == "executable"
    top = (ROOT / "CMakeLists.txt").read_text()
    assert top.index("add_subdirectory(MedGANDenoise)") < top.index("add_subdirectory(MedGANDenoise/MedGANDenoiseCLI)")


def test_extension_cmake_and_catalog_entry():
    text = (ROOT / "CMakeLists.txt").read_text()
    project = re.search(r"project\((\w+)\)", text).group(1)
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                     "EXTENSION_SCREENSHOTURLS", "EXTENSION_CATEGORY"):
        assert f"set({variable} " in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(MedGANDenoise)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text
    catalog = ROOT / f"{project}.json"
    entry = json.loads(catalog.read_text())
    assert entry["build_dependencies"] == ["PyTorch"] and entry["category"] == "Filtering"
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert not project.startswith("Slicer")
    assert (ROOT / "LICENSE").is_file()
    # the index wants the repository named Slicer<Extension>; homepage and picture URLs point into it
    match = re.fullmatch(rf"https://github\.com/([\w.-]+)/Slicer{project}\.git", entry["scm_url"])
    assert match, entry["scm_url"]
    organization = match.group(1)
    variables = dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', text))
    assert variables["EXTENSION_HOMEPAGE"] == f"https://github.com/{organization}/Slicer{project}"
    raw = f"https://raw.githubusercontent.com/{organization}/Slicer{project}/{entry['scm_revision']}/"
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in variables[variable].split():
            assert url.startswith(raw), url
            picture = ROOT / url[len(raw):]
            assert picture.is_file(), f"{variable} names {picture}, which does not exist"
            assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # contributors: "Name (Organization)", comma-separated
    for contributor in variables["EXTENSION_CONTRIBUTORS"].split(","):
        assert re.fullmatch(r"[^()]+ \([^()]+\)", contributor.strip()), contributor


def test_screenshot_is_a_small_real_picture():
    picture = ROOT / "Resources" / "Screenshots" / "MedGANDenoise.png"
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 300_000
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 600 and height >= 250


def test_icons_are_128_pixel_pngs():
    for icon in (MODULE / "Resources" / "Icons" / "MedGANDenoise.png", ROOT / "Resources" / "Icons" / "MedGANDenoise.png"):
        data = icon.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24]) == (128, 128)
