"""params.yaml's checks that keep a wrong value from failing late, deep inside a stage."""

import math
import re

import pytest
import yaml

from birdclef.params import ParamsError, load_params
from conftest import REPO


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["infer"].update(family_weights={"eca": 0, "ebs": 0}),
     "'infer.family_weights' gives every family in 'families' weight 0, so there is nothing to average"),
    (lambda p: p["infer"].update(family_weights={"eca": -1, "ebs": 2}),
     "'infer.family_weights' has eca: -1.0; a weight must be a number, 0 or more"),
    (lambda p: p["infer"].update(family_weights={"eca": math.nan, "ebs": 1}), "'infer.family_weights' has eca: nan"),
    (lambda p: p["infer"].update(family_weights={"eca": 1, "ebs": math.inf}), "'infer.family_weights' has ebs: inf"),
    (lambda p: p["infer"].update(family_weights=[1, 1]), "bad value at 'infer.family_weights': "),
    (lambda p: p.update(folds={"a": 1}), "bad value at 'folds': "),
    (lambda p: p.update(train=[1]), "bad value at 'train': "),
    (lambda p: p.update(families=[]), "'families' needs at least one family."),
    (lambda p: p.update(folds=[]), "'folds' needs at least one fold."),
    (lambda p: p.update(folds=[0, 0]), "'folds' [0, 0] lists a fold twice"),
    (lambda p: p["prepare"].update(n_folds=-3), "'prepare.n_folds' is -3; it must be 2 or more"),
    (lambda p: p["family"]["eca"].update(lr=-0.1), "'family.eca' has lr -0.1 and weight_decay"),
    (lambda p: p["family"]["ebs"].update(weight_decay=-1), "'family.ebs' has lr"),
    (lambda p: p["pretrain"].update(lr=0), "'pretrain.lr' is 0.0; it must be more than 0."),
    (lambda p: p["train"]["augment"].update(mixup_p=1.5), "'train.augment.mixup_p' is 1.5; a probability"),
    (lambda p: p["train"]["augment"].update(spec_p=-1), "'train.augment.spec_p' is -1.0; a probability"),
    (lambda p: p["pseudo"].update(min_primary_prob=2), "'pseudo.min_primary_prob' is 2.0; a probability"),
    (lambda p: p["train"]["augment"].update(spec_max_masks=-2), "'train.augment.spec_max_masks' is -2"),
    (lambda p: p["train"].update(label_smoothing=2), "'train.label_smoothing' is 2.0; it must lie in [0, 1)"),
    (lambda p: p["train"]["augment"].update(background_weight=[0.8, 0.2]),
     "'train.augment.background_weight' is [0.8, 0.2]; give the range"),
    (lambda p: p["train"]["augment"].update(background_weight=[0.5]), "'train.augment.background_weight' is [0.5]"),
    (lambda p: p["train"]["augment"].update(filtering_min_db=20), "'train.augment.filtering_min_db' is 20.0"),
    (lambda p: p["train"]["augment"].update(filtering_bands=0), "'train.augment.filtering_bands' is 0"),
    (lambda p: p.update(seed=-1), "'seed' is -1; it must lie in 0..4294967295."),
])
def test_wrong_params_are_named(tmp_path, edit, message):
    settings = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(settings)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_params(tmp_path / "params.yaml")


def test_a_family_may_weigh_0_while_another_weighs_more(tmp_path):
    settings = yaml.safe_load((REPO / "params.yaml").read_text())
    settings["infer"]["family_weights"] = {"eca": 0, "ebs": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    assert load_params(tmp_path / "params.yaml").infer.family_weights == {"eca": 0.0, "ebs": 1.0}
