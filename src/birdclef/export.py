"""Export of one model family: its folds in one ONNX graph, then an OpenVINO IR (seed spec §1.5).

``export_family`` reads the train stage's ``models/<round>/<family>/fold<k>/`` folders, puts
the folds in one graph that computes the mel spectrogram once and averages the folds'
clip probabilities (``FoldEnsemble``), exports it to ONNX with a dynamic batch, converts it to
an OpenVINO IR with fp16 weights (what the seed submitted), and checks the outputs of ONNX
Runtime and OpenVINO against PyTorch before anything lands in the output folder.

The runtime side compiles the IR once and maps (n, samples) windows to (n, K) probabilities,
in the class order of ``export.json``: ``ExportedFamily`` for one family, ``ExportedEnsemble``
for several families joined into one OpenVINO graph that computes the mel spectrogram once
and averages the families (``join_families``; no re-export needed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from birdclef.model import BackboneError, BirdClassifier, MelFrontend
from birdclef.outputs import check_replaceable, folder_written_atomically, write_json

INPUT_NAME = "wave"
OUTPUT_NAME = "probabilities"
EXPORT_MARKER = "export.json"
PARITY_WINDOWS = 4
PARITY_SEED = 2025


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _class_list(value) -> bool:
    return (isinstance(value, list) and len(value) > 0 and all(isinstance(name, str) and name for name in value)
            and len(set(value)) == len(value))


# What a fold's meta.json must give to rebuild its network (the folds of one family agree on
# all), and what export.json must give to run the export; each with the check of its value.
META_CHECKS = {"backbone": lambda value: isinstance(value, str) and bool(value), "classes": _class_list,
               "hidden": _positive_int, "sample_rate": _positive_int}
INFO_CHECKS = {"classes": _class_list, "sample_rate": _positive_int, "window_samples": _positive_int,
               "frontend": lambda value: isinstance(value, dict)}

# Bounds of the parity check, on max |probability difference| to PyTorch eager (fp32) on
# realistic windows. Each is BASE + ROUNDING_FACTOR x the ensemble's own fp32 rounding error
# (max |eager fp32 - eager float64|, measured on the same windows): two correct fp32
# implementations differ by about that much, and a deep net can amplify rounding to ~1e-4 by
# itself. Measured on random 206-class nets: rounding 6-9e-5 for a 5-fold
# tf_efficientnetv2_s.in21k, whose correct ONNX Runtime output was then 2-3e-4 off PyTorch
# (a fixed 1e-4 would reject it); 3e-5 lcnet_050, 5e-6 mobilenetv3_small_050, 2e-7
# eca_nfnet_l0. A graph error (a wrong op, a broken front end) moves probabilities by 1e-2 or
# more. The OpenVINO default precision (bf16 on CPUs that have it) is recorded, not bounded.
PARITY_BOUNDS = {
    # fp32 like PyTorch; only the operation order and the conv STFT (against the FFT) differ.
    "onnxruntime": 1e-4,
    # OpenVINO on the converted fp32 graph, computing in f32: checks the converter alone.
    "openvino_f32_uncompressed": 1e-4,
    # OpenVINO on the saved IR, computing in f32: the learned weights are rounded to fp16
    # (relative error <= 2 ** -11 ~ 4.9e-4 each), which deep nets amplify. Measured on random
    # nets with frame logits of std 2 (trained nets put most classes at large negative logits,
    # where the sigmoid is flat): 4e-4 a 5-fold eca_nfnet_l0, 1.7e-3
    # mobilenetv3_small_050, 1.2e-2 lcnet_050, 4.2-4.4e-2 a 5-fold tf_efficientnetv2_s.in21k.
    # The graph itself is held to ~1e-4 by the two fp32 runs above, so this bound only has to
    # catch a compression gone wrong (an overflow, a wrong Convert: errors ~0.5 or NaN); 0.1
    # leaves a margin of ~2.3x over the worst case measured.
    "openvino_f32": 1e-1,
}
ROUNDING_FACTOR = 4.0


class ExportError(RuntimeError):
    """The export cannot go on (missing folds, mismatched folds, a failed parity check)."""


class FoldEnsemble(nn.Module):
    """(B, samples) float32 waveform -> (B, K) mean of the folds' clip probabilities.

    The folds must share their front-end settings: the mel spectrogram is computed once, by the
    first model's front end (it has no weights), and fed to every fold's backbone and head.
    """

    def __init__(self, models: list[BirdClassifier]) -> None:
        super().__init__()
        if not models:
            raise ValueError("FoldEnsemble needs at least one model.")
        for model in models[1:]:
            _check_same_frontend(models[0], model)
        self.folds = nn.ModuleList(models)

    @property
    def frontend(self):
        return self.folds[0].frontend

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spectrogram = self.frontend(wave)
        probabilities = [model.forward_spectrogram(spectrogram).clip_probs for model in self.folds]
        return torch.stack(probabilities).mean(dim=0)


def _check_same_frontend(first: BirdClassifier, other: BirdClassifier) -> None:
    if frontend_settings(first.frontend) != frontend_settings(other.frontend):
        raise ValueError("FoldEnsemble: the folds' mel front ends differ; one shared front end "
                         "would change some folds' input.")


def load_fold_models(folder: Path, folds: list[int]) -> tuple[list[BirdClassifier], dict]:
    """The trained models ``folder/fold<k>/model.pt`` (eval mode) and the first fold's meta.

    Every fold must exist and share the backbone, the head size, the class list and the sample
    rate (each model's mel front end is rebuilt at its ``meta.json``'s rate).
    """
    folder = Path(folder)
    if not folds:
        raise ExportError(f"{folder}: no folds to load.")
    models, first = [], None
    for fold in folds:
        fold_dir = folder / f"fold{fold}"
        if not (fold_dir / "model.pt").is_file() or not (fold_dir / "meta.json").is_file():
            raise ExportError(f"{fold_dir}: no trained model (model.pt + meta.json) for fold {fold}; "
                              "run `dvc repro train` first.")
        meta = _read_meta(fold_dir / "meta.json")
        if first is None:
            first = meta
        for key in META_CHECKS:
            if meta[key] != first[key]:
                raise ExportError(f"{fold_dir}: '{key}' differs from fold {folds[0]}'s; the folds of "
                                  "one family must share backbone, head, classes and sample rate.")
        try:
            model = BirdClassifier(meta["backbone"], len(meta["classes"]), hidden=meta["hidden"],
                                   frontend=MelFrontend(sample_rate=meta["sample_rate"]))
        except BackboneError as error:
            raise ExportError(f"{fold_dir / 'meta.json'}: backbone {meta['backbone']!r} cannot be built here "
                              f"({error}); train the fold again or install the timm version that trained it.") from None
        try:
            model.load_state_dict(torch.load(fold_dir / "model.pt", map_location="cpu", weights_only=True))
        except Exception as error:  # torch raises several types for a damaged or mismatched file
            raise ExportError(f"{fold_dir / 'model.pt'}: not the weights its meta.json describes "
                              f"({str(error).splitlines()[0][:200]}); train the fold again "
                              "(`dvc repro --force train@...`) or `dvc pull` it.") from None
        models.append(model.eval())
    return models, first


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ExportError(f"{path}: damaged ({error}); train the fold again or `dvc pull` it.") from None
    return _checked(path, meta, META_CHECKS, "it was written by another version of the train stage or edited: "
                    "train the fold again (`dvc repro train`).")


def _checked(path: Path, document, checks: dict, fix: str) -> dict:
    """``document`` (a JSON file's contents) when it is an object with every key of ``checks``
    and each value passes its check, else an ExportError naming the file, the keys and ``fix``."""
    if not isinstance(document, dict):
        raise ExportError(f"{path}: a JSON {type(document).__name__}, not an object; {fix}")
    missing = [key for key in checks if key not in document]
    if missing:
        raise ExportError(f"{path}: no {', '.join(missing)}; {fix}")
    bad = [key for key, check in checks.items() if not check(document[key])]
    if bad:
        values = ", ".join(f"{key} {document[key]!r:.60}" for key in bad)
        raise ExportError(f"{path}: bad {values}; {fix}")
    return document


def parity_windows(count: int = PARITY_WINDOWS, samples: int = 160_000, sample_rate: int = 32_000,
                   seed: int = PARITY_SEED) -> np.ndarray:
    """(count, samples) float32 windows that look like field recordings to a mel front end.

    Each window: a few linear chirps (1-8 kHz, random start, length and level, smooth onsets)
    over coloured background noise, then peak-normalised like the seed's inference input.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / sample_rate
    windows = np.empty((count, samples), dtype=np.float32)
    for row in range(count):
        wave = np.zeros(samples)
        for _ in range(rng.integers(2, 6)):
            start, stop = np.sort(rng.uniform(0.0, samples / sample_rate, size=2))
            f0, f1 = rng.uniform(1000.0, 8000.0, size=2)
            duration = max(stop - start, 1e-3)
            local = np.clip(t - start, 0.0, duration)
            phase = 2 * math.pi * (f0 * local + 0.5 * (f1 - f0) / duration * local ** 2)
            envelope = np.sin(math.pi * local / duration) ** 2 * ((t >= start) & (t <= stop))
            wave += rng.uniform(0.05, 1.0) * envelope * np.sin(phase)
        noise = np.cumsum(rng.standard_normal(samples)) * 1e-3  # brown-ish, low frequencies
        noise += rng.uniform(1e-3, 5e-2) * rng.standard_normal(samples)
        wave += noise - noise.mean()
        windows[row] = wave / np.abs(wave).max()
    return windows


def export_family(models: Path, family: str, folds: list[int], out: Path, window_samples: int,
                  opset: int | None = None) -> dict:
    """Export ``models/<family>/fold<k>`` for ``folds`` into ``out`` and return ``export.json``.

    ``out`` gets ``model.onnx`` (one file, fp32), ``model.xml`` + ``model.bin`` (OpenVINO IR,
    learned weights stored as fp16) and ``export.json`` (family, folds, backbone, classes,
    sample_rate, window_samples, opset, parity, default_precision, ...). Everything is
    written to a temporary folder beside ``out`` and renamed into place only after the parity
    check passed; on any failure ``out`` is left as it was.
    """
    import onnx
    import openvino as ov

    out = check_replaceable(out, EXPORT_MARKER)
    fold_models, meta = load_fold_models(Path(models) / family, folds)
    sample_rate = meta["sample_rate"]
    ensemble = FoldEnsemble(fold_models).eval()
    with folder_written_atomically(out, EXPORT_MARKER) as tmp:
        onnx_path, xml_path = tmp / "model.onnx", tmp / "model.xml"
        _export_onnx(ensemble, onnx_path, window_samples, opset)
        graph = onnx.load(str(onnx_path))
        opset_used = next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))
        spectrogram = spectrogram_tensor(graph)
        del graph

        core = ov.Core()
        f32 = {"INFERENCE_PRECISION_HINT": "f32"}
        converted = ov.convert_model(str(onnx_path))
        if spectrogram is not None and _find_output(converted, spectrogram) is None:
            spectrogram = None
        uncompressed = core.compile_model(converted, "CPU", f32)  # compiled before compression
        frontend = ensemble.frontend
        kept = compress_weights(converted, [frontend.fourier_kernels.numpy(), frontend.mel_filters.numpy()])
        ov.save_model(converted, str(xml_path), compress_to_fp16=False)
        del converted

        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        compiled_f32 = core.compile_model(str(xml_path), "CPU", f32)
        compiled_default = core.compile_model(str(xml_path), "CPU")
        default_precision = precision_name(compiled_default)
        runs = {
            "onnxruntime": lambda x: session.run(None, {INPUT_NAME: x})[0],
            "openvino_f32_uncompressed": lambda x: uncompressed(x)[0],
            "openvino_f32": lambda x: compiled_f32(x)[0],
            "openvino_default": lambda x: compiled_default(x)[0],
        }
        parity = check_parity(ensemble, parity_windows(PARITY_WINDOWS, window_samples, sample_rate), runs)
        parity["openvino_default_precision"] = default_precision
        del session, uncompressed, compiled_f32, compiled_default

        info = {"family": family, "folds": list(folds), "backbone": meta["backbone"],
                "classes": list(meta["classes"]), "sample_rate": sample_rate,
                "window_samples": window_samples, "opset": opset_used, "parity": parity,
                "default_precision": default_precision, "frontend": frontend_settings(frontend),
                "spectrogram_tensor": spectrogram, "frontend_constants_f32": kept,
                "bytes": {path.name: path.stat().st_size for path in sorted(tmp.iterdir())}}
        write_json(tmp / EXPORT_MARKER, info)
    return info


def _export_onnx(ensemble: FoldEnsemble, path: Path, window_samples: int, opset: int | None) -> None:
    """One fp32 ONNX file (weights inside) with a dynamic batch axis; conv-STFT front end."""
    example = torch.from_numpy(parity_windows(2, window_samples, seed=0))  # batch 2: 1 would specialise
    batch = torch.export.Dim("batch", min=1)
    ensemble.frontend.exportable = True
    try:
        with warnings.catch_warnings():
            # torch 2.11's exporter warns about its own use of a deprecated pytree API.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(
                ensemble, (example,), dynamo=True, external_data=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={INPUT_NAME: {0: batch}}, verbose=False,
            )
        _drop_source_paths(program.model)
        program.save(str(path), external_data=False)
    finally:
        ensemble.frontend.exportable = False


def _drop_source_paths(model) -> None:
    """Remove the exporter's per-node Python stack traces: they hold the absolute paths of the
    checkout and the venv, so the same models exported from two clones gave two ONNX files
    (and two DVC hashes). The other node metadata (module hierarchy) stays."""
    import onnx_ir as ir

    for graph in (model.graph, *model.functions.values()):
        for node in ir.traversal.RecursiveGraphIterator(graph):
            node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)


def frontend_settings(frontend) -> dict:
    """What makes two mel front ends compute the same thing: their settings and a checksum of
    their fixed kernels and filterbank (which hold sample rate and frequency range)."""
    settings = {name: getattr(frontend, name)
                for name in ("n_fft", "win_length", "hop_length", "power", "top_db", "amin", "eps")}
    settings["n_mels"] = int(frontend.mel_filters.shape[1])
    digest = hashlib.sha256()
    for buffer in (frontend.fourier_kernels, frontend.mel_filters):
        digest.update(buffer.detach().cpu().numpy().tobytes())
    settings["kernels_sha256"] = digest.hexdigest()[:16]
    return settings


def spectrogram_tensor(graph) -> str | None:
    """The name of the spectrogram tensor in an exported ``FoldEnsemble`` ONNX graph: the one
    output of the front end's nodes that the backbones read (from the exporter's module
    metadata), or None when it cannot be told apart."""
    def hierarchy(node) -> str:
        return next((entry.value for entry in node.metadata_props
                     if entry.key == "pkg.torch.onnx.class_hierarchy"), "")

    def namespace(node) -> str:
        return next((entry.value for entry in node.metadata_props if entry.key == "namespace"), "")

    frontend_outputs = {name for node in graph.graph.node if "MelFrontend" in hierarchy(node) for name in node.output}
    read_by_backbones = {name for node in graph.graph.node if ".backbone:" in namespace(node)
                         for name in node.input if name in frontend_outputs}
    return read_by_backbones.pop() if len(read_by_backbones) == 1 else None


def _find_output(model, name: str):
    """The output port of an OpenVINO model's node that carries tensor ``name``, or None."""
    for op in model.get_ordered_ops():
        for output in op.outputs():
            if name in output.get_names():
                return output
    return None


def compress_weights(model, keep: list[np.ndarray]) -> int:
    """Store ``model``'s float32 constants as fp16 (+ a Convert back to f32), in place.

    This is what ``ovc --compress_to_fp16`` / ``save_model(compress_to_fp16=True)`` does to the
    learned weights, with two exceptions kept in f32: scalars, and constants holding the same
    values as an array of ``keep`` (the front end's fixed Fourier kernels and mel filterbank,
    matched by value, so a transposed copy is found too). fp16 Fourier kernels (relative error
    2 ** -11 per tap) leak a noise floor at about -66 dB into the power spectrum, inside the
    front end's 80 dB range; on the test nets that alone made the f32 OpenVINO output 6x
    further from PyTorch (1.5e-3 against 2.4e-4). Keeping them costs ~8 MB per family.
    Returns how many constants were kept in f32 for matching ``keep``.
    """
    import openvino as ov
    import openvino.opset13 as ops

    fingerprints: dict[int, list[np.ndarray]] = {}
    for values in keep:
        fingerprints.setdefault(values.size, []).append(np.sort(values, axis=None))
    fp16_max = float(np.finfo(np.float16).max)
    kept = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.f32:
            continue
        data = op.get_data()
        if data.size < 2 or not np.all(np.abs(data) <= fp16_max):
            continue
        if any(np.array_equal(np.sort(data, axis=None), values) for values in fingerprints.get(data.size, ())):
            kept += 1
            continue
        half = ops.constant(data.astype(np.float16), name=op.get_friendly_name())
        decompress = ops.convert(half, "f32")
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(decompress.output(0))
    return kept


def check_parity(ensemble: FoldEnsemble, windows: np.ndarray, runs: dict) -> dict:
    """Max |difference| of each runtime in ``runs`` (name -> windows -> probabilities) to
    PyTorch eager (fp32, FFT front end); raise ``ExportError`` when one exceeds its bound
    (``PARITY_BOUNDS`` + ``ROUNDING_FACTOR`` x the fp32 rounding error)."""
    wave = torch.from_numpy(windows)
    with torch.no_grad():
        expected = ensemble(wave).numpy()
        exact = copy.deepcopy(ensemble).double()(wave.double()).numpy()
    rounding = float(np.abs(expected - exact).max())
    parity = {"windows": int(windows.shape[0]), "reference": "pytorch eager fp32, FFT front end",
              "reference_range": [float(expected.min()), float(expected.max())],
              "pytorch_fp32_rounding": rounding}
    for name, run in runs.items():
        output = np.asarray(run(windows), dtype=np.float64)
        if output.shape != expected.shape:
            raise ExportError(f"parity check: {name} returned shape {output.shape}, PyTorch {expected.shape}")
        parity[name] = float(np.abs(output - expected).max())
        parity.setdefault("mean_abs", {})[name] = float(np.abs(output - expected).mean())
    bounds = {name: base + ROUNDING_FACTOR * rounding for name, base in PARITY_BOUNDS.items() if name in runs}
    parity["bounds"] = bounds
    failed = [f"{name} {parity[name]:.2e} > {bound:.2e}" for name, bound in bounds.items()
              if not parity[name] <= bound]  # `not <=` also catches NaN
    if failed:
        raise ExportError(f"parity check failed (max |difference| to PyTorch on {windows.shape[0]} "
                          f"windows; fp32 rounding alone {rounding:.1e}): {', '.join(failed)}")
    return parity


def precision_name(compiled) -> str:
    """The precision an OpenVINO compiled model computes in: "f32", "bf16", "f16"."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return hint.to_string() if hasattr(hint, "to_string") else str(hint)


def join_families(folders: list[Path], weights: list[float] | None = None):
    """One OpenVINO model from several exported families: the first family's mel front end
    feeds every family's folds (the others' front ends are dropped), and the output is the
    mean over families of their fold means, weighted by ``weights`` (equal by default; they
    are normalised to sum to 1). (n, samples) -> (n, K).

    The families must share classes, window and front end (``export.json``). Returns the model
    and the families' ``export.json`` contents.
    """
    import openvino as ov
    import openvino.opset13 as ops

    infos = [read_export_info(Path(folder)) for folder in folders]
    for folder, info in zip(folders[1:], infos[1:]):
        for key in ("classes", "window_samples", "sample_rate", "frontend"):
            if info.get(key) != infos[0].get(key):
                raise ExportError(f"{folder}: '{key}' differs from {folders[0]}'s; these families cannot "
                                  "share one front end and one output.")
    if any(not info.get("spectrogram_tensor") for info in infos):
        raise ExportError(f"{folders}: an export without a known spectrogram tensor; re-run `dvc repro export`.")
    core = ov.Core()
    models = [_read_model(core, Path(folder)) for folder in folders]
    for folder, model, info in zip(folders, models, infos):
        shape = model.get_results()[0].get_output_partial_shape(0)
        if shape.rank.is_static and shape[-1].is_static and shape[-1].get_length() != len(info["classes"]):
            raise ExportError(f"{folder}: model.xml gives {shape[-1].get_length()} outputs, export.json names "
                              f"{len(info['classes'])} classes; {DAMAGED}")
    shared = _find_output(models[0], infos[0]["spectrogram_tensor"])
    (wave,) = models[0].get_parameters()
    outputs = [models[0].get_results()[0].input_value(0)]
    for folder, model, info in zip(folders[1:], models[1:], infos[1:]):
        spectrogram = _find_output(model, info["spectrogram_tensor"])
        if spectrogram is None or shared is None:
            raise ExportError(f"{folder}: spectrogram tensor {info['spectrogram_tensor']!r} not in model.xml.")
        for target in list(spectrogram.get_target_inputs()):
            target.replace_source_output(shared)
        # The folds may read the batch size off the input's shape: the same input for all.
        (own_wave,) = model.get_parameters()
        for target in list(own_wave.output(0).get_target_inputs()):
            target.replace_source_output(wave.output(0))
        outputs.append(model.get_results()[0].input_value(0))
    if len(outputs) == 1:
        return models[0], infos
    weights = np.ones(len(outputs)) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (len(outputs),) or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ExportError(f"family weights {weights.tolist()}: one finite, non-negative weight per family, not all 0.")
    total = None
    for output, weight in zip(outputs, weights / weights.sum()):
        output.get_tensor().set_names(set())  # every family named its output "probabilities"
        term = ops.multiply(output, ops.constant(np.float32(weight))).output(0)
        total = term if total is None else ops.add(total, term).output(0)
    total.get_tensor().set_names({OUTPUT_NAME})
    return ov.Model([ops.result(total)], models[0].get_parameters(), "ensemble"), infos


DAMAGED = "the export is damaged or incomplete: run `dvc repro export` (or `dvc pull models/export`) again."


def read_export_info(folder: Path) -> dict:
    """A family's ``export.json``, checked for what running its model needs (``INFO_CHECKS``)."""
    if not (folder / "model.xml").is_file() or not (folder / "export.json").is_file():
        raise FileNotFoundError(f"{folder}: no exported model (model.xml + export.json); "
                                "run `dvc repro export` first.")
    try:
        info = json.loads((folder / "export.json").read_text())
    except (ValueError, OSError) as error:
        raise ExportError(f"{folder / 'export.json'}: unreadable ({error}); {DAMAGED}") from None
    return _checked(folder / "export.json", info, INFO_CHECKS, DAMAGED)


def _read_model(core, folder: Path):
    try:
        return core.read_model(str(folder / "model.xml"))
    except RuntimeError as error:  # OpenVINO's only exception type: a truncated .bin, a garbled .xml
        reason = [line.strip() for line in str(error).splitlines() if line.strip()]  # last: the cause
        raise ExportError(f"{folder}: OpenVINO cannot read model.xml + model.bin ({reason[-1] if reason else error}); "
                          f"{DAMAGED}") from None


class ExportedEnsemble:
    """Exported families compiled by OpenVINO on the CPU as ONE graph (mel computed once):
    (n, samples) float32 windows -> (n, K) mean over families (``weights``, equal by default)
    of their fold-mean probabilities.

    ``threads`` sets ``INFERENCE_NUM_THREADS``; ``precision`` ("f32" or "bf16") sets
    ``INFERENCE_PRECISION_HINT`` (default: the device's, bf16 on CPUs that have it).
    ``streams`` = 1 (PERFORMANCE_HINT LATENCY): one batch at a time, all threads on it.
    ``streams`` > 1: that many OpenVINO streams share the threads, and each call's windows are
    split into ``streams`` parts run at once (fewer threads per part synchronise less).
    ``batch``: the windows per call to specialise for (12 for a one-minute soundscape). The graph
    is then compiled for a fixed part of ``ceil(batch / streams)`` windows, ~20 % faster for
    the real backbones than a dynamic batch (benchmarks/inference.py); calls of any size are
    cut into such parts, the last one zero-padded (windows do not interact in the network).
    """

    def __init__(self, folders: list[Path], threads: int | None = None, precision: str | None = None,
                 streams: int = 1, weights: list[float] | None = None, batch: int | None = None) -> None:
        import openvino as ov

        if precision not in (None, "f32", "bf16"):
            raise ValueError(f"precision {precision!r}: use 'f32', 'bf16' or None (device default).")
        if not folders:
            raise ValueError("ExportedEnsemble needs at least one exported family folder.")
        if streams < 1:
            raise ValueError(f"streams {streams}: must be at least 1.")
        self.folders = [Path(folder) for folder in folders]
        model, self.infos = join_families(self.folders, weights)
        self.info = self.infos[0]
        self.classes: list[str] = list(self.info["classes"])
        self.window_samples: int = int(self.info["window_samples"])
        self.sample_rate: int = int(self.info["sample_rate"])
        config = {"PERFORMANCE_HINT": "LATENCY"} if streams == 1 else {"NUM_STREAMS": int(streams)}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        if batch is not None and batch < 1:
            raise ValueError(f"batch {batch}: must be at least 1 (or None for any batch size).")
        self.part = None if batch is None else -(-batch // streams)
        if self.part is not None:
            model.reshape({0: [self.part, self.window_samples]})
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.precision = precision_name(self.compiled)
        self._requests = [self.compiled.create_infer_request() for _ in range(streams)]

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        if windows.ndim != 2 or windows.shape[1] != self.window_samples:
            raise ValueError(f"windows of shape {windows.shape}: expected (n, {self.window_samples}).")
        count = windows.shape[0]
        if count == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if self.part is None:
            parts = [part for part in np.array_split(windows, len(self._requests)) if len(part)]
        else:
            padded = np.pad(windows, ((0, -count % self.part), (0, 0)))
            parts = np.split(padded, len(padded) // self.part)
        outputs = []
        for start in range(0, len(parts), len(self._requests)):
            group = parts[start:start + len(self._requests)]
            requests = self._requests[:len(group)]
            for request, part in zip(requests, group):
                request.start_async({0: part})
            for request in requests:
                request.wait()
                outputs.append(np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True))
        return np.concatenate(outputs)[:count]


class ExportedFamily(ExportedEnsemble):
    """One exported family (``export_family``'s folder) compiled by OpenVINO on the CPU:
    (n, samples) float32 windows -> (n, K) fold-mean probabilities, classes from export.json."""

    def __init__(self, folder: Path, threads: int | None = None, precision: str | None = None,
                 streams: int = 1, batch: int | None = None) -> None:
        super().__init__([Path(folder)], threads=threads, precision=precision, streams=streams, batch=batch)
        self.folder = self.folders[0]
