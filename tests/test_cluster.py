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
    import ray

    assert full["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    types = full["available_node_types"]
    assert types[full["head_node_type"]]["resources"] == {"CPU": 0}
    assert {t: types[t]["min_workers"] for t in types if t != full["head_node_type"]} == {
        "gpu.worker": 0,
        "cpu.worker": 0,
    }
    assert any("pip install" in c and "colorjob" in c for c in full["setup_commands"])
    head = " ".join(full["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head  # the dashboard is not public


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
