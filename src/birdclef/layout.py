"""Where each stage's files live. The one place that names the files inside the data folders
(the folders themselves are dvc.yaml's paths and the commands' defaults).

The raw layout is the competition's (``train.csv``, ``train_audio/<label>/...``,
``train_soundscapes/``, ``sample_submission.csv``, ``taxonomy.csv``) plus folders for the
extra material the recipe uses. Both ``data.source`` values write exactly this layout, so
every later stage reads one format::

    data/raw/
      train.csv  taxonomy.csv  sample_submission.csv
      train_audio/<label>/<file>          focal recordings of the competition
      train_soundscapes/<stem>.ogg        unlabelled 1-minute soundscapes (pseudo labels)
      test_soundscapes/<stem>.ogg         soundscapes to submit for
      test_soundscapes_labels.csv         row_id + 0/1 per species (only where known: the sample)
      extra/train.csv  extra/audio/<label>/<file>        extra labelled recordings
      background/background.csv  background/audio/<file> no-call and noise clips
      pretrain/train.csv  pretrain/audio/<label>/<file>  wide-species corpus for backbones
      pseudo/*.csv                        published pseudo labels (priority = name order)
      pretrained/models_2024/...          the authors' published backbones (real data only)
    data/external/train.csv  data/external/audio/<label>/<file>   user-added (data.dvc)

Every recording is named in the store by its path relative to its root, with the
``external/`` prefix for user recordings, e.g. ``train_audio/amerob/XC1.ogg``.
"""

from __future__ import annotations

TRAIN_CSV = "train.csv"
TAXONOMY_CSV = "taxonomy.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
TEST_LABELS_CSV = "test_soundscapes_labels.csv"
BACKGROUND_CSV = "background/background.csv"

TRAIN_AUDIO = "train_audio"
TRAIN_SOUNDSCAPES = "train_soundscapes"
TEST_SOUNDSCAPES = "test_soundscapes"
EXTRA_AUDIO = "extra/audio"
EXTRA_CSV = "extra/train.csv"
BACKGROUND_AUDIO = "background/audio"
PRETRAIN_AUDIO = "pretrain/audio"
PRETRAIN_CSV = "pretrain/train.csv"
PSEUDO = "pseudo"
PUBLISHED_BACKBONES = "pretrained"

# Folders under data/raw whose audio precompute decodes into the store.
RAW_AUDIO_FOLDERS = (
    TRAIN_AUDIO,
    EXTRA_AUDIO,
    PRETRAIN_AUDIO,
    TRAIN_SOUNDSCAPES,
    TEST_SOUNDSCAPES,
    BACKGROUND_AUDIO,
)
EXTERNAL_PREFIX = "external"
EXTERNAL_AUDIO = "audio"

AUDIO_SUFFIXES = (".ogg", ".wav", ".flac", ".mp3", ".opus")

# The columns of the competition's train.csv, in its order.
TRAIN_COLUMNS = (
    "primary_label",
    "secondary_labels",
    "type",
    "filename",
    "collection",
    "rating",
    "url",
    "latitude",
    "longitude",
    "scientific_name",
    "common_name",
    "author",
    "license",
)
TAXONOMY_COLUMNS = ("primary_label", "inat_taxon_id", "scientific_name", "common_name", "class_name")
BACKGROUND_COLUMNS = ("filename", "source", "category")


def row_id(soundscape_stem: str, end_second: int) -> str:
    """Kaggle's id of one 5-s window: ``<soundscape>_<end second>``."""
    return f"{soundscape_stem}_{end_second}"
