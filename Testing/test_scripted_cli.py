"""The scripted CLI (MedGANDenoiseCLI) and the Logic's file exchange with it, without a Slicer application.

The CLI runs as a plain subprocess of the project's Python on real NRRD files with the shipped
model; Slicer's part (write the input node to a file, build the command line from the XML,
read the output files and the return-parameter file back into nodes) is done here with the
real MRML library (slicer-core), the way vtkSlicerCLIModuleLogic does it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from MedGANDenoiseLib import cli_protocol
from MedGANDenoiseLib import scene as mrml
from MedGANDenoiseLib.engine import ENSEMBLE_SIZES, denoise_volume
from MedGANDenoiseLib.registry import ModelRegistry, load_model
from mrml_volumes import OBLIQUE_IJK_TO_RAS, add_volume_node

ROOT = Path(__file__).resolve().parents[1]
CLI_DIR = ROOT / "MedGANDenoise" / "MedGANDenoiseCLI"
SCRIPT = CLI_DIR / "MedGANDenoiseCLI.py"
XML = CLI_DIR / "MedGANDenoiseCLI.xml"
MODEL_ID = "ct-dncnn-w48"
SPACING, ORIGIN = (0.7, 0.8, 2.5), (-120.0, 35.5, 12.0)
DIRECTION = (0.866, -0.5, 0.0, 0.5, 0.866, 0.0, 0.0, 0.0, 1.0)
# The element names ModuleDescriptionParser handles (SlicerExecutionModel,
# ModuleDescriptionParser/ModuleDescriptionParser.cxx, commit 6e16762): others are ignored silently.
PARSER_ELEMENTS = {
    "executable", "category", "index", "title", "description", "version", "documentation-url", "license", "contributor",
    "acknowledgements", "location", "parameters", "label", "name", "flag", "longflag", "default", "channel", "constraints",
    "minimum", "maximum", "step", "element", "reference", "integer", "float", "double", "boolean", "string", "integer-vector",
    "float-vector", "double-vector", "string-vector", "integer-enumeration", "float-enumeration", "double-enumeration",
    "string-enumeration", "file", "directory", "image", "geometry", "transform", "point", "pointfile", "region", "table", "measurement",
}
SIMPLE_TAGS = {"integer", "float", "double", "boolean", "string", "integer-vector", "float-vector", "double-vector",
               "string-vector", "integer-enumeration", "float-enumeration", "double-enumeration", "string-enumeration",
               "file", "directory", "image", "geometry", "transform", "point", "pointfile", "region", "table", "measurement"}


def ct_like(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Air around a noisy soft-tissue disc with bone, int16 Hounsfield units."""
    k, j, i = shape
    y, x = np.mgrid[-1:1:j * 1j, -1:1:i * 1j]
    body = np.where(np.hypot(x, y) < 0.8, 40.0, -1000.0)
    body[(np.hypot(x, y) > 0.7) & (np.hypot(x, y) < 0.8)] = 700.0
    noise = np.random.default_rng(seed).normal(0, 30, shape)
    return (body[np.newaxis] + noise).astype(np.int16)


def write_nrrd(path: Path, array: np.ndarray) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path), True)
    return path


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(*arguments: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, arguments)], capture_output=True, text=True,
                          timeout=timeout, env=environment())


# --- the XML descriptor -------------------------------------------------------------------


def test_xml_follows_slicers_module_description_format():
    root = ET.parse(XML).getroot()
    assert root.tag == "executable"
    unknown = {element.tag for element in root.iter()} - PARSER_ELEMENTS
    assert not unknown, f"elements Slicer's parser ignores: {unknown} (fileExtensions, reference, hidden are attributes)"
    for image in root.iter("image"):
        assert image.get("fileExtensions") == ".nrrd"  # the temporary files Slicer writes and reads back
    for tag in ("category", "title", "description", "version", "contributor"):
        assert (root.findtext(tag) or "").strip(), f"<{tag}> missing"
    assert root.findtext("category") == "Filtering.Denoising"
    groups = root.findall("parameters")
    assert groups
    names, indices, flags = [], [], []
    for group in groups:
        assert (group.findtext("label") or "").strip(), "every parameter group needs a <label>"
        for parameter in group:
            if parameter.tag in ("label", "description"):
                continue
            assert parameter.tag in SIMPLE_TAGS, parameter.tag
            name = parameter.findtext("name")
            assert name and name.isidentifier() and (parameter.findtext("label") or "").strip(), name
            names.append(name)
            index, flag, channel = parameter.findtext("index"), parameter.findtext("longflag"), parameter.findtext("channel")
            if parameter.tag == "image":
                assert channel in ("input", "output"), f"{name}: <image> needs <channel>input|output</channel>"
            if index is not None:
                indices.append(int(index))
            elif flag is not None:
                assert flag.strip() and not flag.startswith("-"), name
                flags.append(flag)
            else:  # neither index nor flag: only a return parameter (simple output)
                assert channel == "output" and parameter.tag == "string", f"{name} has neither <index> nor <longflag>"
            if parameter.tag.endswith("-enumeration"):
                assert parameter.findtext("default") in [e.text for e in parameter.findall("element")], name
    assert len(set(names)) == len(names) and len(set(flags)) == len(flags)
    assert sorted(indices) == list(range(len(indices)))  # index parameters are 0..n-1
    images = {p.findtext("name"): p.findtext("channel") for p in root.iter("image")}
    assert images == {"inputVolume": "input", "denoisedVolume": "output", "noiseVolume": "output"}
    assert cli_protocol.REPORT_PARAMETER in names
    ensemble = xml_parameters()["ensemble"]
    assert ensemble.tag == "integer-enumeration"
    assert [int(e.text) for e in ensemble.findall("element")] == list(ENSEMBLE_SIZES)
    assert {int(e.text) for e in ensemble.findall("element")} >= set(cli_protocol.ENSEMBLE_CHOICES.values())


def xml_parameters() -> dict[str, ET.Element]:
    return {p.findtext("name"): p for g in ET.parse(XML).getroot().findall("parameters") for p in g if p.findtext("name")}


def slicer_command_line(parameters: dict, files: dict[str, Path], return_file: Path) -> list[str]:
    """The argv vtkSlicerCLIModuleLogic builds: `--flag value` for flagged parameters with a
    non-empty value (node parameters replaced by their temporary files), then the index
    parameters in index order, plus --returnparameterfile when there are return parameters."""
    described = xml_parameters()
    flagged, positional = [], {}
    for name, value in parameters.items():
        element = described[name]  # a parameter the XML does not declare would be dropped by Slicer
        text = str(files[name]) if name in files else ("true" if value is True else "false" if value is False else str(value))
        if element.findtext("index") is not None:
            positional[int(element.findtext("index"))] = text
        elif text != "":
            flagged += [f"--{element.findtext('longflag')}", text]
    return flagged + ["--returnparameterfile", str(return_file)] + [positional[i] for i in sorted(positional)]


# --- the CLI as a process -----------------------------------------------------------------


def test_cli_denoises_nrrd_files_with_progress_and_the_inputs_geometry(tmp_path):
    array = ct_like((4, 64, 64))
    source = write_nrrd(tmp_path / "input.nrrd", array)
    report_file = tmp_path / "report.params"
    done = run_cli("--model", MODEL_ID, "--device", "cpu", "--noise", tmp_path / "noise.nrrd", "--returnparameterfile", report_file,
                   source, tmp_path / "denoised.nrrd")
    assert done.returncode == 0, done.stderr
    progress = cli_protocol.parse_progress(done.stdout)
    assert len(progress) == 5 and progress[-1] == 1.0  # one line before the first batch, then one per slice
    assert progress == sorted(progress)
    assert done.stdout.index("<filter-start>") < done.stdout.index("<filter-progress>") < done.stdout.index("<filter-end>")
    reference = sitk.ReadImage(str(source))
    images = {name: sitk.ReadImage(str(tmp_path / f"{name}.nrrd")) for name in ("denoised", "noise")}
    for image in images.values():
        assert image.GetSize() == reference.GetSize() == (64, 64, 4)
        np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-9)
        np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-9)
        np.testing.assert_allclose(image.GetDirection(), DIRECTION, atol=1e-4)
    denoised, noise = (sitk.GetArrayFromImage(images[n]) for n in ("denoised", "noise"))
    np.testing.assert_allclose(denoised + noise, array, atol=1e-2)
    report = cli_protocol.decode_report(cli_protocol.read_return_parameters(report_file)[cli_protocol.REPORT_PARAMETER])
    assert report["model_id"] == MODEL_ID and report["device"] == "cpu" and report["batch_size"] == 1
    assert report["shape"] == [4, 64, 64]
    assert report["sigma_after"] < report["sigma_before"]
    assert "Noise estimate" in cli_protocol.format_report(report)
    assert report["precision"] in ("fp32", "bf16") and f"Device: cpu ({report['precision']})" in cli_protocol.format_report(report)


def test_cli_killed_in_the_middle_leaves_no_output_file(tmp_path):
    source = write_nrrd(tmp_path / "input.nrrd", ct_like((48, 256, 256)))
    outputs = [tmp_path / "denoised.nrrd", tmp_path / "noise.nrrd"]
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--model", MODEL_ID, "--device", "cpu", "--noise", str(outputs[1]),
                                str(source), str(outputs[0])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment())
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            seen += cli_protocol.parse_progress(line)
            if seen and seen[-1] > 0:  # the first batch is done, 47 are to go
                break
        assert seen and 0 < seen[-1] < 0.5, f"no progress in the middle of the run: {seen}"
        process.send_signal(signal.SIGKILL)  # what cliNode.Cancel() does (itksysProcess_Kill)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not any(path.exists() for path in outputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nrrd"]  # no partial or temporary file either


def test_cli_failing_on_the_noise_output_leaves_no_denoised_file_either(tmp_path, monkeypatch, capsys):
    """Both outputs are staged before either is renamed into place: a failure (or a kill) while the
    noise volume is written must not leave a denoised volume without its noise."""
    sys.path.insert(0, str(CLI_DIR))
    try:
        import MedGANDenoiseCLI
    finally:
        sys.path.remove(str(CLI_DIR))
    from MedGANDenoiseLib import image_io

    stage_like, calls = image_io.stage_like, []

    def failing_on_the_second(array, reference, path):
        calls.append(Path(path).name)
        if len(calls) == 2:
            raise ValueError(f"writing {path} failed: disk full")
        return stage_like(array, reference, path)

    monkeypatch.setattr(image_io, "stage_like", failing_on_the_second)
    source = write_nrrd(tmp_path / "input.nrrd", ct_like((1, 32, 32)))
    status = MedGANDenoiseCLI.main(["--model", MODEL_ID, "--device", "cpu", "--noise", str(tmp_path / "noise.nrrd"),
                                    str(source), str(tmp_path / "denoised.nrrd")])
    assert status == 1 and calls == ["denoised.nrrd", "noise.nrrd"]
    assert "disk full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nrrd"]


def test_cli_errors_are_one_line_and_write_nothing(tmp_path):
    source = write_nrrd(tmp_path / "input.nrrd", ct_like((2, 32, 32)))
    done = run_cli("--modality", "XRAY", "--variant", "dncnn", "--device", "cpu", source, tmp_path / "denoised.nrrd")
    assert done.returncode == 1
    assert done.stderr.startswith("MedGANDenoise: error: no 'dncnn' model for XRAY") and done.stderr.count("\n") == 1
    assert not (tmp_path / "denoised.nrrd").exists()


def test_cli_without_torch_says_how_to_install_it(tmp_path):
    source = write_nrrd(tmp_path / "input.nrrd", ct_like((2, 32, 32)))
    blocked = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", blocked, str(SCRIPT), str(source), str(tmp_path / "d.nrrd")],
                          capture_output=True, text=True, timeout=120, env=environment())
    assert done.returncode == 1
    assert "PyTorch is not installed" in done.stderr and "'PyTorch' extension" in done.stderr
    assert not (tmp_path / "d.nrrd").exists()


@pytest.mark.parametrize("layout", ["installed", "multi-config build", "source"])
def test_cli_finds_the_helper_package_from_its_own_location(tmp_path, layout):
    sys.path.insert(0, str(CLI_DIR))
    try:
        import MedGANDenoiseCLI
    finally:
        sys.path.remove(str(CLI_DIR))
    if layout == "source":
        assert MedGANDenoiseCLI.find_helper_package(SCRIPT) == ROOT / "MedGANDenoise"
        return
    lib = tmp_path / "MedGANDenoise" / "lib" / "Slicer-5.8"
    cli = lib / "cli-modules" / ("Release" if layout == "multi-config build" else "")
    package = lib / "qt-scripted-modules" / "MedGANDenoiseLib"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    cli.mkdir(parents=True, exist_ok=True)
    shutil.copy(SCRIPT, cli / SCRIPT.name)
    before = list(sys.path)
    try:
        assert MedGANDenoiseCLI.find_helper_package(cli / SCRIPT.name) == lib / "qt-scripted-modules"
        assert sys.path[0] == str(lib / "qt-scripted-modules")
    finally:
        sys.path[:] = before
    with pytest.raises(RuntimeError, match="cannot find the MedGANDenoiseLib package"):
        MedGANDenoiseCLI.find_helper_package(tmp_path / "elsewhere" / "MedGANDenoiseCLI.py")


# --- the Logic's exchange with the CLI on real MRML -----------------------------------------


def make_volume(scene, name: str = "Head CT", shape=(4, 64, 64)):
    array = ct_like(shape, seed=1)
    node = add_volume_node(scene, array, name)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient"), "CT study")
    hierarchy.CreateItem(study, node)
    return node, array, study


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def run_like_slicer(scene, exchange: mrml.CliExchange, workdir: Path, **options) -> dict:
    """Slicer's side of a CLI run: input node -> file, CLI process, output files -> exchange nodes,
    return parameters -> report. Returns the report."""
    parameters = mrml.cli_parameters(exchange, **options)
    files = {"inputVolume": workdir / "input.nrrd", "denoisedVolume": workdir / "denoised.nrrd"}
    if "noiseVolume" in parameters:
        files["noiseVolume"] = workdir / "noise.nrrd"
    writer = slicer.vtkMRMLVolumeArchetypeStorageNode()
    writer.SetFileName(str(files["inputVolume"]))
    assert writer.WriteData(exchange.input_node)
    command = slicer_command_line(parameters, files, workdir / "return.params")
    done = run_cli(*command)
    assert done.returncode == 0, done.stderr
    for name, node in (("denoisedVolume", exchange.denoised), ("noiseVolume", exchange.noise)):
        if node is not None:  # vtkSlicerApplicationLogic::RequestReadFile: a storage node in the scene reads the file
            storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
            storage.SetFileName(str(files[name]))
            node.SetAndObserveStorageNodeID(storage.GetID())
            assert storage.ReadData(node)
    values = cli_protocol.read_return_parameters(workdir / "return.params")
    return cli_protocol.decode_report(values[cli_protocol.REPORT_PARAMETER])


def test_logic_exchange_places_updates_and_cleans_up(tmp_path):
    scene = slicer.vtkMRMLScene()
    node, array, study = make_volume(scene)
    generation = mrml.SceneGeneration(scene)
    before = node_ids(scene)
    exchange = mrml.create_exchange(scene, node, generation=generation.value)
    assert exchange.denoised.GetHideFromEditors() and exchange.noise.GetAttribute(mrml.EXCHANGE_ATTRIBUTE) == "noise"
    report = run_like_slicer(scene, exchange, tmp_path, modality="CT", model_id=MODEL_ID, device="cpu", axis=0)
    outputs = mrml.finish_exchange(scene, exchange, report, generation=generation.value)
    assert outputs is not None
    assert outputs.denoised_node.GetName() == "Head CT denoised" and outputs.noise_node.GetName() == "Head CT noise"
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for output in (outputs.denoised_node, outputs.noise_node):
        np.testing.assert_allclose(mrml.ijk_to_ras(output), OBLIQUE_IJK_TO_RAS, atol=1e-4)
        assert output.GetTransformNodeID() == node.GetTransformNodeID()
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(output)) == study
    np.testing.assert_allclose(mrml.volume_array(outputs.denoised_node) + mrml.volume_array(outputs.noise_node), array, atol=1e-2)
    assert outputs.denoised_node.GetDisplayNode().GetWindow() == pytest.approx(400)
    assert outputs.result.device == "cpu" and outputs.sigma_after < outputs.sigma_before
    assert outputs.result.precision == report["precision"] and isinstance(outputs.result.warnings, list)
    assert outputs.result.warnings == report["warnings"], "the CLI's warnings reach the panel's result"
    # nothing of the exchange is left: only the two outputs and their display nodes were added
    added = {scene.GetNodeByID(i) for i in node_ids(scene) - before}
    assert {n.GetID() for n in added if n.IsA("vtkMRMLScalarVolumeNode")} == {outputs.denoised_node.GetID(), outputs.noise_node.GetID()}
    assert not any(n.IsA("vtkMRMLStorageNode") for n in added)
    assert not any(scene.GetNthNode(i).GetAttribute(mrml.EXCHANGE_ATTRIBUTE) for i in range(scene.GetNumberOfNodes()))

    # a second run (strength 0.5) updates the same nodes
    count = scene.GetNumberOfNodes()
    again = mrml.create_exchange(scene, node, skip_noise=False, generation=generation.value)
    report = run_like_slicer(scene, again, tmp_path, modality="CT", model_id=MODEL_ID, device="cpu", strength=0.5)
    second = mrml.finish_exchange(scene, again, report, generation=generation.value, denoised_node=outputs.denoised_node,
                                  noise_node=outputs.noise_node)
    assert second.denoised_node is outputs.denoised_node and scene.GetNumberOfNodes() == count
    np.testing.assert_allclose(second.result.noise, 0.5 * outputs.result.noise, atol=0.05)

    # a self-ensemble run reaches the engine through the CLI and says so in the panel's details
    third = mrml.create_exchange(scene, node, generation=generation.value)
    report = run_like_slicer(scene, third, tmp_path, modality="CT", model_id=MODEL_ID, device="cpu", ensemble=4)
    assert report["ensemble"] == 4 and "Self-ensemble: mean over 4" in cli_protocol.format_report(report)
    ensembled = mrml.finish_exchange(scene, third, report, generation=generation.value)
    expected = denoise_volume(array, load_model(ModelRegistry.default().get(MODEL_ID)), "CT", device="cpu", ensemble=4)
    np.testing.assert_allclose(ensembled.result.denoised, expected.denoised, atol=0.05)
    assert np.abs(ensembled.result.denoised - outputs.result.denoised).max() > 0.05


def test_skip_noise_exchanges_only_the_denoised_volume(tmp_path):
    scene = slicer.vtkMRMLScene()
    node, array, _ = make_volume(scene)
    exchange = mrml.create_exchange(scene, node, skip_noise=True)
    assert exchange.noise is None
    assert "noiseVolume" not in mrml.cli_parameters(exchange, modality="CT")
    report = run_like_slicer(scene, exchange, tmp_path, modality="CT", model_id=MODEL_ID, device="cpu")
    assert not (tmp_path / "noise.nrrd").exists()
    outputs = mrml.finish_exchange(scene, exchange, report, skip_noise=True)
    assert outputs.noise_node is None and scene.GetFirstNodeByName("Head CT noise") is None
    np.testing.assert_allclose(outputs.result.noise, array - mrml.volume_array(outputs.denoised_node), atol=1e-3)


def test_a_scene_closed_during_the_run_gets_no_results(tmp_path):
    scene = slicer.vtkMRMLScene()
    node, _, _ = make_volume(scene)
    generation = mrml.SceneGeneration(scene)
    exchange = mrml.create_exchange(scene, node, generation=generation.value)
    report = run_like_slicer(scene, exchange, tmp_path, modality="CT", model_id=MODEL_ID, device="cpu")
    scene.Clear(0)  # File > Close Scene while the CLI finishes
    assert generation.value == exchange.generation + 2  # StartCloseEvent and EndCloseEvent
    fresh, _, _ = make_volume(scene)  # the user loads a volume of the same name into the new scene
    before = node_ids(scene)
    assert mrml.finish_exchange(scene, exchange, report, generation=generation.value) is None
    assert node_ids(scene) == before and scene.GetFirstNodeByName("Head CT denoised") is None
    generation.close()
    scene.Clear(0)
    assert generation.value == exchange.generation + 2  # no longer observing


def test_cancelled_or_failed_exchanges_leave_the_scene_as_it_was(tmp_path):
    scene = slicer.vtkMRMLScene()
    node, _, _ = make_volume(scene)
    before = node_ids(scene)
    exchange = mrml.create_exchange(scene, node)
    assert len(node_ids(scene) - before) == 2
    mrml.remove_exchange(scene, exchange)  # what finishRun does for a cancelled run
    assert node_ids(scene) == before
    # completed without output files (e.g. the read failed): a clear error, nothing added
    exchange = mrml.create_exchange(scene, node)
    with pytest.raises(ValueError, match="without a denoised volume"):
        mrml.finish_exchange(scene, exchange, {})
    assert node_ids(scene) == before
    # the same node as both outputs, or the input as an output, is refused before anything runs
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other")
    before = node_ids(scene)
    exchange = mrml.create_exchange(scene, node)
    report = run_like_slicer(scene, exchange, tmp_path, modality="CT", model_id=MODEL_ID, device="cpu")
    with pytest.raises(ValueError, match="same volume"):
        mrml.finish_exchange(scene, exchange, report, denoised_node=other, noise_node=other)
    assert node_ids(scene) == before and other.GetImageData() is None


def test_cli_parameters_are_declared_in_the_xml_with_valid_values():
    scene = slicer.vtkMRMLScene()
    node, _, _ = make_volume(scene)
    exchange = mrml.create_exchange(scene, node)
    parameters = mrml.cli_parameters(exchange, modality="CT", variant="unet", model_id=MODEL_ID, device="cuda:0", strength=0.3,
                                     batch_size=4, axis=2, models_folder="/tmp/models", ensemble=4)
    described = xml_parameters()
    assert set(parameters) <= set(described)
    for name, value in parameters.items():
        element = described[name]
        if element.tag.endswith("-enumeration"):
            assert str(value) in [e.text for e in element.findall("element")], name
        if element.tag == "image":
            assert value.IsA("vtkMRMLScalarVolumeNode"), name
    assert parameters["sliceAxis"] == "I" and parameters["batchSize"] == 4 and parameters["modelId"] == MODEL_ID
    assert parameters["ensemble"] == 4 and mrml.cli_parameters(exchange, modality="CT")["ensemble"] == 1
    assert mrml.cli_parameters(exchange, modality="CT")["batchSize"] == 0  # automatic
    with pytest.raises(ValueError, match="slice axis"):
        mrml.cli_parameters(exchange, modality="CT", axis=3)
    assert MODEL_ID in {c.id for c in ModelRegistry.default().models()}
