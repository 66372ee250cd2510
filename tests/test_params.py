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
