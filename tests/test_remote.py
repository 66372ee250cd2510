"""DVC remotes on S3: push from one clone, pull into another, as the README's "Remote storage".

The S3 server is moto's, in this process, on loopback; DVC reaches it through dvc-s3 with
the `endpointurl` any S3-compatible server needs, and fake credentials from the environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, dvc, project_copy, run, tool_env

PREFIX = "birdclef"


@dataclass
class S3Remote:
    """An empty bucket on the local S3 server, and the environment DVC reaches it with."""

    endpoint: str
    bucket: str
    env: dict
    client: object

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{PREFIX}"

    def configure(self, repo: Path, name: str = "s3") -> None:
        """What the README tells users: an S3 remote as the default, its endpoint, committed."""
        dvc(["remote", "add", "-d", name, self.url], repo, self.env)
        dvc(["remote", "modify", name, "endpointurl", self.endpoint], repo, self.env)
        git(["add", ".dvc/config"], repo, self.env)
        git(["commit", "-qm", "S3 remote"], repo, self.env)

    def keys(self) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=PREFIX + "/")
        return {item["Key"] for page in pages for item in page.get("Contents", [])}


def git(args, cwd: Path, env: dict):
    return run(["git", *args], cwd, env)


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    requests = logging.getLogger("werkzeug")  # one line per S3 request otherwise
    level = requests.level
    requests.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    requests.setLevel(level)


@pytest.fixture
def s3_remote(s3_endpoint, tmp_path) -> S3Remote:
    import boto3

    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    # no profile, session token or config of this machine's user may leak into the test
    env = tool_env(**credentials, AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
                   AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(name, None)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"])
    bucket = f"birdclef-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Remote(endpoint=s3_endpoint, bucket=bucket, env=env, client=client)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def files_under(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def write_data(root: Path) -> None:
    """A folder of different kinds of files: an HDF5 shard, a binary blob, a CSV, nested."""
    import h5py

    rng = np.random.default_rng(7)
    (root / "store").mkdir(parents=True)
    with h5py.File(root / "store" / "train_audio-000.h5", "w") as handle:
        handle.create_dataset("audio", data=rng.standard_normal(100_000).astype(np.float16),
                              chunks=(65_536,), maxshape=(None,))
        handle.attrs["sample_rate"] = 32000
    (root / "blob.bin").write_bytes(rng.integers(0, 256, 3 * 2**20, dtype=np.uint8).tobytes())
    (root / "tables").mkdir()
    (root / "tables" / "index.csv").write_text("key,shard,offset,length\nx/y.ogg,0,0,100000\n")


def test_s3_round_trip(tmp_path, s3_remote):
    env = s3_remote.env
    repo = tmp_path / "repo"
    repo.mkdir()
    git(["init", "-q"], repo, env)
    dvc(["init", "-q"], repo, env)
    write_data(repo / "data")
    dvc(["add", "data"], repo, env)
    git(["add", "data.dvc", ".gitignore", ".dvc"], repo, env)
    git(["commit", "-qm", "data"], repo, env)
    s3_remote.configure(repo)
    dvc(["push"], repo, env)

    # every file and the folder's listing are objects under the remote's prefix
    original = files_under(repo / "data")
    assert len(original) == 3
    keys = s3_remote.keys()
    for name in original:
        digest = md5(repo / "data" / name)
        assert f"{PREFIX}/files/md5/{digest[:2]}/{digest[2:]}" in keys, name
    assert any(key.endswith(".dir") for key in keys)

    clone = tmp_path / "clone"
    git(["clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "data").exists() and not (clone / ".dvc" / "cache").exists()
    dvc(["pull"], clone, env)
    assert files_under(clone / "data") == original
    assert "in sync" in dvc(["status", "--cloud"], clone, env).stdout


@pytest.mark.slow
def test_pretrained_backbones_pull_into_a_fresh_clone(tmp_path, s3_remote):
    import torch
    import yaml

    env = s3_remote.env
    project = project_copy(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    for override in TINY:
        key, value = override.split("=", 1)
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        assert leaf in node, key
        node[leaf] = yaml.safe_load(value)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(["commit", "-qam", "tiny params"], project, env)

    dvc(["pull", "data.dvc"], project, env)  # from the committed default remote, offline
    dvc(["repro", "pretrain"], project, env)
    backbones = {family: project / "models/pretrained" / f"{family}.pt" for family in ("eca", "ebs")}
    assert all(path.is_file() for path in backbones.values())

    git(["add", "dvc.lock"], project, env)
    git(["commit", "-qm", "pretrained backbones"], project, env)
    s3_remote.configure(project)
    dvc(["push"], project, env)
    for path in backbones.values():
        digest = md5(path)
        assert f"{PREFIX}/files/md5/{digest[:2]}/{digest[2:]}" in s3_remote.keys()

    clone = tmp_path / "clone"
    git(["clone", "-q", str(project), str(clone)], tmp_path, env)
    dvc(["pull", "pretrain"], clone, env)
    for family, path in backbones.items():
        pulled = clone / "models/pretrained" / f"{family}.pt"
        assert pulled.read_bytes() == path.read_bytes(), family
        state = torch.load(pulled, map_location="cpu", weights_only=True)
        assert state and all(isinstance(tensor, torch.Tensor) for tensor in state.values())
    assert not (clone / "data/store").exists()  # only the stages' own outputs were fetched

    # the clone lacks the stages' inputs (data/raw, data/store: not pulled), not their outputs
    status = json.loads(dvc(["status", "pretrain", "--json"], clone, env).stdout)
    inputs_only = [{"changed deps": {"data/raw": "deleted", "data/store": "deleted"}}]
    assert status == {"pretrain@eca": inputs_only, "pretrain@ebs": inputs_only}, status
