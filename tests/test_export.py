"""Export of a family's folds: one ONNX graph -> OpenVINO IR, parity with PyTorch, runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from birdclef import export
from birdclef.infer import InferError
from birdclef.export import (ExportedEnsemble, ExportedFamily, ExportError, FoldEnsemble, export_family,
                             load_fold_models, parity_windows)
from birdclef.calibration import calibrate
from birdclef.model import BirdClassifier, MelFrontend
from trained_models import BACKBONE, CLASSES, HIDDEN, SAMPLES, realistic_random_model, save_trained

EXPORTED_FOLDS = [0, 2]

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """PyTorch on one thread: on a busy 2-core machine its two OpenMP threads wait for each
    other and a 0.05 s forward pass can take 2.5 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """models/<family>/fold{0,1,2} with three different random models."""
    root = tmp_path_factory.mktemp("models")
    for fold in range(3):
        save_trained(realistic_random_model(fold), root / "eca" / f"fold{fold}", fold)
    return root


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "eca"
    info = export_family(trained, "eca", EXPORTED_FOLDS, out, SAMPLES)
    return out, info


def load_ensemble(trained: Path) -> FoldEnsemble:
    models, _ = load_fold_models(trained / "eca", EXPORTED_FOLDS)
    return FoldEnsemble(models).eval()


@pytest.fixture(scope="module")
def ensemble(trained) -> FoldEnsemble:
    """The exported folds, loaded back as PyTorch reference."""
    return load_ensemble(trained)


def reference(ensemble: FoldEnsemble, windows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ensemble(torch.from_numpy(windows)).numpy()


def shape_size(op) -> int:
    return int(np.prod(list(op.get_output_shape(0))))


def new_windows(batch: int, seed: int) -> np.ndarray:
    windows = parity_windows(batch, SAMPLES, seed=seed)
    windows[-1] *= 0.01  # a quiet window too: the front end normalises each window on its own
    return windows


def test_export_writes_the_files_and_metadata(exported):
    import onnx

    out, info = exported
    for name in ("model.onnx", "model.xml", "model.bin", "export.json"):
        assert (out / name).is_file(), name
    assert not [path for path in out.parent.iterdir() if path.name.endswith(".tmp")]  # no temporary folder left
    assert json.loads((out / "export.json").read_text()) == info
    assert info["family"] == "eca" and info["folds"] == EXPORTED_FOLDS and info["backbone"] == BACKBONE
    assert info["classes"] == CLASSES
    assert (info["sample_rate"], info["window_samples"]) == (32_000, SAMPLES)
    assert info["opset"] >= 18
    assert info["default_precision"] in ("f32", "bf16", "f16")
    assert info["spectrogram_tensor"] and info["frontend"]["n_mels"] == 128

    graph = onnx.load(str(out / "model.onnx")).graph
    assert [item.name for item in graph.input] == ["wave"]
    assert [item.name for item in graph.output] == ["probabilities"]
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # a symbolic batch size

    parity = info["parity"]
    assert parity["pytorch_fp32_rounding"] < 1e-4
    assert parity["onnxruntime"] <= 1e-4
    assert parity["openvino_f32_uncompressed"] <= 1e-4
    assert parity["openvino_f32"] <= export.PARITY_BOUNDS["openvino_f32"] + 1e-3
    assert parity["openvino_default"] < 0.5  # recorded, not bounded (bf16 on CPUs that have it)
    assert parity["openvino_default_precision"] == info["default_precision"]

    # learned weights in fp16, the front end's Fourier kernels and mel filterbank in f32
    assert info["frontend_constants_f32"] >= 2
    import openvino as ov

    constants = [op for op in ov.Core().read_model(str(out / "model.xml")).get_ordered_ops()
                 if op.get_type_name() == "Constant" and shape_size(op) > 1]
    f32 = [op for op in constants if op.get_output_element_type(0) == ov.Type.f32]
    f16 = [op for op in constants if op.get_output_element_type(0) == ov.Type.f16]
    assert len(f32) == info["frontend_constants_f32"] and len(f16) > 50
    from birdclef.model import MelFrontend

    n_fft = MelFrontend().n_fft  # the front end the trained models use
    bins = n_fft // 2 + 1  # the Fourier kernels: cos and sin of each bin, stacked
    assert max(f32, key=shape_size).get_output_shape(0) == [2 * bins, 1, n_fft]


def test_export_is_byte_identical_from_another_checkout(trained, exported, tmp_path):
    """The ONNX file must not depend on where the code lives, or every clone's `dvc repro`
    gives the export stage (and all after it) a new hash."""
    from conftest import REPO, python, run, tool_env

    out, _ = exported
    source = REPO / "src"
    other = tmp_path / "elsewhere" / "src"
    shutil.copytree(source, other, ignore=shutil.ignore_patterns("__pycache__"))
    again = tmp_path / "again" / "eca"
    script = (f"import birdclef; assert birdclef.__file__.startswith({str(other)!r}), birdclef.__file__; "
              f"from birdclef.export import export_family; "
              f"export_family({str(trained)!r}, 'eca', {EXPORTED_FOLDS}, {str(again)!r}, {SAMPLES})")
    run([python(), "-c", script], tmp_path, tool_env(PYTHONPATH=str(other)))
    data = (out / "model.onnx").read_bytes()
    assert str(source).encode() not in data
    assert (again / "model.onnx").read_bytes() == data
    assert (again / "model.xml").read_bytes() == (out / "model.xml").read_bytes()


@pytest.mark.parametrize("batch", [1, 7])
def test_runtimes_match_pytorch_on_new_batches(ensemble, exported, batch):
    import onnxruntime as ort

    out, _ = exported
    windows = new_windows(batch, seed=50 + batch)
    expected = reference(ensemble, windows)
    assert expected.shape == (batch, len(CLASSES))
    if batch > 1:
        assert expected.std() > 0.05  # spread out, so the comparison means something

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_probs,) = session.run(None, {"wave": windows})
    np.testing.assert_allclose(onnx_probs, expected, atol=1e-4, rtol=0)

    openvino_probs = ExportedFamily(out, threads=1, precision="f32")(windows)
    assert openvino_probs.shape == (batch, len(CLASSES))
    # fp16 weights: small nets stay well inside the export's bound (measured ~1e-3)
    np.testing.assert_allclose(openvino_probs, expected, atol=1e-2, rtol=0)


def test_fold_average_is_the_mean_of_the_models(trained):
    models, meta = load_fold_models(trained / "eca", [0, 1, 2])
    assert meta["classes"] == CLASSES and all(not model.training for model in models)
    wave = torch.from_numpy(new_windows(3, seed=9))
    with torch.no_grad():
        ensemble = FoldEnsemble(models).eval()(wave)
        single = torch.stack([model(wave).clip_probs for model in models])
    torch.testing.assert_close(ensemble, single.mean(dim=0), atol=1e-6, rtol=0)
    assert (single[0] - single[1]).abs().max() > 1e-3  # the folds really differ


def test_missing_fold_is_a_clear_error(trained, tmp_path):
    with pytest.raises(ExportError, match=r"fold5.*dvc repro train"):
        load_fold_models(trained / "eca", [0, 5])
    out = tmp_path / "export" / "eca"
    with pytest.raises(ExportError, match="fold5"):
        export_family(trained, "eca", [0, 5], out, SAMPLES)
    assert not out.exists()


def test_models_of_another_sample_rate_export_and_serve_at_that_rate(tmp_path):
    """``audio.sample_rate`` reaches the network: a fold trained at 22.05 kHz (an ablation of
    the seed's) is rebuilt with its own mel filterbank, and its export serves that rate."""
    from birdclef.infer import load_ensemble as load_families
    from birdclef.params import AudioParams

    rate, samples = 22_050, 110_250
    torch.manual_seed(0)
    model = BirdClassifier(BACKBONE, len(CLASSES), hidden=HIDDEN, frontend=MelFrontend(sample_rate=rate))
    model = calibrate(model, 12, samples, seed=7, batch=6)
    save_trained(model, tmp_path / "models" / "eca" / "fold0", 0, sample_rate=rate)
    info = export_family(tmp_path / "models", "eca", [0], tmp_path / "export" / "eca", samples)
    assert (info["sample_rate"], info["window_samples"]) == (rate, samples)

    windows = parity_windows(3, samples, rate, seed=8)
    at_32k = BirdClassifier(BACKBONE, len(CLASSES), hidden=HIDDEN)  # the same weights, the 32 kHz filterbank
    at_32k.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(windows)).clip_probs.numpy()
        misread = at_32k.eval()(torch.from_numpy(windows)).clip_probs.numpy()
    served = load_families(tmp_path / "export", ["eca"], {"eca": 1.0}, threads=1, precision="f32",
                           audio=AudioParams(rate, 5.0))
    np.testing.assert_allclose(served(windows), expected, atol=1e-2, rtol=0)
    assert np.abs(misread - expected).max() > 0.1
    with pytest.raises(InferError, match="22050 Hz, but params' audio gives 160000 at 32000 Hz"):
        load_families(tmp_path / "export", ["eca"], {"eca": 1.0}, audio=AudioParams(32_000, 5.0))


@pytest.mark.parametrize("damage, message", [
    (lambda fold: (fold / "meta.json").write_text("{not json"), r"meta.json: damaged"),
    (lambda fold: (fold / "meta.json").write_text('{"backbone": "x"}'),
     r"meta.json: no classes, hidden, sample_rate; .*train the fold again"),
    (lambda fold: (fold / "model.pt").write_bytes(b"not weights"), r"model.pt: not the weights its meta.json"),
    (lambda fold: edit_json(fold / "meta.json", sample_rate=0, hidden="abc"),
     r"meta.json: bad hidden 'abc', sample_rate 0; .*train the fold again"),
    (lambda fold: edit_json(fold / "meta.json", classes=[]), r"meta.json: bad classes \[\];"),
    (lambda fold: (fold / "meta.json").write_text("[1, 2]"), r"meta.json: a JSON list, not an object"),
    (lambda fold: edit_json(fold / "meta.json", backbone="resnet_doesnotexist"),
     r"meta.json: backbone 'resnet_doesnotexist' cannot be built here"),
])
def test_a_damaged_fold_is_named_with_the_fix(trained, tmp_path, damage, message):
    fold = tmp_path / "eca" / "fold0"
    shutil.copytree(trained / "eca" / "fold0", fold)
    damage(fold)
    with pytest.raises(ExportError, match=message):
        load_fold_models(tmp_path / "eca", [0])


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_folds_of_different_classes_are_rejected(trained, tmp_path):
    family = tmp_path / "mixed"
    shutil.copytree(trained / "eca" / "fold0", family / "fold0")
    shutil.copytree(trained / "eca" / "fold1", family / "fold1")
    meta = json.loads((family / "fold1" / "meta.json").read_text())
    meta["classes"] = list(reversed(CLASSES))
    (family / "fold1" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="classes"):
        load_fold_models(family, [0, 1])


def test_failed_export_leaves_the_old_output_and_no_temporary_folder(trained, tmp_path, monkeypatch):
    out = tmp_path / "export" / "eca"
    out.mkdir(parents=True)
    (out / "export.json").write_text("{}")

    def broken_export(ensemble, path, window_samples, opset):
        path.write_bytes(b"half written")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export, "_export_onnx", broken_export)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_family(trained, "eca", [0], out, SAMPLES)
    assert sorted(path.name for path in out.parent.iterdir()) == ["eca"]
    assert (out / "export.json").read_text() == "{}"


def test_parity_failure_is_a_clear_error(ensemble):
    windows = parity_windows(2, SAMPLES)
    expected = reference(ensemble, windows)
    good = {"onnxruntime": lambda x: expected, "openvino_default": lambda x: expected + 0.2}
    parity = export.check_parity(ensemble, windows, good)
    assert parity["onnxruntime"] == 0.0 and parity["openvino_default"] == pytest.approx(0.2, abs=1e-6)
    bad = {"onnxruntime": lambda x: expected + 1e-3, "openvino_f32": lambda x: np.full_like(expected, np.nan)}
    with pytest.raises(ExportError, match=r"parity check failed.*onnxruntime 1.00e-03 > 1.\d\de-04.*openvino_f32 nan"):
        export.check_parity(ensemble, windows, bad)


def test_exported_family_runtime(exported):
    out, _ = exported
    family = ExportedFamily(out, threads=1)
    assert family.classes == CLASSES and family.window_samples == SAMPLES
    assert family.precision in ("f32", "bf16", "f16")
    probs = family(new_windows(5, seed=3))
    assert probs.shape == (5, len(CLASSES)) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    assert family(np.zeros((0, SAMPLES), np.float32)).shape == (0, len(CLASSES))
    # two streams split the windows between two requests run at once: the same numbers
    streamed = ExportedFamily(out, threads=2, streams=2, precision=family.precision)
    np.testing.assert_allclose(streamed(new_windows(5, seed=3)), probs, atol=1e-6, rtol=0)
    assert streamed(new_windows(1, seed=3)).shape == (1, len(CLASSES))
    with pytest.raises(ValueError, match="expected"):
        family(np.zeros((2, 1000), np.float32))


def test_exported_family_without_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro export"):
        ExportedFamily(tmp_path / "nothing")


@pytest.fixture(scope="module")
def second_family(trained, exported) -> Path:
    """A second exported family beside the first (fold 1 alone, so its output differs)."""
    out, _ = exported
    export_family(trained, "eca", [1], out.parent / "ebs", SAMPLES)
    return out.parent / "ebs"


def test_families_joined_in_one_graph(trained, exported, second_family):
    out, _ = exported
    windows = new_windows(5, seed=21)
    models, _ = load_fold_models(trained / "eca", [1])
    expected = (reference(FoldEnsemble(models).eval(), windows) + reference(load_ensemble(trained), windows)) / 2

    joined = ExportedEnsemble([out, second_family], threads=1, precision="f32")
    probs = joined(windows)
    assert probs.shape == (5, len(CLASSES)) and joined.classes == CLASSES
    np.testing.assert_allclose(probs, expected, atol=1e-2, rtol=0)
    # the same as the two families' own graphs averaged: the shared mel is the same mel
    separate = [ExportedFamily(folder, threads=1, precision="f32")(windows) for folder in (out, second_family)]
    np.testing.assert_allclose(probs, np.mean(separate, axis=0), atol=1e-5, rtol=0)
    assert sorted(path.name for path in out.parent.iterdir()) == ["ebs", "eca"]
    # weights (normalised) and streams: the windows split over 2 streams give the same scores
    weighted = ExportedEnsemble([out, second_family], threads=2, precision="f32", streams=2, weights=[3.0, 1.0])
    np.testing.assert_allclose(weighted(windows), 0.75 * separate[0] + 0.25 * separate[1], atol=1e-5, rtol=0)
    for weights in ([1.0], [float("nan"), 1.0], [-1.0, 2.0], [0.0, 0.0]):
        with pytest.raises(ExportError, match="finite, non-negative weight per family"):
            ExportedEnsemble([out, second_family], weights=weights)


def test_fixed_batch_graph_scores_any_number_of_windows(exported, second_family):
    """Compiled for parts of 2 windows (batch 4, 2 streams): 1, 4, 5 and 9 windows are cut
    into parts, the last zero-padded, and score as the dynamic graph does."""
    out, _ = exported
    dynamic = ExportedEnsemble([out, second_family], threads=2, precision="f32")
    fixed = ExportedEnsemble([out, second_family], threads=2, precision="f32", streams=2, batch=4)
    assert fixed.part == 2
    for count in (1, 4, 5, 9):
        windows = new_windows(count, seed=30 + count)
        np.testing.assert_allclose(fixed(windows), dynamic(windows), atol=1e-5, rtol=0)


def test_families_with_other_classes_are_not_joined(exported, second_family, tmp_path):
    out, _ = exported
    other = shutil.copytree(second_family, tmp_path / "other")
    info = json.loads((other / "export.json").read_text())
    info["classes"] = list(reversed(CLASSES))
    (other / "export.json").write_text(json.dumps(info))
    with pytest.raises(ExportError, match="classes"):
        ExportedEnsemble([out, other])


@pytest.mark.parametrize("changes, message", [
    ({"classes": CLASSES[:-1]},
     rf"model.xml gives {len(CLASSES)} outputs, export.json names {len(CLASSES) - 1} classes; .*dvc repro export"),
    ({"classes": CLASSES + ["extra"]}, rf"model.xml gives {len(CLASSES)} outputs, export.json names {len(CLASSES) + 1}"),
    ({"window_samples": "abc"}, r"export.json: bad window_samples 'abc'; .*dvc repro export"),
    ({"classes": None}, r"export.json: bad classes None;"),
])
def test_a_damaged_export_json_is_named_with_the_fix(exported, tmp_path, changes, message):
    out, _ = exported
    damaged = shutil.copytree(out, tmp_path / "eca")
    edit_json(damaged / "export.json", **changes)
    with pytest.raises(ExportError, match=message):
        ExportedFamily(damaged)


def test_an_export_json_that_is_no_object_is_named(exported, tmp_path):
    out, _ = exported
    damaged = shutil.copytree(out, tmp_path / "eca")
    (damaged / "export.json").write_text("[]")
    with pytest.raises(ExportError, match=r"export.json: a JSON list, not an object; .*dvc repro export"):
        ExportedFamily(damaged)
