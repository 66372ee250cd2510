"""Inference speed of one 60-s soundscape: PyTorch eager against ONNX Runtime and OpenVINO.

One soundscape is 12 windows of 5 s at 32 kHz, run as one batch of 12 on 2 threads. For each
backbone the SAME random-weight 5-fold ensemble (BatchNorm statistics re-estimated on
bird-like input, so activations are realistic) is exported with ``birdclef.export`` (one graph,
mel inside, fp16 IR) and timed in PyTorch eager, ONNX Runtime, and OpenVINO at its default
precision (dynamic batch; fixed batch of 12; fixed batch split over 2 streams, as ``infer``
runs it) and at f32. Then the two-family ensemble: the seed-equivalent path (one OpenVINO
graph per family, run one after the other, default precision) against the project's
candidates. Each group (a backbone's runtimes; the ensemble's candidates) runs in a
child process of its own (memory), its runtimes side by side in that one process, in
alternating order, after warm-up runs; the numbers are medians. Error = max |probability -
PyTorch eager fp32|. Models and exports can be kept and reused with ``--work DIR``.

    python benchmarks/inference.py                  # eca_nfnet_l0 + tf_efficientnetv2_s.in21k, 5 folds
    python benchmarks/inference.py --quick          # small backbones, 2 folds: a smoke test
    python benchmarks/inference.py --backbones eca_nfnet_l0 --folds 3 --repeats 7
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# PyTorch's OpenMP threads wait for each other actively by default; on a machine whose cores
# other jobs also use, a 2-thread forward pass then took 2.7 s instead of 0.04 s (measured
# here). Passive waiting gives the core back at once. Set before torch is imported (children
# inherit it); an explicit OMP_WAIT_POLICY in the environment wins. ONNX Runtime gets the
# same (no spinning); OpenVINO's TBB threads need no setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import typer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SEED_BACKBONES = ["eca_nfnet_l0", "tf_efficientnetv2_s.in21k"]
QUICK_BACKBONES = ["mobilenetv3_small_050", "lcnet_050"]
FULL = {"folds": 5, "repeats": 5, "warmup": 1, "settle": 0.2}
QUICK = {"folds": 2, "repeats": 2, "warmup": 0, "settle": 0.05}
WINDOWS, SAMPLES, RATE = 12, 160_000, 32_000


def realistic_random_model(backbone: str, classes: int, seed: int):
    """A random-weight BirdClassifier whose probabilities spread over (0, 1) on bird-like input."""
    import torch

    from birdclef.calibration import calibrate
    from birdclef.model import BirdClassifier

    torch.manual_seed(seed)
    return calibrate(BirdClassifier(backbone, classes), 8, SAMPLES, seed=500 + seed, batch=4)


def save_family(models: list, root: Path, family: str, backbone: str, classes: list[str]) -> None:
    """The train stage's format: models/<family>/fold<k>/{model.pt, meta.json}."""
    import torch

    for fold, model in enumerate(models):
        folder = root / family / f"fold{fold}"
        folder.mkdir(parents=True)
        torch.save(model.state_dict(), folder / "model.pt")
        meta = {"family": family, "fold": fold, "backbone": backbone, "classes": classes,
                "hidden": model.head.dense.out_features, "sample_rate": RATE, "val_auc": 0.5,
                "best_epoch": 0}
        (folder / "meta.json").write_text(json.dumps(meta))


def time_runners(runners: dict, windows: np.ndarray, repeats: int, warmup: int,
                 settle: float) -> dict[str, list[float]]:
    """Seconds per call of each runner: warm-up calls, then ``repeats`` rounds in alternating order.

    ``settle`` seconds of sleep before each timed call let the previous runtime's worker
    threads stop spinning (ONNX Runtime's and OpenMP's spin after a call), so that no runtime
    is charged for the one before it.
    """
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name](windows)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            time.sleep(settle)
            start = time.perf_counter()
            runners[name](windows)
            timings[name].append(time.perf_counter() - start)
    return timings


def build_and_export(backbone: str, family: str, folds: int, classes: int, work: Path) -> dict:
    """Random models in the train format under work/models/<family>, exported to
    work/export/<family>; reused when ``work`` already holds the same export (``--work``)."""
    previous = work / "export" / family / "export.json"
    info = json.loads(previous.read_text()) if previous.is_file() else {}
    if (info.get("backbone"), info.get("folds"), len(info.get("classes", []))) == (backbone, list(range(folds)), classes):
        return info | {"build_s": None, "export_s": None}
    import torch

    from birdclef.export import export_family

    # One PyTorch thread: on a busy machine two OpenMP threads wait for each other (a 20x
    # slowdown was seen). Only the timed runs use ``--threads``.
    torch.set_num_threads(1)
    shutil.rmtree(work / "models" / family, ignore_errors=True)
    start = time.perf_counter()
    index = int(family[1:])
    models = [realistic_random_model(backbone, classes, seed=100 * index + fold) for fold in range(folds)]
    save_family(models, work / "models", family, backbone, [f"species{k:03d}" for k in range(classes)])
    del models
    built = time.perf_counter() - start
    start = time.perf_counter()
    info = export_family(work / "models", family, list(range(folds)), work / "export" / family, SAMPLES)
    return info | {"build_s": built, "export_s": time.perf_counter() - start, "memory_gb": peak_memory_gb()}


def measure(runners: dict, reference: np.ndarray, windows: np.ndarray, repeats: int, warmup: int,
            settle: float) -> dict[str, tuple[float, float]]:
    """name -> (median seconds per call, max |output - reference|)."""
    errors = {name: float(np.abs(run(windows) - reference).max()) for name, run in runners.items()}
    timings = time_runners(runners, windows, repeats, warmup, settle)
    return {name: (statistics.median(timings[name]), errors[name]) for name in runners}


def in_child(isolate: bool, function, *args):
    """``function(*args)``, in a fresh child process when ``isolate`` (its memory is returned
    when it ends), else here."""
    if not isolate:
        return function(*args)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def cached(path: Path, settings: dict, compute):
    """``compute()``'s result, kept as JSON at ``path`` (only with ``--work``, where a killed
    run can then resume group by group); reused when it was made with the same settings."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["settings"] == settings:
            return saved["result"]
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    serialisable = json.loads(json.dumps(result, default=lambda value: np.asarray(value).tolist()))
    path.write_text(json.dumps({"settings": settings, "result": serialisable}))
    return serialisable


def peak_memory_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def family_group(models: Path, folder: Path, folds: int, soundscape: np.ndarray, threads: int, repeats: int,
                 warmup: int, settle: float):
    """One family's ensemble in PyTorch eager, ONNX Runtime and OpenVINO (default, f32)."""
    import onnxruntime as ort
    import torch

    from birdclef.export import ExportedFamily, FoldEnsemble, load_fold_models

    torch.set_num_threads(threads)
    loaded, _ = load_fold_models(models, list(range(folds)))
    ensemble = FoldEnsemble(loaded).eval()

    def eager(x):
        with torch.no_grad():
            return ensemble(torch.from_numpy(x)).numpy()

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # like OMP_WAIT_POLICY=PASSIVE for PyTorch: no busy-waiting threads on a shared machine
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    default = ExportedFamily(folder, threads=threads)
    runners = {"eager": eager,
               "onnxruntime": lambda x: session.run(None, {"wave": x})[0],
               "openvino_default": default,
               "openvino_static": ExportedFamily(folder, threads=threads, batch=WINDOWS),
               "openvino_infer": ExportedFamily(folder, threads=threads, streams=threads, batch=WINDOWS),
               "openvino_f32": ExportedFamily(folder, threads=threads, precision="f32")}
    reference = eager(soundscape)
    return (measure(runners, reference, soundscape, repeats, warmup, settle), reference, default.precision,
            peak_memory_gb())


def ensemble_group(folders: list[Path], soundscape: np.ndarray, average: np.ndarray, threads: int, repeats: int,
                   warmup: int, settle: float):
    """The whole ensemble (family average) by the seed-equivalent path and the candidates."""
    import openvino as ov

    from birdclef.export import ExportedEnsemble

    # the seed's runtime: each family's IR compiled with OpenVINO's defaults (dynamic batch)
    seed_graphs = [ov.Core().compile_model(str(folder / "model.xml"), "CPU", {"INFERENCE_NUM_THREADS": threads})
                   for folder in folders]
    singles = [ov.Core().compile_model(str(folder / "model.xml"), "CPU",
                                       {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1})
               for folder in folders]
    requests = [model.create_infer_request() for model in singles]

    def seed_equivalent(x):
        return np.mean([graph(x)[0] for graph in seed_graphs], axis=0)

    def families_at_once(x):
        for request in requests:
            request.start_async({0: x})
        for request in requests:
            request.wait()
        return np.mean([request.get_output_tensor(0).data for request in requests], axis=0)

    runners = {
        "seed-equivalent: one graph per family (mel in each), one after the other": seed_equivalent,
        "ExportedEnsemble: one graph, mel once, all families": ExportedEnsemble(folders, threads=threads),
        f"ExportedEnsemble, {threads} streams x 1 thread, windows split": ExportedEnsemble(
            folders, threads=threads, streams=threads),
        f"ExportedEnsemble, {threads} streams, fixed batch of {WINDOWS} (what infer runs)": ExportedEnsemble(
            folders, threads=threads, streams=threads, batch=WINDOWS),
        "family graphs run at once (async), 1 thread each": families_at_once,
    }
    results = measure(runners, average, soundscape, repeats, warmup, settle)
    del runners, seed_graphs, singles, requests
    joined_f32 = ExportedEnsemble(folders, threads=threads, precision="f32")
    return results, float(np.abs(joined_f32(soundscape) - average).max()), peak_memory_gb()


def main(
    backbones: list[str] = typer.Option(None, help="timm backbones, one family each (default: the seed's two)."),
    folds: int = typer.Option(None, help=f"Folds per family (default: {FULL['folds']}; {QUICK['folds']} with "
                                         "--quick)."),
    repeats: int = typer.Option(None, help="Timed rounds; medians are reported "
                                           f"(default: {FULL['repeats']}; {QUICK['repeats']} with --quick)."),
    warmup: int = typer.Option(None, help="Untimed calls per runner first, besides one call for the error "
                                          f"(default: {FULL['warmup']}; {QUICK['warmup']} with --quick)."),
    threads: int = typer.Option(2, help="Threads of every runtime."),
    settle: float = typer.Option(None, help="Seconds of sleep before each timed call, to let threads go idle "
                                            f"(default: {FULL['settle']}; {QUICK['settle']} with --quick)."),
    quick: bool = typer.Option(False, help="A < 1 min smoke test: small backbones and the quick defaults above, "
                                           "all in this one process; options given explicitly still win."),
    classes: int = typer.Option(206, help="Output classes."),
    work: Path = typer.Option(None, help="Keep models and exports here and reuse them on the next run "
                                         "(default: a temporary folder, deleted)."),
) -> None:
    wall = time.perf_counter()
    from birdclef.export import parity_windows

    # --quick changes defaults only: an option the user gave wins
    default = QUICK if quick else FULL
    backbones = backbones or (QUICK_BACKBONES if quick else SEED_BACKBONES)
    given = {"folds": folds, "repeats": repeats, "warmup": warmup, "settle": settle}
    folds, repeats, warmup, settle = (default[name] if value is None else value for name, value in given.items())
    soundscape = parity_windows(WINDOWS, SAMPLES, RATE, seed=99)  # 12 windows, like one 60-s file
    soundscape[np.random.default_rng(7).choice(WINDOWS, 3, replace=False)] *= 0.05  # some quiet ones
    load_before = os.getloadavg()[0]
    keep = work is not None
    work = Path(work) if keep else Path(tempfile.mkdtemp(prefix="bench-inference-"))
    families = [f"f{index}" for index in range(len(backbones))]
    folders = [work / "export" / family for family in families]
    results, exports, references, memory = {}, {}, {}, {}
    try:
        print(f"{len(backbones)} families x {folds} folds, {classes} classes, random weights; building and "
              "exporting ...", flush=True)
        isolate = not quick  # small models: no need for child processes (each costs ~5 s of imports)
        for backbone, family in zip(backbones, families):
            exports[backbone] = info = in_child(isolate, build_and_export, backbone, family, folds, classes, work)
            done = "reused" if info["export_s"] is None else (f"build {info['build_s']:.0f} s, export "
                                                            f"{info['export_s']:.0f} s, peak {info['memory_gb']:.1f} GB")
            print(f"  {backbone}: {done}", flush=True)
        print("timing ...", flush=True)

        # Each group runs in a child process of its own, so that its memory (PyTorch, ONNX
        # Runtime and OpenVINO copies of 5 folds) is returned before the next group starts.
        settings = {"threads": threads, "repeats": repeats, "warmup": warmup, "settle": settle,
                    "backbones": backbones, "folds": folds, "classes": classes, "isolate": isolate}
        for backbone, family, folder in zip(backbones, families, folders):
            results[backbone], references[backbone], precision, memory[backbone] = cached(
                work / "results" / f"{family}.json", settings, lambda: in_child(
                    isolate, family_group, work / "models" / family, folder, folds, soundscape, threads, repeats,
                    warmup, settle))
            references[backbone] = np.asarray(references[backbone])
        if len(backbones) >= 2:
            average = np.mean(list(references.values()), axis=0)
            results["ensemble"], joined_f32_error, memory["ensemble"] = cached(
                work / "results" / "ensemble.json", settings, lambda: in_child(
                    isolate, ensemble_group, folders, soundscape, average, threads, repeats, warmup, settle))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nseconds per 60-s soundscape (12 x 5-s windows, batch 12), {threads} threads, median of {repeats} "
          f"rounds after {warmup} warm-up; "
          + ("each group (table row / ensemble) in a child process of its own, its runtimes side by side in that "
             "process" if not quick else "all in this one process") + ", order alternating; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    columns = [("onnxruntime", "ORT"), ("openvino_default", f"OV {precision} (default)"),
               ("openvino_static", f"OV {precision} batch {WINDOWS}"),
               ("openvino_infer", f"OV {precision} {threads} streams"), ("openvino_f32", "OV f32")]
    print("s (Nx): seconds, and speed-up over eager = eager time / time (above 1 = faster than eager)")
    print(f"{'backbone (' + str(folds) + ' folds, 1 graph)':<30}{'eager':>8}" + "".join(f"{title:>22}" for _, title in columns))
    for backbone in backbones:
        eager = results[backbone]["eager"][0]
        cells = "".join(f"{f'{results[backbone][name][0]:.3f} ({eager / results[backbone][name][0]:.2f}x)':>22}"
                        for name, _ in columns)
        print(f"{backbone:<30}{eager:>8.3f}{cells}")
        print(f"{'  max |error| vs eager':<38}" + "".join(f"{results[backbone][name][1]:>22.1e}" for name, _ in columns))
    print(f"OpenVINO as infer runs it ({threads} streams, fixed batch of {WINDOWS}), speed-up over PyTorch eager: "
          + ", ".join(f"{backbone} {results[backbone]['eager'][0] / results[backbone]['openvino_infer'][0]:.2f}x"
                      for backbone in backbones))
    for backbone in backbones:
        info = exports[backbone]
        parity = info["parity"]
        took = "" if info["export_s"] is None else f"{info['export_s']:.0f} s, "
        print(f"export {backbone}: {took}opset {info['opset']}, onnx {info['bytes']['model.onnx'] / 1e6:.0f} MB, "
              f"IR bin {info['bytes']['model.bin'] / 1e6:.0f} MB; parity (4 windows, max |err|): "
              f"ORT {parity['onnxruntime']:.1e}, OV f32 uncompressed {parity['openvino_f32_uncompressed']:.1e}, "
              f"OV f32 fp16-IR {parity['openvino_f32']:.1e}, OV {parity['openvino_default_precision']} "
              f"{parity['openvino_default']:.1e}; fp32 rounding {parity['pytorch_fp32_rounding']:.1e}")

    if "ensemble" in results:
        ensemble = results["ensemble"]
        names = list(ensemble)
        seed_time, seed_error = ensemble[names[0]]
        summed = sum(results[backbone]["openvino_default"][0] for backbone in backbones)
        print(f"\nensemble of {len(backbones)} families x {folds} folds (family average), OpenVINO {precision}; "
              "speed-up over the seed-equivalent path = its time / time (above 1 = faster); "
              "error vs the eager family average")
        print(f"  seed-equivalent ensemble = sum of the families' OV {precision} times above: {summed:.3f} s")
        for name in names:
            value, error = ensemble[name]
            print(f"  {name:<72}{value:>7.3f} s {seed_time / value:>6.2f}x  err {error:.1e}")
        print(f"  (ExportedEnsemble at f32: err {joined_f32_error:.1e}: the joined graph computes the right thing)")
        faster = [name for name in names[1:] if ensemble[name][0] < seed_time and ensemble[name][1] <= 1.5 * seed_error]
        if not faster:
            print("  project ensemble: nothing measured here beats the seed-equivalent path; keep it.")
        else:
            best = min(faster, key=lambda name: ensemble[name][0])
            print(f"  project ensemble = {best}: {ensemble[best][0]:.3f} s per soundscape, "
                  f"speed-up {seed_time / ensemble[best][0]:.2f}x over the seed-equivalent path")
    print(("peak memory of this one process, all groups so far, after each (GB): " if not isolate else
           "peak memory per group (GB): ") + ", ".join(f"{name} {value:.1f}" for name, value in memory.items()))
    print(f"\ntotal {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    typer.run(main)
