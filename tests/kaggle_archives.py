"""Small zip archives in the layout and under the names of the real Kaggle downloads.

The fake kaggle client (tests/fakes/kaggle) serves them; everything behind it is real. The
content is tiny real audio: a few species of the 2025 taxonomy, one-minute soundscapes,
the no-call zip split over the two 2023 parts, ESC-50-named clips, published pseudo-label
CSVs and published backbones (state dicts of the requested timm backbones, random weights).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import tone, write_audio

SPECIES = ["grekis", "compau", "trokin"]  # not in the oversampling table: few training rows
SOUNDSCAPES = ["H02_20230420_074000", "H02_20230421_074000"]
PSEUDO_FILES = [
    "eca_124__eca_117__eca_112__eca_118__eca_113__ebs_123__eca_120__eca_121/v0_0.csv",
    "double_eca_nfnet_l0_AllFPseudoI1/v0_0.csv",
    "best_ensem_19052025/v0.csv",
]
BACKBONE_FILES = {
    "eca": "models_2025/eca_nfnet_l0_pretrain_from_bigXCV2_best.ckpt",
    "ebs": "models_2024/tf_efficientnetv2_s_in21k_Pretrainversion1.pth",
}


def zip_folder(folder: Path, archive: Path) -> None:
    """Stored, not deflated: the tests pay for zipping random weights otherwise."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as handle:
        for path in sorted(folder.rglob("*")):
            handle.write(path, path.relative_to(folder).as_posix())


def _call(number: int, seconds: float, rate: int = 32000) -> np.ndarray:
    """A species-specific chirp train: distinct enough for a model to learn something."""
    t = np.arange(int(seconds * rate)) / rate
    frequency = 1500 + 1200 * (number % len(SPECIES))
    envelope = (np.sin(2 * np.pi * (2 + number % 3) * t) > 0.3).astype(np.float32)
    return (0.5 * envelope * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def competition(root: Path, taxonomy: list[str], recordings_per_species: int) -> Path:
    labels = list(dict.fromkeys(SPECIES + taxonomy))
    pd.DataFrame({"primary_label": labels, "inat_taxon_id": range(len(labels)), "scientific_name": labels,
                  "common_name": labels, "class_name": "Aves"}).to_csv(root / "taxonomy.csv", index=False)
    rows = []
    for index in range(recordings_per_species * len(SPECIES)):
        label = SPECIES[index % len(SPECIES)]
        name = f"{label}/XC{5000 + index}.ogg"
        write_audio(root / "train_audio" / name, _call(index, 6.0 + index % 4), 32000)
        rows.append({"primary_label": label, "secondary_labels": "[]", "type": "['call']", "filename": name,
                     "collection": "XC", "rating": 4.0, "url": "", "latitude": 0, "longitude": 0,
                     "scientific_name": label, "common_name": label, "author": f"author{index % 5}",
                     "license": "cc"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    for number, stem in enumerate(SOUNDSCAPES):
        wave = 0.05 * tone(300, 60.0, 32000) + np.tile(_call(number, 5.0), 12) * 0.3
        write_audio(root / "train_soundscapes" / f"{stem}.ogg", wave, 32000)
    write_audio(root / "test_soundscapes" / "H02_20230502_120000.ogg",
                0.3 * np.tile(_call(1, 5.0), 12), 32000)
    pd.DataFrame(columns=["row_id", *labels]).to_csv(root / "sample_submission.csv", index=False)
    (root / "recording_location.txt").write_text("El Silencio Natural Reserve\n")
    return root


def add_data(root: Path) -> Path:
    for folder, rate in (("add_train_audio_from_prev_comps", 32000),
                         ("add_train_audio_from_xeno_canto_28032025", 44100)):
        for number, label in enumerate(SPECIES):
            write_audio(root / folder / label / f"XC{7000 + number}.mp3", _call(number, 7.0, rate), rate)
    write_audio(root / "add_train_audio_from_prev_comps" / "notabird" / "XC1.mp3", tone(900, 6, 32000), 32000)
    pd.DataFrame({"filename": [f"{SPECIES[0]}/XC7000.mp3"], "author": ["Jane Doe"],
                  "secondary_labels": [f"['{SPECIES[1]}']"]}).to_csv(root / "prev_comps_metadata.csv", index=False)
    return root


def backbones(root: Path, names: dict[str, str]) -> Path:
    """family -> timm backbone name; each file a backbone-only state dict of that backbone."""
    import torch

    from birdclef.model import BirdClassifier

    for family, backbone in names.items():
        path = root / BACKBONE_FILES[family]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(BirdClassifier(backbone, 1).backbone_state_dict(), path)
    return root


def pseudo(root: Path, taxonomy: list[str]) -> Path:
    labels = list(dict.fromkeys(SPECIES + taxonomy))
    rng = np.random.default_rng(0)
    for priority, name in enumerate(PSEUDO_FILES):
        stems = SOUNDSCAPES[: 1 + priority % 2]
        rows = [f"{stem}_{end}" for stem in stems for end in range(5, 65, 5)]
        probabilities = rng.uniform(0, 0.2, (len(rows), len(labels)))
        probabilities[:, labels.index(SPECIES[priority % len(SPECIES)])] = 0.9
        frame = pd.DataFrame(probabilities, columns=labels)
        frame.insert(0, "row_id", rows)
        frame["primary_label"] = [labels[i] for i in probabilities.argmax(1)]
        frame["primary_label_prob"] = probabilities.max(1)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(root / name, index=False)
    return root


def parts_2023(part2: Path, part3: Path, scratch: Path) -> None:
    """The no-call zip split in two pieces, one per part; ESC-50 clips in part 2."""
    nocall = scratch / "nocall"
    for number in range(2):
        write_audio(nocall / "train_audio" / f"nocall_{number}.ogg", 0.05 * tone(200 + 50 * number, 12, 32000), 32000)
    zip_folder(nocall, scratch / "soundscapes_nocall.zip")
    data = (scratch / "soundscapes_nocall.zip").read_bytes()
    part2.mkdir(parents=True, exist_ok=True)
    part3.mkdir(parents=True, exist_ok=True)
    (part2 / "soundscapes_nocall.zip.part-aa").write_bytes(data[: len(data) // 2])
    (part3 / "soundscapes_nocall.zip.part-ab").write_bytes(data[len(data) // 2:])
    for name in ("1-100032-A-0.wav", "1-17367-A-10.wav", "2-109505-A-21.wav"):  # dog, rain, sneezing
        write_audio(part2 / "esc50" / "esc50" / "audio" / name, 0.1 * tone(700, 5, 44100), 44100)


def write_archives(folder: Path, taxonomy: list[str], backbone_names: dict[str, str],
                   recordings_per_species: int = 4) -> Path:
    """Every archive the download stage fetches, named as the fake client serves them."""
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / "work"
    builders = {
        "birdclef-2025": lambda root: competition(root, taxonomy, recordings_per_species),
        "vladimirsydor__bird-clef-2025-add-data": add_data,
        "vladimirsydor__bird-clef-2025-all-pretrained-models": lambda root: backbones(root, backbone_names),
        "vladimirsydor__bird-clef-2025-pseudo": lambda root: pseudo(root, taxonomy),
        "vladimirsydor__bird-clef-2025-pretrained-metadata": lambda root: pd.DataFrame(
            {"filename": ["a/XC1.ogg"], "primary_label": ["a"]}).to_csv(root / "pretrain_meta.csv", index=False),
    }
    for name, build in builders.items():
        (work / name).mkdir(parents=True)
        build(work / name)
    parts_2023(work / "vladimirsydor__birdclef-2023-data-part2", work / "vladimirsydor__birdclef-2023-data-part3",
               work / "scratch")
    for name in [*builders, "vladimirsydor__birdclef-2023-data-part2", "vladimirsydor__birdclef-2023-data-part3"]:
        zip_folder(work / name, folder / f"{name}.zip")
    return folder
