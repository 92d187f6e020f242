"""Kubernetes as a way to launch: the KubeRay manifests in docker/k8s/ checked against KubeRay's
own CRD schemas (vendored: tests/data/kuberay-v1.7.0-crd-schemas.json.gz, from
github.com/ray-project/kuberay at v1.7.0, ray-operator/config/crd/bases) and against the
project's rules; and a private Ray that no other machine can reach."""

import gzip
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

import colorjob
from colorjob import cli

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "docker" / "k8s"
VENDORED = json.loads(gzip.decompress((Path(__file__).parent / "data" / "kuberay-v1.7.0-crd-schemas.json.gz").read_bytes()))  # fmt: skip
MANIFESTS = ["rayjob-tune.yaml", "rayjob-batch.yaml", "raycluster.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def schema_errors(doc: dict) -> list[str]:
    schema = VENDORED["schemas"][doc["kind"]]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def pods(doc: dict) -> list[tuple[str, dict]]:
    spec = cluster_spec(doc)
    out = [("head", spec["headGroupSpec"]["template"]["spec"])]
    out += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return out


def rule_errors(doc: dict) -> list[str]:
    """The project's rules for a manifest (see the module's text)."""
    errors = []
    want_image = f"YOUR_REGISTRY/colorjob:{colorjob.__version__}"
    docker_ray = re.search(r"rayproject/ray:([0-9.]+)", (ROOT / "docker" / "Dockerfile").read_text()).group(1)  # fmt: skip
    if cluster_spec(doc).get("rayVersion") != docker_ray:
        errors.append(f"rayVersion is not the image's Ray ({docker_ray})")
    for group, pod in pods(doc):
        if pod.get("serviceAccountName") != "colorjob":
            errors.append(f"{group}: not the colorjob service account (S3 through its role)")
        gpu_group = any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
        for c in pod["containers"]:
            if c["image"] != want_image:
                errors.append(f"{group}: image {c['image']} is not the project's ({want_image})")
            res = c.get("resources", {})
            gpus = {k: res.get(k, {}).get("nvidia.com/gpu") for k in ("requests", "limits")}
            if gpu_group != bool(gpus["requests"]) or gpus["requests"] != gpus["limits"]:
                errors.append(
                    f"{group}: a GPU group requests and limits GPUs (and only a GPU group)"
                )
            for env in c.get("env", []):
                if re.search(r"SECRET|ACCESS_KEY|TOKEN|PASSWORD", env["name"]) or "secretKeyRef" in json.dumps(env):  # fmt: skip
                    errors.append(f"{group}: {env['name']}: no keys in a manifest")
    if doc["kind"] == "RayJob":
        s = doc["spec"]
        for key in ("shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "activeDeadlineSeconds"):
            if not s.get(key):
                errors.append(f"spec.{key} is not set")
        errors += entrypoint_errors(s["entrypoint"])
    return errors


def entrypoint_errors(entrypoint: str) -> list[str]:
    """The entrypoint is one of the project's jobs and its flags parse as the command's do."""
    argv = shlex.split(entrypoint)
    jobs = {"jobs/tune.py": "tune", "jobs/colorize.py": "batch"}
    if argv[:1] != ["python"] or len(argv) < 2 or argv[1] not in jobs:
        return [f"entrypoint {entrypoint!r} is not python jobs/tune.py or jobs/colorize.py"]
    import importlib

    command = importlib.import_module(f"colorjob.commands.{jobs[argv[1]]}")
    try:
        command.build_parser("check").parse_args(argv[2:])
    except SystemExit:
        return [f"entrypoint flags do not parse: {argv[2:]}"]
    if "--config" in argv and not (ROOT / argv[argv.index("--config") + 1]).is_file():
        return ["--config names no file of the project"]
    return []


@pytest.mark.parametrize("name", MANIFESTS)
def test_each_manifest_passes_kuberays_schema_and_the_projects_rules(name):
    doc = load(name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert schema_errors(doc) == []
    assert rule_errors(doc) == []


def test_the_checks_catch_what_they_are_for():
    """Positive controls: a manifest broken in each way fails its check."""
    doc = load("rayjob-tune.yaml")
    broken = json.loads(json.dumps(doc))
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in e for e in schema_errors(broken))
    broken = json.loads(json.dumps(doc))
    del broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]  # fmt: skip
    assert any("GPU group" in e for e in rule_errors(broken))
    broken = json.loads(json.dumps(doc))
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"})  # fmt: skip
    assert any("no keys" in e for e in rule_errors(broken))
    broken = json.loads(json.dumps(doc))
    broken["spec"]["entrypoint"] = "python jobs/tune.py --config configs/tune.yaml --no-such-flag 3"
    assert any("do not parse" in e for e in rule_errors(broken))
    broken = json.loads(json.dumps(doc))
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = "rayproject/ray:2.60.0"  # fmt: skip
    assert any("not the project's" in e for e in rule_errors(broken))
    del broken["spec"]["shutdownAfterJobFinishes"]
    assert any("shutdownAfterJobFinishes" in e for e in rule_errors(broken))


def test_the_service_account_carries_a_role_and_no_keys():
    sa = load("serviceaccount.yaml")
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == "colorjob"
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key", text, re.IGNORECASE)


def test_the_cluster_docs_tell_a_kubernetes_user_what_to_run():
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert "kubectl apply -f docker/k8s/rayjob-tune.yaml" in docs and "kubectl logs" in docs
    assert cli.COMMANDS  # the commands the entrypoints run exist


# ---- a private Ray listens on loopback only ------------------------------------------------------
LISTENERS = """
import json, sys, psutil, ray
if sys.argv[1] == "colorjob":
    from colorjob.cluster import connect
    connect(include_dashboard=True, num_cpus=1)
else:
    ray.init(address="local", num_cpus=1, include_dashboard=True, configure_logging=False)

@ray.remote
def f():
    return 1

ray.get(f.remote())  # a worker too
me = psutil.Process()
mine = {p.pid for p in me.children(recursive=True)} | {me.pid}
found = sorted({(psutil.Process(c.pid).name(), c.laddr.ip) for c in psutil.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.pid in mine})
print(json.dumps(found))
ray.shutdown()
"""


def listeners(how: str) -> list[tuple[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}  # fmt: skip
    r = subprocess.run([sys.executable, "-c", LISTENERS, how], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return [tuple(x) for x in json.loads(r.stdout.strip().splitlines()[-1])]


def loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1",) or ip.startswith("::ffff:127.")


@pytest.mark.slow
def test_a_private_ray_listens_on_loopback_only():
    ours = listeners("colorjob")
    assert {name for name, _ in ours} >= {"gcs_server", "raylet"}  # it sees Ray's servers
    assert [x for x in ours if not loopback(x[1])] == []
    plain = listeners("plain")  # positive control: Ray's default listens beyond loopback
    assert [x for x in plain if not loopback(x[1])]
