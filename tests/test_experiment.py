"""`experiment=birdclef2025` composes every value of the seed's selected recipe (spec §2)."""

import pytest
import yaml

from conftest import compose_params, dvc, project_copy

SEED_RECIPE = {  # key path -> the seed's value (reference/seed-spec.md §2.1, §2.2, §2.4, §2.6, §2.7)
    "data.source": "birdclef2025",
    "seed": 1243,
    "loss": "focal_bce",
    "families": ["eca", "ebs"],
    "folds": [0, 1, 2, 3, 4],
    "audio.sample_rate": 32000,
    "audio.window_seconds": 5.0,
    "prepare.n_folds": 5,
    "prepare.split_seed": 42,
    "prepare.rare_max_recordings": 10,
    "family.eca.backbone": "eca_nfnet_l0",
    "family.eca.optimizer": "radam",
    "family.eca.lr": 1.0e-3,
    "family.eca.weight_decay": 0.0,
    "family.eca.sampler": "sqrt",
    "family.eca.split": "allbirds",
    "family.eca.oversample": True,
    "family.ebs.backbone": "tf_efficientnetv2_s.in21k",
    "family.ebs.optimizer": "adamw",
    "family.ebs.lr": 1.0e-4,
    "family.ebs.weight_decay": 0.01,
    "family.ebs.sampler": "balanced",
    "family.ebs.split": "rare_noleak",
    "family.ebs.oversample": False,
    "train.epochs": 50,
    "train.validate_every": 1,
    "train.batch_size": 64,
    "train.precision": "32-true",
    "train.min_lr": 1.0e-6,
    "train.label_smoothing": 0.05,
    "train.hidden": 512,
    "train.augment.mixup_p": 0.5,
    "train.augment.background_p": 0.5,
    "train.augment.background_weight": [0.25, 0.75],
    "train.augment.filtering_bands": 4,
    "train.augment.filtering_min_db": -20.0,
    "train.augment.spec_freq_width": 10,
    "train.augment.spec_time_width": 20,
    "train.augment.spec_max_masks": 3,
    "train.augment.spec_p": 0.3,
    "pseudo.min_primary_prob": 0.5,
    "pseudo.trim_prob": 0.1,
    "pseudo.swap_p": 0.4,
    "pseudo.published": [
        "eca_124__eca_117__eca_112__eca_118__eca_113__ebs_123__eca_120__eca_121/v0_0.csv",
        "double_eca_nfnet_l0_AllFPseudoI1/v0_0.csv",
        "best_ensem_19052025/v0.csv",
    ],
    "rounds": [{"name": "round0", "pseudo": "data/raw/pseudo"}],
    "export.round": "round0",
    "pretrain.source": "published",
    "pretrain.published.eca": "models_2025/eca_nfnet_l0_pretrain_from_bigXCV2_best.ckpt",
    "pretrain.published.ebs": "models_2024/tf_efficientnetv2_s_in21k_Pretrainversion1.pth",
    "infer.top_n": 1,
    "prepare.oversample.turvul": 96,
    "prepare.oversample.rufmot1": 10,
}
ESC50_CATEGORIES = ["dog", "rain", "insects", "hen", "engine", "hand_saw", "pig", "rooster", "sea_waves", "cat",
                    "crackling_fire", "thunderstorm", "chainsaw", "train", "sheep", "wind", "footsteps", "frog",
                    "cow", "crickets"]


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    path = compose_params(tmp_path_factory.mktemp("params") / "params.yaml", ["experiment=birdclef2025"])
    return yaml.safe_load(path.read_text())


def value(params: dict, dotted: str):
    for part in dotted.split("."):
        params = params[part]
    return params


@pytest.mark.parametrize("key", sorted(SEED_RECIPE))
def test_recipe_value(composed, key):
    assert value(composed, key) == SEED_RECIPE[key], key


def test_one_round_on_the_published_pseudo_labels(composed):
    """The seed's selected models: no teacher, so no pseudo stage (`teachers` drives its foreach)."""
    assert composed["rounds"] == [{"name": "round0", "pseudo": "data/raw/pseudo"}]
    assert composed["teachers"] == {}
    assert composed["export"]["round"] == "round0"


def test_oversampling_table_is_the_seeds(composed):
    table = composed["prepare"]["oversample"]
    assert len(table) == 59 and sum(table.values()) == 2751


def test_background_categories_are_the_seeds_esc50_subset(composed):
    assert sorted(composed["train"]["augment"]["background_categories"]) == sorted(ESC50_CATEGORIES)


def test_composition_validates_against_the_schema(composed, tmp_path):
    from birdclef.params import load_params

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(composed))
    params = load_params(path)
    assert params.data.sample is None and params.family["eca"].backbone == "eca_nfnet_l0"


# README, "Your own model family": the command's -S overrides, as `dvc exp run` hands them to Hydra.
OWN_FAMILY = ["families=[eca,ebs,res]",
              "+family.res={backbone:resnet10t,optimizer:adamw,lr:3e-3,weight_decay:0.01,sampler:sqrt,"
              "split:allbirds,oversample:true}",
              "+infer.family_weights.res=1.0"]


def test_an_own_family_composes_and_joins_every_per_family_stage(tmp_path):
    from birdclef.params import load_params
    from birdclef.train import build_model

    project = project_copy(tmp_path / "project")
    params = load_params(compose_params(project / "params.yaml", OWN_FAMILY, project))
    res = params.family["res"]
    assert (res.backbone, res.lr, res.oversample, params.infer.family_weights["res"]) == ("resnet10t", 3e-3, True, 1.0)
    build_model(res, 8, params.train, params.audio.sample_rate)  # timm builds it for spectrograms
    stages = set(dvc(["stage", "list", "--name-only"], project).stdout.split())
    per_family = {"pretrain@res", "export@res", *(f"train@{round}-res-{fold}" for round in ("round0", "round1")
                                                  for fold in range(5))}
    assert per_family <= stages, sorted(per_family - stages)
