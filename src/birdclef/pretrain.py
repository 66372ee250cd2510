"""The pretrain stage: the backbone weights each family's fine-tuning starts from.

``pretrain.source`` picks where they come from:

* ``corpus``: train on the wide-species corpus in ``data/raw/pretrain`` (no validation, last
  epoch) and keep the backbone only, as the seed's ``create_pretrain_backbone`` did;
* ``published``: the authors' backbones from ``bird-clef-2025-all-pretrained-models``
  (``data/raw/pretrained/<pretrain.published.<family>>``), checked to fit the family's
  backbone key for key before they are written;
* ``none``: the family's seeded random initialisation, i.e. fine-tuning from scratch.

Either way the stage writes ``models/pretrained/<family>.pt`` (a backbone-only state dict,
what ``BirdClassifier.load_backbone`` reads strictly) and ``source.json`` beside the logs, so
``dvc push`` / ``dvc pull pretrain`` move one kind of file whatever its origin.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from birdclef import layout
from birdclef.data import TrainingWindows, worker_count
from birdclef.outputs import write_atomically, write_json
from birdclef.params import FamilyParams, Params
from birdclef.train import (BirdModule, TrainError, background_mixer, build_model, check_one_batch,
                            load_starting_backbone, logs_written_atomically, make_trainer)

SOURCE_FILE = "source.json"  # in the logs folder: where the backbone came from


def prepare_backbone(params: Params, family_name: str, raw: Path, store: Path, out: Path, logs: Path) -> dict:
    """Write ``out`` for ``params.pretrain.source``; return a summary (also in ``logs/source.json``)."""
    L.seed_everything(params.seed, workers=True)
    source = params.pretrain.source
    with logs_written_atomically(logs, SOURCE_FILE) as logs:
        if source == "corpus":
            state, summary = corpus_backbone(params, family_name, raw, store, logs)
        elif source == "published":
            state, summary = published_backbone(params, family_name, raw)
        else:
            state = build_model(params.family[family_name], 1, params.train,
                                params.audio.sample_rate).backbone_state_dict()
            summary = {"initialisation": f"random, seed {params.seed}"}
        summary = {"family": family_name, "backbone": params.family[family_name].backbone, "source": source,
                   **summary}
        if rank_zero_only.rank == 0:  # DDP: one process writes the outputs
            write_atomically(out, lambda tmp: torch.save(state, tmp))
            write_json(logs / SOURCE_FILE, summary)
    return summary


def corpus_backbone(params: Params, family_name: str, raw: Path, store: Path, logs: Path) -> tuple[dict, dict]:
    """Train on the wide-species corpus and keep the backbone weights only."""
    from birdclef.tables import read_train_table

    table_path = raw / layout.PRETRAIN_CSV
    if not table_path.is_file():
        raise TrainError(f"{table_path}: no pretraining corpus here; set pretrain.source to published "
                         "(the authors' backbones) or none (train from scratch).")
    family = params.family[family_name]
    corpus = read_train_table(table_path, raw / layout.PRETRAIN_AUDIO, None)
    corpus["key"] = [f"{layout.PRETRAIN_AUDIO}/{name}" for name in corpus["filename"]]
    check_one_batch(len(corpus), params.train.batch_size, f"the pretraining corpus {table_path}")
    classes = sorted(set(corpus["primary_label"]) | {label for labels in corpus["secondary_labels"] for label in labels})
    window = params.audio.window_samples
    training = TrainingWindows(store, corpus, list(range(len(corpus))), classes, window,
                               params.train.label_smoothing, params.train.augment.mixup_p, None,
                               background_mixer(raw, store, params.train))
    pretrain_family = FamilyParams(**{**family.__dict__, "lr": params.pretrain.lr})
    model = build_model(family, len(classes), params.train, params.audio.sample_rate)
    module = BirdModule(model, params.loss, pretrain_family, params.train)
    # No class-weighted sampler, as the seed's pretraining; it read a once-shuffled table in the same
    # order every epoch, this reshuffles each epoch (README, "What differs from the seed").
    workers = worker_count(params.train.num_workers)
    loader = DataLoader(training, batch_size=params.train.batch_size, drop_last=True, num_workers=workers,
                        shuffle=True, generator=torch.Generator().manual_seed(params.seed),
                        persistent_workers=workers > 0)
    trainer = make_trainer(params, params.pretrain.epochs, logs, [], validate=False)
    trainer.fit(module, loader)
    return model.backbone_state_dict(), {"classes": len(classes), "recordings": len(corpus)}


def published_backbone(params: Params, family_name: str, raw: Path) -> tuple[dict, dict]:
    """The authors' backbone for this family, checked against the family's architecture."""
    name = params.pretrain.published.get(family_name)
    if not name:
        raise TrainError(f"pretrain.published has no file for family {family_name!r}; name one of the "
                         f"files under {raw / layout.PUBLISHED_BACKBONES}.")
    root = raw / layout.PUBLISHED_BACKBONES
    path = root / name
    if not path.is_file():
        present = sorted(item.relative_to(root).as_posix() for item in root.rglob("*") if item.is_file())
        raise TrainError(f"{path} not found (pretrain.published.{family_name}); the download holds: "
                         f"{', '.join(present) or 'nothing'}.")
    family = params.family[family_name]
    model = build_model(family, 1, params.train, params.audio.sample_rate)
    load_starting_backbone(model, path, family_name, family,
                           "check family.<name>.backbone and pretrain.published, or download the file again.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return model.backbone_state_dict(), {"file": name, "sha256": digest}

