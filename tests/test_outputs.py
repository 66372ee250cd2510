"""Stage outputs: scores written at float32 precision, files replaced whole or not at all."""

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from birdclef.outputs import (OutputError, check_output_path, folder_written_atomically, write_atomically,
                              write_scores, write_together)


def test_scores_read_back_exactly_so_faint_classes_keep_their_order(tmp_path):
    # After TopN a faint class scores ~1e-7 and below: one positive above two negatives.
    faint = np.array([3.6e-7, 1.2e-7, 1e-10], np.float32)
    spread = np.random.default_rng(0).uniform(0, 1, 1000).astype(np.float32) ** 12  # 1 down to ~1e-36
    path = tmp_path / "submission.csv"
    write_scores(pd.DataFrame({"row_id": range(3), "faint": faint}), path)
    back = pd.read_csv(path)["faint"].to_numpy(np.float32)
    assert roc_auc_score([1, 0, 0], back) == 1.0
    write_scores(pd.DataFrame({"spread": spread}), path)
    np.testing.assert_array_equal(pd.read_csv(path)["spread"].to_numpy(np.float32), spread)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics" / "infer.json"
    path.parent.mkdir()
    path.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomically(path, half_then_fail)
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["infer.json"]
    write_atomically(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["infer.json"]


def test_a_failed_set_of_writes_removes_the_folders_it_made_and_keeps_the_others(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "a.txt").write_text("earlier")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    writes = {tmp_path / "tables" / "new" / "deep" / "b.txt": lambda tmp: tmp.write_text("b"),
              tmp_path / "tables" / "new" / "c.txt": lambda tmp: tmp.write_text("c"),
              tmp_path / "fresh" / "d.txt": fail}
    with pytest.raises(OSError, match="No space left on device") as error:
        write_together(writes)
    assert error.value.filename == str(tmp_path / "fresh" / "d.txt")
    assert _tree(tmp_path) == {"tables/a.txt": "earlier"} and sorted(p.name for p in tmp_path.iterdir()) == ["tables"]
    assert [p.name for p in (tmp_path / "tables").iterdir()] == ["a.txt"]
    write_together({path: write for path, write in writes.items() if write is not fail})
    assert _tree(tmp_path) == {"tables/a.txt": "earlier", "tables/new/deep/b.txt": "b", "tables/new/c.txt": "c"}


def _tree(folder):
    return {str(path.relative_to(folder)): path.read_text() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_failed_folder_write_leaves_the_old_folder_whole(tmp_path):
    out = tmp_path / "models" / "fold0"
    out.mkdir(parents=True)
    (out / "model.pt").write_text("old weights")
    (out / "meta.json").write_text("old meta")
    with pytest.raises(RuntimeError), folder_written_atomically(out, "meta.json") as folder:
        (folder / "model.pt").write_text("new weights")
        raise RuntimeError("killed before meta.json")
    assert _tree(out) == {"model.pt": "old weights", "meta.json": "old meta"}
    assert sorted(path.name for path in out.parent.iterdir()) == ["fold0"]

    with folder_written_atomically(out, "meta.json") as folder:
        (folder / "model.pt").write_text("new weights")
    assert _tree(out) == {"model.pt": "new weights"}  # replaced whole: no old file is kept
    assert sorted(path.name for path in out.parent.iterdir()) == ["fold0"]


def test_a_run_killed_between_the_renames_gets_its_folder_back(tmp_path):
    out = tmp_path / "export"
    (tmp_path / "export.old").mkdir()  # what a kill after "rename out aside" leaves
    (tmp_path / "export.old" / "model.xml").write_text("old")
    (tmp_path / "export.tmp").mkdir()
    (tmp_path / "export.tmp" / "model.xml").write_text("half")
    with pytest.raises(RuntimeError), folder_written_atomically(out, "model.xml"):
        raise RuntimeError("fails again")
    assert _tree(out) == {"model.xml": "old"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path):
    """The old folder is already aside when the new one cannot be renamed in (here its
    temporary is gone, as a second run starting meanwhile clears it): the old one returns."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.xml").write_text("old")
    with pytest.raises(FileNotFoundError), folder_written_atomically(out, "model.xml") as folder:
        (folder / "model.xml").write_text("new")
        shutil.rmtree(folder)
    assert _tree(out) == {"model.xml": "old"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]


def test_a_folder_the_stage_did_not_write_is_refused_and_kept(tmp_path):
    data = tmp_path / "data"  # e.g. `birdclef download --out data`
    (data / "external").mkdir(parents=True)
    (data / "external" / "train.csv").write_text("mine")
    for out in (data, tmp_path / "notes.txt"):
        if out.suffix:
            out.write_text("mine")
        with pytest.raises(OutputError, match="name a new"), folder_written_atomically(out, "taxonomy.csv"):
            pass
    assert _tree(tmp_path) == {"data/external/train.csv": "mine", "notes.txt": "mine"}
    (tmp_path / "empty").mkdir()
    with folder_written_atomically(tmp_path / "empty", "taxonomy.csv") as folder:
        (folder / "taxonomy.csv").write_text("new")
    with folder_written_atomically(tmp_path / "empty", "taxonomy.csv") as folder:  # an earlier output
        (folder / "taxonomy.csv").write_text("newer")
    assert _tree(tmp_path / "empty") == {"taxonomy.csv": "newer"}


def test_a_path_no_file_can_be_written_to_is_refused_and_leaves_nothing(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="folder is a folder; name a file"):
        write_atomically(tmp_path / "folder", lambda tmp: tmp.write_text("x"))
    with pytest.raises(OutputError, match="notes.txt is a file, so no folder can hold out.csv"):
        write_atomically(tmp_path / "notes.txt" / "sub" / "out.csv", lambda tmp: tmp.write_text("x"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder", "notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine" and not any((tmp_path / "folder").iterdir())


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder that takes no new file: read-only by its mode, or /sys for root, whom modes do not stop."""
    if os.geteuid() == 0:
        yield Path("/sys")
        return
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def test_a_folder_that_takes_no_new_file_is_refused_before_the_work(unwritable_folder):
    for path, folder in [(unwritable_folder / "out.csv", False), (unwritable_folder / "new" / "out.csv", False),
                         (unwritable_folder / "raven", True), (unwritable_folder, True)]:
        with pytest.raises(OutputError, match=rf"{path}: cannot write in {unwritable_folder} \(.+\); name a path"):
            check_output_path(path, folder)
    assert not (unwritable_folder / "out.csv").exists() and not (unwritable_folder / "new").exists()


def test_a_write_into_a_folder_that_takes_no_new_file_names_the_output_and_leaves_nothing(unwritable_folder):
    for path in (unwritable_folder / "out.csv", unwritable_folder / "new" / "out.csv"):
        with pytest.raises(OSError) as error:
            write_atomically(path, lambda tmp: tmp.write_text("x"))
        assert error.value.filename in (str(path), str(path.parent))
        assert not path.parent.exists() or not any(path.parent.glob("out.csv*"))
    assert not (unwritable_folder / "new").exists()


def test_a_failed_write_names_the_output_not_its_temporary(tmp_path):
    (tmp_path / "out.csv.tmp").mkdir()  # left by something else: the write cannot open its temporary
    with pytest.raises(IsADirectoryError) as error:
        write_atomically(tmp_path / "out.csv", lambda tmp: tmp.write_text("x"))
    assert error.value.filename == str(tmp_path / "out.csv")


def test_a_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    import os

    def refuse(source, target):
        raise PermissionError(f"cannot replace {target}")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        write_atomically(tmp_path / "out.csv", lambda tmp: tmp.write_text("x"))
    assert list(tmp_path.iterdir()) == []
