"""Datasets, samplers and the train/pretrain stages on a tiny generated sample."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import python, run, tone
from birdclef import layout
from birdclef.augment import peak_normalize
from birdclef.data import (PseudoChunk, PseudoPool, TrainingWindows, ValidationChunks, crop_or_pad,
                           sample_weights, split_windows, training_sampler)
from birdclef.losses import build_loss
from birdclef.model import BirdClassifier
from birdclef.pretrain import prepare_backbone
from birdclef.store import AudioStore
from birdclef.tables import TableError
from birdclef.train import RunPaths, TrainError, read_tables, train_fold

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:.*LeafSpec:FutureWarning")


def paths(root: Path, name: str, pseudo: Path | None = None, pretrained: Path | None = None) -> RunPaths:
    return RunPaths(store=root / "store", tables=root / "tables", raw=root / "raw", pseudo=pseudo,
                    pretrained=pretrained, out=root / "models" / name, logs=root / "logs" / name)


def test_short_run_writes_its_outputs_and_is_deterministic(workspace):
    root, params = workspace
    first = train_fold(params, "eca", 0, paths(root, "a"))
    second = train_fold(params, "eca", 0, paths(root, "b"))
    assert first["val_auc"] == second["val_auc"]
    weights_a = torch.load(root / "models/a/model.pt", weights_only=True)
    weights_b = torch.load(root / "models/b/model.pt", weights_only=True)
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)
    meta = json.loads((root / "models/a/meta.json").read_text())
    table, classes, _ = read_tables(root / "tables")
    assert meta["classes"] == classes and meta["backbone"] == params.family["eca"].backbone
    assert meta["sample_rate"] == params.audio.sample_rate  # export rebuilds the mel front end from it
    oof = pd.read_csv(root / "models/a/oof.csv")
    assert list(oof.columns) == ["key", *classes] and len(oof) == meta["valid_files"]
    assert set(oof["key"]) <= set(table["key"])
    assert (root / "logs/a/metrics.json").is_file()
    assert (root / "logs/a/plots/metrics/val/auc.tsv").is_file()
    assert not (root / "models/a.tmp").exists()


def test_a_failed_run_keeps_the_earlier_model_and_logs(workspace, tmp_path):
    """A run that fails while it trains (here on a damaged store shard) leaves the run's
    earlier folders as they were, not its DVCLive logs wiped beside the old model."""
    from birdclef.store import StoreError

    root, params = workspace
    run_paths = paths(root, "kept")
    train_fold(params, "eca", 0, run_paths)

    def files():
        return {path: path.read_bytes() for folder in (run_paths.out, run_paths.logs)
                for path in sorted(folder.rglob("*")) if path.is_file()}

    before = files()
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    shard = next(store.glob(f"{layout.TRAIN_AUDIO}-*.h5"))
    shard.write_bytes(shard.read_bytes()[:10_000])
    with pytest.raises(StoreError, match=rf"{shard.name}: damaged shard \(.*\); re-run `dvc repro precompute`"):
        train_fold(params, "eca", 0, replace(run_paths, store=store))
    assert files() == before and (run_paths.logs / "metrics.json").is_file()
    assert sorted(path.name for path in run_paths.out.parent.iterdir() if path.name.startswith("kept")) == ["kept"]
    assert sorted(path.name for path in run_paths.logs.parent.iterdir() if path.name.startswith("kept")) == ["kept"]


def test_validate_every_validates_every_nth_epoch_and_keeps_the_best_of_those(workspace):
    root, params = workspace
    params = replace(params, train=replace(params.train, epochs=4, validate_every=2))
    meta = train_fold(params, "eca", 0, paths(root, "every-2"))
    steps = pd.read_csv(root / "logs/every-2/plots/metrics/val/auc.tsv", sep="\t")
    assert len(steps) == 2  # epochs 2 and 4 of 4
    assert meta["best_epoch"] in (1, 3)
    assert meta["val_auc"] == pytest.approx(steps["auc"].max())
    losses = pd.read_csv(root / "logs/every-2/plots/metrics/train/loss.tsv", sep="\t")
    assert len(losses) == 4  # one row per epoch


def test_runs_with_a_persistent_loader_worker_are_deterministic(workspace):
    # In a fresh process, as the train stage runs: forking a worker from this test process,
    # after other tests loaded OpenVINO's thread pools into it, can crash it.
    from omegaconf import OmegaConf

    root, params = workspace
    params = replace(params, train=replace(params.train, epochs=3, validate_every=1, num_workers=1))
    params_file = root / "params-one-worker.yaml"
    OmegaConf.save(OmegaConf.structured(params), params_file)
    for name in ("worker-a", "worker-b"):
        run_paths = paths(root, name)
        run([python(), "-m", "birdclef", "train", "--family", "eca", "--fold", "0", "--params", str(params_file),
             "--store", str(run_paths.store), "--tables", str(run_paths.tables), "--raw", str(run_paths.raw),
             "--out", str(run_paths.out), "--logs", str(run_paths.logs)],
            root)  # no models/pretrained/eca.pt under root: random weights, drawn from the seed
    metas = [json.loads((root / "models" / name / "meta.json").read_text()) for name in ("worker-a", "worker-b")]
    assert metas[0]["val_auc"] == metas[1]["val_auc"] and metas[0]["best_epoch"] == metas[1]["best_epoch"]
    weights = [torch.load(root / "models" / name / "model.pt", weights_only=True) for name in ("worker-a", "worker-b")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_stage_logger_syncs_exactly_where_dvclive_would():
    from dvclive.lightning import _should_sync

    from birdclef.train import StageLogger

    def update_train_epoch_metrics():  # the name of one of Lightning's syncing callers
        return StageLogger._called_to_sync(), _should_sync()

    def log_something_else():
        return StageLogger._called_to_sync(), _should_sync()

    assert update_train_epoch_metrics() == (True, True)
    assert log_something_else() == (False, False)


@pytest.mark.parametrize("name", ["radam", "adamw"])
def test_multi_tensor_update_is_the_per_tensor_update(name):
    """The train stage's fused AdamW / foreach RAdam do the maths of torch's per-tensor loop."""
    from birdclef.params import FamilyParams
    from birdclef.train import build_optimizer

    family = FamilyParams(backbone="-", optimizer=name, lr=0.01, weight_decay=0.1, sampler="sqrt",
                          split="allbirds", oversample=False)
    trained = {}
    for multi_tensor in (False, True):
        torch.manual_seed(0)
        layers = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        start = [weight.detach().clone() for weight in layers.parameters()]
        optimizer = build_optimizer(family, layers.parameters(), multi_tensor)
        for step in range(3):
            optimizer.zero_grad()
            layers(torch.randn(4, 8, generator=torch.Generator().manual_seed(step))).square().mean().backward()
            optimizer.step()
        trained[multi_tensor] = list(layers.parameters())
    for before, loop, multi in zip(start, trained[False], trained[True]):
        assert not torch.equal(before, loop)
        torch.testing.assert_close(multi, loop, rtol=1e-5, atol=1e-6)


def test_pretrained_backbone_is_loaded_strictly(workspace):
    root, params = workspace
    backbone = root / "pretrained" / "eca.pt"
    summary = prepare_backbone(params, "eca", root / "raw", root / "store", backbone, root / "logs" / "pre")
    assert summary["source"] == "corpus" and (root / "logs/pre/source.json").is_file()
    assert summary["classes"] > len(read_tables(root / "tables")[1])  # the wider corpus
    state = torch.load(backbone, weights_only=True)
    assert state and all(not key.startswith("head.") for key in state)
    train_fold(params, "eca", 1, paths(root, "from-pretrained", pretrained=backbone))
    other = root / "pretrained" / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(TrainError, match=r"wrong\.pt does not fit this backbone: \d+ missing key.*1 unexpected "
                                         r"\['conv.weight'\].*dvc repro pretrain@eca"):
        train_fold(params, "eca", 1, paths(root, "wrong", pretrained=other))
    assert not (root / "models" / "wrong").exists()


def test_train_command_names_a_weights_file_it_cannot_use(workspace):
    """Not weights at all (a text file), or a whole-model checkpoint of another family."""
    from omegaconf import OmegaConf

    root, params = workspace
    params_file = root / "params-weights.yaml"
    OmegaConf.save(OmegaConf.structured(params), params_file)
    text, checkpoint = root / "notes.pt", root / "ebs.ckpt"
    text.write_text("not weights")
    ebs = BirdClassifier(params.family["ebs"].backbone, 3)
    torch.save({"state_dict": {f"model.{key}": value for key, value in ebs.state_dict().items()}}, checkpoint)
    for weights, message in [(text, "notes.pt: not a PyTorch weights file"),
                             (checkpoint, "ebs.ckpt does not fit this backbone")]:
        run_paths = paths(root, weights.stem)
        result = run([python(), "-m", "birdclef", "train", "--family", "eca", "--fold", "0", "--store",
                      str(run_paths.store), "--tables", str(run_paths.tables), "--raw", str(run_paths.raw),
                      "--pretrained", str(weights), "--out", str(run_paths.out), "--logs", str(run_paths.logs),
                      "--params", str(params_file)], root, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert message in result.stderr and "backbone 'mobilenetv3_small_050'" in result.stderr
        assert "weights_only" not in result.stderr  # not torch's advice to unpickle an untrusted file
        assert not run_paths.out.exists()


@pytest.mark.parametrize("backbone, message", [
    ("resnet10x", "timm cannot build backbone 'resnet10x' as a feature extractor (Unknown model (resnet10x)); "
                  "did you mean resnet10t"),
    ("vit_tiny_patch16_224", "backbone 'vit_tiny_patch16_224' takes only 224x224 images"),
])
def test_pretrain_and_train_commands_name_a_backbone_they_cannot_build(workspace, backbone, message):
    """A family's backbone that is no timm name, or a fixed-size image model: a clear error
    before any training, naming the params key, and nothing written."""
    from omegaconf import OmegaConf

    root, params = workspace
    params_file = root / f"params-{backbone}.yaml"
    mine = replace(params, family={**params.family, "eca": replace(params.family["eca"], backbone=backbone)})
    OmegaConf.save(OmegaConf.structured(mine), params_file)
    run_paths = paths(root, backbone)
    common = ["--family", "eca", "--raw", str(run_paths.raw), "--logs", str(run_paths.logs),
              "--params", str(params_file)]
    pretrained = root / "pretrained" / f"{backbone}.pt"
    for command in (["pretrain", "--store", str(run_paths.store), "--out", str(pretrained)],
                    ["train", "--fold", "0", "--store", str(run_paths.store), "--tables", str(run_paths.tables),
                     "--out", str(run_paths.out)]):
        result = run([python(), "-m", "birdclef", *command, *common], root, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr and "family.<name>.backbone" in result.stderr
    assert not pretrained.exists() and not run_paths.out.exists() and not run_paths.logs.exists()


def test_a_batch_larger_than_the_rows_is_refused_not_trained_as_nothing(workspace):
    """drop_last leaves no step: training used to end in a traceback for lack of a checkpoint,
    and pretraining quietly saved its random starting weights as the corpus backbone."""
    root, params = workspace
    huge = replace(params, train=replace(params.train, batch_size=10_000))
    with pytest.raises(TrainError, match=r"fold 0 of split 'allbirds' has \d+ training rows, fewer than "
                                         r"train\.batch_size \(10000\).*lower train\.batch_size"):
        train_fold(huge, "eca", 0, paths(root, "huge-batch"))
    backbone = root / "pretrained" / "huge-batch.pt"
    with pytest.raises(TrainError, match=r"pretraining corpus .*train\.csv has \d+ training rows"):
        prepare_backbone(huge, "eca", root / "raw", root / "store", backbone, root / "logs" / "huge-pre")
    assert not backbone.exists() and not (root / "models" / "huge-batch").exists()
    assert not (root / "logs" / "huge-batch").exists() and not (root / "logs" / "huge-pre").exists()


def test_damaged_prepare_tables_are_named_with_the_fix(workspace, tmp_path):
    root, _ = workspace
    for name, content, reason in [("train.csv", "", "EmptyDataError"),
                                  ("train.csv", "key,primary_label\na,b\n", "no column(s) ['secondary_labels']"),
                                  ("train.csv", "key,primary_label,secondary_labels\na,b,[\"c\"\n", "JSONDecodeError"),
                                  ("classes.json", "[\"a\",", "JSONDecodeError"),
                                  ("folds.csv", None, "FileNotFoundError")]:
        tables = tmp_path / name / reason
        shutil.copytree(root / "tables", tables)
        if content is None:
            (tables / name).unlink()
        else:
            (tables / name).write_text(content)
        with pytest.raises(TableError) as error:
            read_tables(tables)
        assert str(error.value).startswith(f"{tables / name}: not the prepare stage's table ({reason}")
        assert "`dvc repro prepare`" in str(error.value)


def whole_lines(text: str, share: float) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[:int(len(lines) * share)])


@pytest.mark.parametrize("name, cut", [("train.csv", lambda text: whole_lines(text, 0.3)),
                                       ("folds.csv", lambda text: text[:text.index("\nallbirds,1,") + 1]),
                                       ("folds.csv", lambda text: text[:len(text) // 2])])
def test_prepare_tables_cut_short_are_named_with_the_fix(workspace, tmp_path, name, cut):
    """A table cut short (a copy interrupted): folds.csv then names rows train.csv lacks, or
    lacks the last fold, or ends in an empty cell."""
    root, params = workspace
    tables = tmp_path / "tables"
    shutil.copytree(root / "tables", tables)
    (tables / name).write_text(cut((tables / name).read_text()))
    with pytest.raises(TableError, match=r"folds.csv: (not the prepare stage's table for .*train.csv \(.*\)|no fold 1 "
                                         r"of split 'allbirds'); rebuild .*`dvc repro prepare`"):
        train_fold(params, "eca", 1, replace(paths(root, "cut"), tables=tables))
    assert not (root / "models" / "cut").exists() and not (root / "logs" / "cut").exists()


def test_compiled_run_saves_weights_that_the_plain_model_reproduces(workspace):
    """train.compile: the network trains compiled, and its checkpoint is the plain model's."""
    from torch._dynamo.utils import counters

    from birdclef.data import ValidationChunks
    from birdclef.train import _Indexed, build_model, predict_files

    root, params = workspace
    params = replace(params, train=replace(params.train, compile="default"))
    graphs = counters["stats"]["unique_graphs"]
    meta = train_fold(params, "eca", 0, paths(root, "compiled"))
    assert counters["stats"]["unique_graphs"] > graphs
    model = build_model(params.family["eca"], len(meta["classes"]), params.train, params.audio.sample_rate)
    model.load_state_dict(torch.load(root / "models/compiled/model.pt", weights_only=True))  # strict: same keys
    oof = pd.read_csv(root / "models/compiled/oof.csv")
    window = params.audio.window_samples
    chunks = ValidationChunks(root / "store", oof["key"].tolist(), window)
    loader = torch.utils.data.DataLoader(_Indexed(chunks), batch_size=params.train.batch_size)
    plain = predict_files(model, loader, "cpu", chunks)
    np.testing.assert_allclose(plain, oof[meta["classes"]].to_numpy(), atol=1e-4)


def test_pseudo_chunks_enter_training(workspace):
    root, params = workspace
    _, classes, _ = read_tables(root / "tables")
    pseudo = root / "pseudo-labels"
    pseudo.mkdir()
    soundscape = sorted((root / "raw" / "train_soundscapes").glob("*.ogg"))[0].stem
    rows = [[f"{soundscape}_{end}"] + list(np.eye(len(classes))[end // 5 % len(classes)] * 0.9)
            for end in (5, 10, 15, 20)]
    pd.DataFrame(rows, columns=["row_id", *classes]).to_csv(pseudo / "00-test.csv", index=False)
    meta = train_fold(params, "eca", 0, paths(root, "pseudo", pseudo=pseudo))
    assert meta["pseudo_chunks"] == 4


def test_training_windows_crop_pad_mixup_and_targets(workspace):
    root, params = workspace
    table, classes, folds = read_tables(root / "tables")
    rows = list(range(len(table)))
    windows = TrainingWindows(root / "store", table, rows, classes, 160000, label_smoothing=0.0, mixup_p=0.0)
    torch.manual_seed(0)
    for position in range(len(rows)):
        wave, target = windows[position]
        assert wave.shape == (160000,) and abs(float(wave.abs().max()) - 1.0) < 1e-5
        assert target[classes.index(table["primary_label"][position])] == 1.0
    mixed = TrainingWindows(root / "store", table, rows, classes, 160000, label_smoothing=0.05, mixup_p=1.0)
    for position in range(10):
        _, target = mixed[position]
        assert float(target.max()) <= 1.0
        assert target[classes.index(table["primary_label"][position])] > 0.5  # its own label is in the union
    # float16 out of the worker (the default) is the float32 wave rounded as numpy rounds it
    exact = TrainingWindows(root / "store", table, rows, classes, 160000, 0.05, 1.0, wave_dtype="float32")
    halves = TrainingWindows(root / "store", table, rows, classes, 160000, 0.05, 1.0)
    for position in range(5):
        wave32, wave16 = exact[position][0], halves[position][0]
        assert wave32.dtype == torch.float32 and wave16.dtype == torch.float16
        np.testing.assert_array_equal(wave16.numpy(), wave32.numpy().astype(np.float16))
    short = np.ones(1000, np.float32)
    padded = crop_or_pad(short, 4000, np.random.default_rng(0))
    assert padded[:3000].sum() == 0 and padded[3000:].sum() == 1000  # left-padded


def test_pseudo_swap_replaces_items_with_soft_targets(workspace):
    root, _ = workspace
    table, classes, _ = read_tables(root / "tables")
    key = sorted(AudioKeys(root).soundscapes)[0]
    soft = np.linspace(0.1, 0.8, len(classes)).astype(np.float32)
    label = table["primary_label"][0]
    pool = PseudoPool({label: [PseudoChunk(key, 10.0, soft)]}, swap_p=1.0)
    windows = TrainingWindows(root / "store", table, [0], classes, 160000, 0.05, 0.0, pool)
    wave, target = windows[0]
    np.testing.assert_allclose(target.numpy(), soft)  # soft target, no smoothing
    store = AudioStore(root / "store")  # the 5 s that end at end_s, peak-normalised
    expected = peak_normalize(store.read(key, 10.0 - 160000 / store.sample_rate, 10.0))
    assert expected.shape == (160000,) and wave.abs().max() > 0
    np.testing.assert_array_equal(wave.numpy(), expected.astype(np.float16))


def label_set(table, row: int) -> set[str]:
    return {table["primary_label"][row], *table["secondary_labels"][row]}


def multi_hot_of(codes, classes: list[str]) -> np.ndarray:
    target = np.zeros(len(classes), np.float32)
    target[[classes.index(code) for code in codes]] = 1.0
    return target


def test_labelled_targets_are_smoothed_by_the_seed_formula_or_left_multi_hot(workspace):
    """label_smoothing f: a positive gets 1 - f + f·n_pos/K, any other class f·n_pos/K; f = 0: multi-hot."""
    root, _ = workspace
    table, classes, _ = read_tables(root / "tables")
    rows = list(range(len(table)))
    hard = TrainingWindows(root / "store", table, rows, classes, 160000, label_smoothing=0.0, mixup_p=0.0)
    smoothed = TrainingWindows(root / "store", table, rows, classes, 160000, label_smoothing=0.05, mixup_p=0.0)
    for position in rows:
        expected = multi_hot_of(label_set(table, position), classes)
        np.testing.assert_array_equal(hard[position][1].numpy(), expected)
        share = 0.05 * expected.sum() / len(classes)
        np.testing.assert_allclose(smoothed[position][1].numpy(), np.where(expected == 1, 0.95 + share, share),
                                   rtol=1e-6)


def crop_offset(audio: np.ndarray, wave: np.ndarray) -> int:
    """Where in ``audio`` the peak-normalised window ``wave`` was cut (asserts that it was)."""
    heads = np.lib.stride_tricks.sliding_window_view(audio[:len(audio) - len(wave) + 32], 32)
    cosine = heads @ wave[:32] / (np.linalg.norm(heads, axis=1) * np.linalg.norm(wave[:32]) + 1e-12)
    start = int(np.argmax(cosine))
    np.testing.assert_array_equal(wave, peak_normalize(audio[start:start + len(wave)]))
    return start


def test_training_crops_start_anywhere_in_a_longer_recording(workspace):
    """Each seed crops its own 5 s of a recording longer than the window, read as stored."""
    root, _ = workspace
    table, classes, _ = read_tables(root / "tables")
    store = AudioStore(root / "store")
    position = next(row for row, key in enumerate(table["key"]) if store.length(key) > 200000)
    audio = store.read_samples(table["key"][position])
    windows = TrainingWindows(root / "store", table, [position], classes, 160000, 0.0, 0.0, wave_dtype="float32")
    offsets = []
    for seed in range(4):
        torch.manual_seed(seed)  # the dataset's generator follows torch's seed
        offsets.append(crop_offset(audio, windows[0][0].numpy()))
    assert len(set(offsets)) == 4, offsets


def test_mixup_p_is_the_share_of_items_mixed_with_a_partner(workspace):
    """mixup_p = 1 mixes every item: its target is the hard union with a uniformly drawn row's
    (here another species 9 times in 10); mixup_p = 0 never mixes."""
    root, _ = workspace
    table, classes, _ = read_tables(root / "tables")
    other = next(row for row in range(len(table)) if not label_set(table, row) <= label_set(table, 0))
    own, union = (multi_hot_of(codes, classes) for codes in (label_set(table, 0),
                                                             label_set(table, 0) | label_set(table, other)))
    draws = 100
    for mixup_p in (1.0, 0.0):
        windows = TrainingWindows(root / "store", table, [0] + [other] * 9, classes, 160000, 0.0, mixup_p)
        torch.manual_seed(0)
        targets = [windows[0][1].numpy() for _ in range(draws)]
        assert all(np.array_equal(target, own) or np.array_equal(target, union) for target in targets)
        mixed = sum(np.array_equal(target, union) for target in targets)
        share = mixup_p * 9 / 10
        bound = 6 * np.sqrt(draws * share * (1 - share))  # binomial: 6 standard deviations
        assert abs(mixed - draws * share) <= bound, (mixup_p, mixed)


def test_validation_chunks_keep_a_recordings_last_partial_chunk_left_padded(workspace):
    """A recording of 1-2 windows: two chunks, the second its tail after zeros, each peak-normalised."""
    root, _ = workspace
    store = AudioStore(root / "store")
    key = next(key for key in store.index.index if 160000 < store.length(key) < 320000)
    audio = store.read_samples(key)
    chunks = ValidationChunks(root / "store", [key], 160000)
    assert len(chunks) == 2
    (first, file_a), (last, file_b) = chunks[0], chunks[1]
    assert file_a == file_b == 0
    np.testing.assert_array_equal(first.numpy(), peak_normalize(audio[:160000]))
    pad = 320000 - len(audio)
    assert not last[:pad].any()
    np.testing.assert_array_equal(last[pad:].numpy(), peak_normalize(audio[160000:]))


def test_training_step_loss_is_the_configured_loss_of_the_clip_logits(workspace):
    """The step's loss compares the attention-pooled clip logits with the target (the same
    seed before both, so RandomFiltering and SpecAugment draw alike)."""
    from birdclef.train import BirdModule, build_model

    root, params = workspace
    table, classes, _ = read_tables(root / "tables")
    settings = params.family["eca"]
    model = build_model(settings, len(classes), params.train, params.audio.sample_rate)
    module = BirdModule(model, params.loss, settings, params.train)
    windows = TrainingWindows(root / "store", table, [0, 1], classes, 160000, 0.05, 0.0)
    wave, target = torch.utils.data.default_collate([windows[0], windows[1]])
    torch.manual_seed(0)
    loss = module.training_step((wave, target), 0)
    torch.manual_seed(0)
    expected = build_loss(params.loss)(model(module.filtering(wave.float())).clip_logits, target)
    torch.testing.assert_close(loss, expected)


class AudioKeys:
    def __init__(self, root):
        from birdclef.store import AudioStore

        self.soundscapes = AudioStore(root / "store").keys("train_soundscapes")


def test_sampler_draws_every_row_once_per_epoch_and_weights_follow_the_seed():
    labels = ["a"] * 6 + ["b"] * 3 + ["c"]
    sampler = training_sampler(labels, "sqrt", seed=1)
    assert sorted(sampler) == list(range(10))  # without replacement
    np.testing.assert_allclose(sample_weights(labels, "balanced"), [1 / 6] * 6 + [1 / 3] * 3 + [1.0])
    np.testing.assert_allclose(sample_weights(labels, "sqrt")[-1], (1 / 10) ** -0.5)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_weights(labels, "nope")


def test_inference_windows():
    wave = np.concatenate([np.full(160000, 0.5), np.full(40000, 0.25)]).astype(np.float32)
    windows = split_windows(wave, 160000)
    assert windows.shape == (2, 160000)
    assert windows[1, :120000].sum() == 0 and np.allclose(windows[1, 120000:], 1.0)  # padded, normalised


@pytest.mark.parametrize("family, backbone", [("eca", "eca_nfnet_l0"), ("ebs", "tf_efficientnetv2_s.in21k")])
def test_real_backbones_train_and_validate(workspace, family, backbone):
    """The seed's backbones go through a training step and a validation pass (CPU, tiny)."""
    import lightning as L

    from birdclef.data import ValidationChunks
    from birdclef.train import BirdModule, _Indexed, build_model

    root, params = workspace
    table, classes, _ = read_tables(root / "tables")
    settings = replace(params.family[family], backbone=backbone)
    model = build_model(settings, 206, params.train, params.audio.sample_rate)
    training = TrainingWindows(root / "store", table, [0, 1], classes + [f"x{i}" for i in range(206 - len(classes))],
                               160000, 0.05, 0.5)
    validation = ValidationChunks(root / "store", table["key"][:2].tolist(), 160000)
    targets = np.zeros((2, 206), np.float32)
    targets[0, 0] = targets[1, 1] = 1
    module = BirdModule(model, "focal_bce", settings, params.train, targets, [f for f, _ in validation.chunks])
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, limit_train_batches=1)
    trainer.fit(module, torch.utils.data.DataLoader(training, batch_size=2),
                torch.utils.data.DataLoader(_Indexed(validation), batch_size=4))
    assert 0.0 <= trainer.callback_metrics["val_auc"] <= 1.0
    assert torch.isfinite(trainer.callback_metrics["train_loss"])


def test_background_mixer_uses_nocall_soundscapes_and_the_chosen_noise_categories(tmp_path, params):
    from birdclef.augment import ClipBackground, StoreBackground, peak_normalize
    from birdclef.store import ShardWriter, write_index
    from birdclef.train import background_mixer

    rate = 32000
    clips = {"forest.ogg": ("nocall", "", 700), "rain.wav": ("esc50", "rain", 900),
             "laughing.wav": ("esc50", "laughing", 1100),  # not in train.augment.background_categories
             "missing.wav": ("esc50", "rain", 1300)}  # listed, but not in the store: skipped
    assert "rain" in params.train.augment.background_categories
    assert "laughing" not in params.train.augment.background_categories
    raw, root = tmp_path / "raw", tmp_path / "store"
    (raw / "background").mkdir(parents=True)
    root.mkdir()
    pd.DataFrame([(name, source, category) for name, (source, category, _) in clips.items()],
                 columns=list(layout.BACKGROUND_COLUMNS)).to_csv(raw / layout.BACKGROUND_CSV, index=False)
    writer = ShardWriter(root / "background-000.h5", rate, "float32", "test")
    waves = {name: (0.3 * tone(hz, 2.0, rate)).astype(np.float32) for name, (_, _, hz) in clips.items()}
    for name in ("forest.ogg", "rain.wav", "laughing.wav"):
        writer.append(f"{layout.BACKGROUND_AUDIO}/{name}", waves[name], rate, 1, "WAV")
    write_index(root, writer.close())

    mixer = background_mixer(raw, root, params.train)
    nocall, noise = mixer.sources
    assert isinstance(nocall, StoreBackground) and nocall.keys == [f"{layout.BACKGROUND_AUDIO}/forest.ogg"]
    assert isinstance(noise, ClipBackground) and len(noise.clips) == 1
    np.testing.assert_allclose(noise.clips[0], peak_normalize(waves["rain.wav"]), atol=1e-6)
    assert mixer.p == params.train.augment.background_p and mixer.weight_range == (0.25, 0.75)
    params.train.augment.background_p = 0.0
    assert background_mixer(raw, root, params.train) is None  # off: nothing is read
