"""deploy/kuberay agrees with cluster.yaml: the same Ray image and version, the same auth
mode on every pod, GPU workers, and a RayJob that runs a real search and then deletes its
cluster. (No Kubernetes here: the manifests are parsed and checked, not applied.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"


def load(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def containers(spec: dict) -> list[dict]:
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def auth_modes(items: list[dict]) -> set[str]:
    return {e["value"] for c in items for e in c.get("env", []) if e["name"] == "RAY_AUTH_MODE"}


def test_manifests_agree_with_cluster_yaml():
    aws = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    base = aws["docker"]["image"]  # rayproject/ray:2.60.0-gpu
    ray_version = re.search(r":(\d+\.\d+\.\d+)", base).group(1)
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    assert f"FROM {base}\n" in dockerfile  # the project's image is built on the same one
    tag = base.split(":")[1]
    cluster, job = load("raycluster.yaml"), load("rayjob.yaml")
    assert cluster["kind"] == "RayCluster" and job["kind"] == "RayJob"
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray_version
    # The pinned Ray of the project is the cluster's.
    assert (
        f"ray[default,tune,train,serve]>={ray_version.rsplit('.', 1)[0]}"
        in (ROOT / "pyproject.toml").read_text()
    )
    pods = containers(spec) + job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert {c["image"].rsplit(":", 1)[1] for c in pods} == {tag}
    assert len({c["image"] for c in pods}) == 1
    aws_modes = {
        c.split("RAY_AUTH_MODE=")[1].split()[0]
        for c in aws["head_start_ray_commands"] + aws["worker_start_ray_commands"]
        if "ray start" in c
    }
    assert auth_modes(pods) == aws_modes and all(auth_modes([c]) for c in pods)  # every pod sets it


def test_workers_are_gpu_nodes_and_the_head_trains_nothing():
    spec = load("raycluster.yaml")["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        for c in group["template"]["spec"]["containers"]:
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["enableInTreeAutoscaling"] is True


def test_rayjob_runs_a_search_and_deletes_its_cluster():
    from melanoma_cli import build_parser

    job = load("rayjob.yaml")["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    assert job["rayClusterSpec"] == load("raycluster.yaml")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[0] == "melanoma"
    args = build_parser().parse_args(argv[1:])  # a command the CLI accepts as written
    assert args.command == "search" and args.address == "auto"
    assert args.storage.startswith("s3://")
    from experiments import bundled

    assert args.experiment in bundled()  # a shipped experiment, found inside the image
