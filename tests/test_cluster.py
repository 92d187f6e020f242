"""cluster.yaml is checked by Ray's own cluster-launcher schema (defaults filled, then validated)."""

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def validate(cfg: dict) -> dict:
    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)
    return full


@pytest.fixture
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validation(cluster):
    full = validate(cluster)
    assert full["provider"]["type"] == "aws"
    types = full["available_node_types"]
    assert types[full["head_node_type"]]["resources"] == {"CPU": 0}
    assert {t: types[t]["min_workers"] for t in types if t != full["head_node_type"]} == {
        "gpu.worker": 0,
        "cpu.worker": 0,
    }
    head = " ".join(full["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head  # the dashboard is not public


def test_every_node_has_its_own_credentials_and_no_world_open_ssh(cluster):
    """Workers run the trials and batch tasks that read s3://: each node type needs an instance
    profile (Ray's launcher gives only the head a default role), and a security group of the
    user's (Ray's default group opens SSH to 0.0.0.0/0)."""
    full = validate(cluster)
    for name, node_type in full["available_node_types"].items():
        config = node_type["node_config"]
        assert config.get("IamInstanceProfile", {}).get("Arn", "").startswith("arn:aws:iam::"), name
        assert config.get("SecurityGroupIds"), name
    assert "0.0.0.0/0" not in (ROOT / "cluster.yaml").read_text()


def test_nodes_run_the_prebuilt_image_and_install_nothing_heavy(cluster):
    import ray

    full = validate(cluster)
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    base = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM "))
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"  # the Ray the tests use
    assert full["docker"]["image"].split("/")[-1].startswith("colorjob:")  # built from it
    for command in full["setup_commands"]:  # at start-up, no dependency is downloaded
        assert "pip install" not in command or "--no-deps" in command, command


def test_a_typo_fails_validation(cluster):
    typo = copy.deepcopy(cluster)
    typo["available_node_types"]["gpu.worker"]["min_wokers"] = 0
    with pytest.raises(Exception, match="min_wokers"):
        validate(typo)
    top = copy.deepcopy(cluster)
    top["max_wokers"] = 3
    with pytest.raises(Exception, match="max_wokers"):
        validate(top)


def test_no_secrets_in_the_cluster_file():
    text = (ROOT / "cluster.yaml").read_text().lower()
    for word in ("aws_secret_access_key", "aws_access_key_id", "password", "token:"):
        assert word not in text
