"""The train stage: one Lightning run per (round, family, fold).

``BirdModule`` is the recipe of seed spec §2: random EQ filtering on each training batch,
the loss on attention-pooled logits, validation on whole files (5-s chunks, max per file)
with the Kaggle macro ROC-AUC, per-step cosine decay to ``min_lr``, best epoch by
validation ROC-AUC. A run writes ``model.pt`` (the classifier's weights), ``meta.json`` and
``oof.csv`` (the best model's per-file validation scores) into its model folder, and its
DVCLive logs into its metrics folder.
"""

from __future__ import annotations

import inspect
import json
import logging
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import lightning as L
import numpy as np
import torch
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from birdclef import layout
from birdclef.augment import BackgroundMixer, RandomFiltering, SpecAugment, StoreBackground
from birdclef.data import TrainingWindows, ValidationChunks, training_sampler, worker_count
from birdclef.labels import multi_hot
from birdclef.losses import build_loss
from birdclef.metrics import file_level_max, macro_roc_auc, scorable_classes
from birdclef.model import BackboneError, BirdClassifier, MelFrontend
from birdclef.outputs import check_replaceable, folder_written_atomically, write_json, write_scores
from birdclef.params import FamilyParams, Params, TrainParams
from birdclef.store import AudioStore
from birdclef.tables import TableError

RUN_MARKER = "meta.json"  # every run folder has one: what built the weights
LOGS_MARKER = "metrics.json"  # every DVCLive folder of a finished run has one


class TrainError(ValueError):
    """A fold that cannot be trained as configured; the message says what to change."""


class BirdModule(L.LightningModule):
    """Training and validation of one ``BirdClassifier`` (seed spec §1.4, §2)."""

    def __init__(self, model: BirdClassifier, loss: str, family: FamilyParams, train: TrainParams,
                 file_targets: np.ndarray | None = None, chunk_files: list[int] | None = None):
        super().__init__()
        self.model = model
        self.loss = build_loss(loss)
        self.family = family
        self.settings = train
        augment = train.augment
        self.filtering = RandomFiltering(n_bands=augment.filtering_bands, min_db=augment.filtering_min_db)
        self.file_targets = file_targets
        self.chunk_files = None if chunk_files is None else np.asarray(chunk_files)
        self._scores: list[torch.Tensor] = []
        self._positions: list[torch.Tensor] = []

    def training_step(self, batch, batch_index):
        wave, target = batch
        output = self.model(self.filtering(wave.float()))
        loss = self.loss(output.clip_logits, target)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_index):
        wave, position = batch
        # A copy: with train.compile=reduce-overhead the output lives in a CUDA graph's memory,
        # which the next batch's replay overwrites.
        self._scores.append(self.model(wave).clip_probs.detach().clone())
        self._positions.append(position)

    def on_train_start(self):
        # DDP: every process was seeded alike; offset by rank so they draw different EQ
        # filters, SpecAugment masks and (without workers) crops. One process: unchanged.
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def on_validation_epoch_end(self):
        scores = self.all_gather(torch.cat(self._scores)).reshape(-1, self._scores[0].shape[1])
        positions = self.all_gather(torch.cat(self._positions)).reshape(-1)
        self._scores, self._positions = [], []
        positions, first = np.unique(positions.cpu().numpy(), return_index=True)  # DDP pads
        chunk_scores = scores.float().cpu().numpy()[first]
        files = self.chunk_files[positions]
        _, file_scores, _ = file_level_max(chunk_scores, chunk_scores, files)
        self.log("val_auc", macro_roc_auc(self.file_targets, file_scores), prog_bar=True, sync_dist=False)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.family, self.parameters())
        # One cosine decay from lr to min_lr over all steps, stepped per batch (the seed's
        # CosineAnnealingWarmRestarts with T_0 = the whole run: no warm-up, no restart).
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, int(self.trainer.estimated_stepping_batches)),
            eta_min=self.settings.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@dataclass
class RunPaths:
    store: Path
    tables: Path
    raw: Path
    pseudo: Path | None
    pretrained: Path | None
    out: Path
    logs: Path


def read_tables(tables: Path):
    """The prepare stage's training table (secondary labels as lists), classes and folds.

    A missing or damaged file is a TableError naming it, with the fix: rebuild the folder.
    """
    import pandas as pd

    def read(name: str, reader, columns: tuple[str, ...] = ()):
        path = tables / name
        try:
            content = reader(path)
            missing = [column for column in columns if column not in content.columns]
        except (OSError, TypeError, ValueError) as error:  # pandas' and json's parse errors are ValueErrors
            reason = f"{type(error).__name__}: {error}"
        else:
            if not missing:
                return content
            reason = f"no column(s) {missing}"
        raise TableError(f"{path}: not the prepare stage's table ({reason}); rebuild {tables} with "
                         "`dvc repro prepare` (or `birdclef prepare`).")

    def read_training_table(path: Path):
        table = pd.read_csv(path, keep_default_na=False)
        if "secondary_labels" in table.columns:  # a missing column is reported by read()
            table["secondary_labels"] = table["secondary_labels"].map(json.loads)
        return table

    table = read("train.csv", read_training_table, ("key", "primary_label", "secondary_labels"))
    classes = read("classes.json", lambda path: json.loads(path.read_text()))
    folds = read("folds.csv", pd.read_csv, ("variant", "fold", "subset", "row"))
    rows = pd.to_numeric(folds["row"], errors="coerce")
    if folds.isna().any(axis=None) or not rows.between(0, len(table) - 1).all():  # e.g. either file cut short
        raise TableError(f"{tables / 'folds.csv'}: not the prepare stage's table for {tables / 'train.csv'} (an "
                         f"empty cell, or a row outside its {len(table)}); rebuild {tables} with `dvc repro prepare` "
                         "(or `birdclef prepare`).")
    return table, classes, folds


def load_starting_backbone(model: BirdClassifier, path: Path, family_name: str, family: FamilyParams, fix: str) -> None:
    """Load ``path`` into ``model``'s backbone; a file that does not fit is a TrainError naming the family and fix."""
    try:
        model.load_backbone(path)
    except BackboneError as error:
        raise TrainError(f"{error} Family {family_name!r} has backbone {family.backbone!r}: {fix}") from None


def fold_rows(folds, variant: str, fold: int, subset: str) -> list[int]:
    chosen = folds[(folds["variant"] == variant) & (folds["fold"] == fold) & (folds["subset"] == subset)]
    return chosen["row"].tolist()


def validation_rows(folds, variant: str, fold: int) -> list[int]:
    """The training table's rows a fold validates on, each once, in order."""
    return sorted(set(fold_rows(folds, variant, fold, "valid")))


def background_mixer(raw: Path, store_root: Path, train: TrainParams) -> BackgroundMixer | None:
    """No-call soundscapes and noise clips from ``background/`` (seed: ``OneOf`` at p 0.5)."""
    import pandas as pd

    augment = train.augment
    table_path = raw / layout.BACKGROUND_CSV
    if augment.background_p <= 0 or not table_path.is_file():
        return None
    table = pd.read_csv(table_path, keep_default_na=False)
    store = AudioStore(store_root)
    keys = {source: [f"{layout.BACKGROUND_AUDIO}/{name}" for name in group["filename"]
                     if f"{layout.BACKGROUND_AUDIO}/{name}" in store]
            for source, group in table.groupby("source")}
    noise_keys = [f"{layout.BACKGROUND_AUDIO}/{name}" for name, source, category
                  in zip(table["filename"], table["source"], table["category"])
                  if source != "nocall" and category in augment.background_categories]
    sources = []
    if keys.get("nocall"):
        sources.append(StoreBackground(keys["nocall"], store, store.sample_rate))
    noise = [store.read(key) for key in noise_keys if key in store]
    if noise:
        sources.append(noise)
    if not sources:
        return None
    return BackgroundMixer(sources, p=augment.background_p, weight_range=tuple(augment.background_weight))


def build_optimizer(family: FamilyParams, parameters, multi_tensor: bool = True) -> torch.optim.Optimizer:
    """The family's optimizer (seed spec §2: RAdam or AdamW at the family's lr).

    ``multi_tensor``: update all tensors in a few kernels per step, not in a loop over them:
    AdamW's fused kernel, RAdam's foreach one (it has no fused kernel). Torch by itself picks
    foreach on GPUs and the loop on CPUs; benchmarks/training_step.py compares them.
    """
    options = {"lr": family.lr, "weight_decay": family.weight_decay}
    if family.optimizer == "radam":
        return torch.optim.RAdam(parameters, foreach=multi_tensor, **options)
    if multi_tensor:
        return torch.optim.AdamW(parameters, fused=True, **options)
    return torch.optim.AdamW(parameters, foreach=False, **options)


def check_one_batch(rows: int, batch_size: int, what: str) -> None:
    """Batches drop the last partial one (as the seed's), so fewer rows than a batch would
    train nothing: Lightning stops at once and no checkpoint exists."""
    if rows < batch_size:
        raise TrainError(f"{what} has {rows} training rows, fewer than train.batch_size ({batch_size}), so not "
                         "one full batch: lower train.batch_size.")


def build_model(family: FamilyParams, num_classes: int, train: TrainParams, sample_rate: int) -> BirdClassifier:
    """The family's classifier; its mel front end takes audio at ``sample_rate`` (params' audio)."""
    augment = train.augment
    spec_augment = SpecAugment(freq_width=augment.spec_freq_width, time_width=augment.spec_time_width,
                               max_masks=augment.spec_max_masks, p=augment.spec_p)
    try:
        model = BirdClassifier(family.backbone, num_classes, hidden=train.hidden,
                               frontend=MelFrontend(sample_rate=sample_rate), spec_augment=spec_augment)
    except BackboneError as error:
        raise TrainError(f"{error} Set family.<name>.backbone in params.yaml to another timm model.") from None
    # Parameters in NHWC make the convolutions run NHWC (oneDNN on CPUs, tensor cores on GPUs);
    # Lightning's .to(device) keeps the layout. Saved weights load into any layout.
    return model.to(memory_format=torch.channels_last) if train.channels_last else model


class StageLogger(DVCLiveLogger):
    """DVCLive's Lightning logger, with its "write the files now?" check made cheap.

    DVCLive writes its metrics files only when Lightning logs from one of the functions below,
    and finds them with ``inspect.stack()``, which reads the source lines of every frame:
    ~0.1 s a call, ~6 % of a sample fold (cProfile). Walking the frames' code names finds the
    same callers in microseconds; the rest is DVCLive's own ``log_metrics``.
    """

    SYNC_CALLERS = frozenset({"update_train_step_metrics", "update_train_epoch_metrics", "log_eval_end_metrics"})

    @rank_zero_only
    def log_metrics(self, metrics, step=None, sync=False):
        # Skip DVCLiveLogger.log_metrics (its stack check) for the next class's, as it would.
        super(DVCLiveLogger, self).log_metrics(metrics, step, sync or self._called_to_sync())

    @classmethod
    def _called_to_sync(cls) -> bool:
        frame = inspect.currentframe()
        while frame is not None:
            if frame.f_code.co_name in cls.SYNC_CALLERS:
                return True
            frame = frame.f_back
        return False


def _quiet_lightning() -> None:
    """Silence what Lightning prints on every run that says nothing about the run: an advert for
    its cloud logger, torch 2.11's deprecation of a pytree API that Lightning 2.6 itself calls, and
    (for pretraining, which never validates) that the module's validation step goes unused."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advert)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")


def _not_an_advert(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage()


def make_trainer(params: Params, max_epochs: int, logs: Path, callbacks: list, validate: bool) -> L.Trainer:
    _quiet_lightning()
    train = params.train
    # "auto", a count ("2") or Lightning's device list ("0,1").
    devices = int(train.devices) if str(train.devices).isdigit() else train.devices
    logger = StageLogger(dir=str(logs), dvcyaml=False, save_dvc_exp=False, report=None)
    return L.Trainer(
        max_epochs=max_epochs, accelerator=train.accelerator, devices=devices, strategy=train.strategy,
        precision=train.precision, logger=logger, callbacks=callbacks, num_sanity_val_steps=0,
        limit_val_batches=None if validate else 0, check_val_every_n_epoch=train.validate_every if validate else 1,
        enable_checkpointing=validate,
        enable_model_summary=False, log_every_n_steps=1,
        deterministic="warn",
    )


@contextmanager
def logs_written_atomically(logs: Path, marker: str) -> Iterator[Path]:
    """The folder a run logs into: a new one that replaces ``logs`` only when the run ends well,
    so a failed or interrupted run keeps its earlier logs, as it keeps its earlier model.

    DDP's other processes log nothing (DVCLive writes on rank 0); they get ``logs`` itself and
    leave it alone."""
    if rank_zero_only.rank != 0:
        yield logs
        return
    with folder_written_atomically(logs, marker) as folder:
        yield folder


def train_fold(params: Params, family_name: str, fold: int, paths: RunPaths) -> dict:
    """Fit one fold of one family; write the best model, its OOF scores and logs."""
    check_replaceable(paths.out, RUN_MARKER)  # before the long part, not at the save
    with logs_written_atomically(paths.logs, LOGS_MARKER) as logs:
        return _fit_fold(params, family_name, fold, replace(paths, logs=logs))


def _fit_fold(params: Params, family_name: str, fold: int, paths: RunPaths) -> dict:
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(params.seed, workers=True)
    family = params.family[family_name]
    table, classes, folds = read_tables(paths.tables)
    train_rows = fold_rows(folds, family.split, fold, "train")
    if family.oversample:
        train_rows += fold_rows(folds, family.split, fold, "oversample")
    valid_rows = validation_rows(folds, family.split, fold)
    if not train_rows and not valid_rows:
        raise TableError(f"{paths.tables / 'folds.csv'}: no fold {fold} of split {family.split!r}; rebuild "
                         f"{paths.tables} with `dvc repro prepare` (prepare.n_folds is {params.prepare.n_folds}).")
    if not valid_rows:
        raise TrainError(f"fold {fold} of split {family.split!r} has no validation recordings (with "
                         "rare_noleak, species with <= prepare.rare_max_recordings recordings never "
                         "validate); lower prepare.rare_max_recordings or add recordings.")
    check_one_batch(len(train_rows), params.train.batch_size, f"fold {fold} of split {family.split!r}")
    window = params.audio.window_samples
    pool = None
    if paths.pseudo is not None:
        from birdclef.pseudo import load_pool

        pool = load_pool(paths.pseudo, classes, params.pseudo.min_primary_prob, params.pseudo.trim_prob,
                         params.pseudo.swap_p, set(AudioStore(paths.store).keys(layout.TRAIN_SOUNDSCAPES)))
    training = TrainingWindows(paths.store, table, train_rows, classes, window, params.train.label_smoothing,
                               params.train.augment.mixup_p, pool, background_mixer(paths.raw, paths.store, params.train))
    valid_keys = table["key"].iloc[valid_rows].tolist()
    validation = ValidationChunks(paths.store, valid_keys, window)
    class_index = {label: index for index, label in enumerate(classes)}
    file_targets = np.stack([multi_hot(table["primary_label"].iloc[row], table["secondary_labels"].iloc[row],
                                       class_index) for row in valid_rows])
    if not scorable_classes(file_targets).any():
        raise TrainError(f"fold {fold} of split {family.split!r}: no species has both a positive and a negative "
                         f"validation file ({len(valid_rows)} files), so ROC-AUC is undefined; add recordings "
                         "of other species or lower prepare.n_folds.")
    model = build_model(family, len(classes), params.train, params.audio.sample_rate)
    if paths.pretrained is not None and paths.pretrained.is_file():
        load_starting_backbone(model, paths.pretrained, family_name, family,
                               f"rebuild the file with `dvc repro pretrain@{family_name}`, or name another with "
                               "--pretrained.")
    if params.train.compile != "none":
        model.compile(mode=params.train.compile)  # in place: the saved state_dict keys stay the same
    module = BirdModule(model, params.loss, family, params.train, file_targets,
                        [file for file, _ in validation.chunks])
    train_loader, valid_loader = _loaders(params, training, validation, family.sampler)
    with tempfile.TemporaryDirectory() as checkpoints:
        checkpoint = ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val_auc", mode="max",
                                     save_top_k=1, save_weights_only=True)
        trainer = make_trainer(params, params.train.epochs, paths.logs, [checkpoint], validate=True)
        trainer.fit(module, train_loader, valid_loader)
        if not trainer.is_global_zero:
            # DDP: one process writes the outputs. The best checkpoint is rank 0's file (the
            # callback broadcasts rank 0's folder), which rank 0 deletes when it leaves this block.
            return {}
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(best["state_dict"])
        best_epoch = int(best["epoch"])
    file_scores = predict_files(model, valid_loader, trainer.strategy.root_device, validation)
    val_auc = macro_roc_auc(file_targets, file_scores)
    meta = {"family": family_name, "fold": fold, "backbone": family.backbone, "classes": classes,
            "hidden": params.train.hidden, "sample_rate": params.audio.sample_rate, "val_auc": val_auc, "best_epoch": best_epoch,
            "train_items": len(training), "valid_files": len(valid_keys),
            "pseudo_chunks": 0 if pool is None else len(pool)}
    _save(paths.out, model, meta, valid_keys, classes, file_scores)
    return meta


@torch.no_grad()
def predict_files(model: BirdClassifier, loader: DataLoader, device, chunks: ValidationChunks) -> np.ndarray:
    """Per-file scores (max over 5-s chunks) of ``model`` on the validation chunks."""
    model.eval().to(device)
    scores, positions = [], []
    for wave, position in loader:
        scores.append(model(wave.to(device)).clip_probs.float().cpu())
        positions.append(position)
    chunk_scores = torch.cat(scores).numpy()
    files = np.asarray([file for file, _ in chunks.chunks])[torch.cat(positions).numpy()]
    return file_level_max(chunk_scores, chunk_scores, files)[1]


def _loaders(params: Params, training, validation, sampler_mode: str):
    workers = worker_count(params.train.num_workers)
    pin = torch.cuda.is_available()
    sampler = _RankShare(training_sampler(training.labels, sampler_mode, params.seed))
    # Persistent workers: started once per run, not once per epoch and per validation.
    persistent = workers > 0
    train_loader = DataLoader(training, batch_size=params.train.batch_size, drop_last=True, num_workers=workers,
                              pin_memory=pin, sampler=sampler, persistent_workers=persistent)
    valid_loader = None
    if validation is not None:
        valid_loader = DataLoader(_Indexed(validation), batch_size=params.train.batch_size, num_workers=workers,
                                  pin_memory=pin, persistent_workers=persistent)
    return train_loader, valid_loader


class _RankShare(torch.utils.data.DistributedSampler):
    """The training sampler, shared out between DDP processes in the sampler's own order.

    Under DDP Lightning wraps a custom sampler in ``DistributedSamplerWrapper`` with
    ``shuffle=True``, which re-shuffles the drawn order uniformly: the family's sampler,
    whose weights only order the epoch (``training_sampler``), would do nothing. Lightning
    leaves a ``DistributedSampler`` alone, so this one shares the work itself: every process
    draws the same permutation (the generator is seeded alike everywhere) and takes every
    ``world``-th item from its rank on, padded with the first items to equal shares: the
    processes see disjoint rows, each in weighted order. The world is read when iterated,
    because the processes only exist inside ``fit``; one process gets the sampler unchanged.
    """

    def __init__(self, sampler, num_replicas: int | None = None, rank: int | None = None):
        # No super().__init__(): it needs the process group, which does not exist yet.
        self.sampler, self._world, self._rank = sampler, num_replicas, rank
        self.shuffle, self.drop_last, self.seed, self.epoch = False, False, 0, 0

    @property
    def num_replicas(self) -> int:
        if self._world is not None:
            return self._world
        dist = torch.distributed
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def rank(self) -> int:
        if self._rank is not None:
            return self._rank
        dist = torch.distributed
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.num_replicas)

    def __iter__(self):
        world = self.num_replicas
        order = list(self.sampler)
        order += order[:len(self) * world - len(order)]
        return iter(order[self.rank::world])


class _Indexed(torch.utils.data.Dataset):
    """Validation items as (wave, chunk position), so predictions survive DDP reordering."""

    def __init__(self, chunks: ValidationChunks):
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, position: int):
        wave, _ = self.chunks[position]
        return wave, position


def _save(out: Path, model: BirdClassifier, meta: dict, keys: list[str], classes: list[str],
          scores: np.ndarray) -> None:
    """The run's folder: the weights, what built them, and the out-of-fold scores."""
    import pandas as pd

    oof = pd.DataFrame(scores, columns=classes)
    oof.insert(0, "key", keys)
    with folder_written_atomically(out, RUN_MARKER) as folder:
        torch.save(model.state_dict(), folder / "model.pt")
        write_json(folder / RUN_MARKER, meta)
        write_scores(oof, folder / "oof.csv")
