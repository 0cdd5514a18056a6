"""The Kubernetes manifests (deploy/kubernetes): every overlay renders with ``kubectl kustomize``, every
object is valid against the Kubernetes API schemas (kubernetes-validate) and the KEDA objects against
the schemas the project wrote from KEDA's documented fields (deploy/kubernetes/schemas), and they agree
with the rest of the project:

- every Procfile process but the dev-only simulator has a Deployment running the Procfile's command
  (defaults filled in; the web may add ``--host 0.0.0.0`` as in compose); Flower, a component, may be
  left out of an overlay (production includes it);
- every worker queue has a ScaledObject on exactly the Redis lists kombu keeps for it (one per priority
  step, named as ``core.keys`` names them), and nothing scales beat, which runs one replica, recreated;
- no secret in a manifest: no Secret object, secrets only through ``secretKeyRef`` to ``imagineq-secrets``,
  every ``IMAGINEQ_*`` variable a real setting;
- every container has resource requests and a liveness probe, the web a readiness probe on /healthz;
- only the web takes traffic from outside (NetworkPolicy), and every PodDisruptionBudget selects a
  Deployment.

Each check returns a list of problems; the last tests feed broken copies to show they can fail.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from config.celery import PRIORITY_STEPS, QUEUES
from core.keys import Keys
from tests.unit.test_deploy_files import interpolate, parse_procfile, read, setting_field

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("base", "overlays/production")
#: The oldest Kubernetes the manifests are meant for, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
#: Procfile processes with no Deployment: the simulator is a development stand-in for the upstream.
NOT_DEPLOYED = {"simulator"}
#: Procfile processes an overlay may leave out: Flower is a component (components/flower) to include.
OPTIONAL = {"flower"}
#: Arguments a Deployment may add after its Procfile line (the last ``--host`` wins).
EXTRA_ARGS = {"web": ["--host", "0.0.0.0"]}
SECRETS_NAME = "imagineq-secrets"
#: What the Redis list scalers take from a TriggerAuthentication (KEDA's redis / redis-sentinel pages).
REDIS_AUTH_PARAMETERS = {"username", "password", "sentinelUsername", "sentinelPassword", "sentinelMaster"}
#: The Redis prefix the manifests' list names assume (the redis_prefix setting's default).
PREFIX = "iq"


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/kubernetes"
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBE / overlay)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((KUBE / "schemas" / name).read_text())
    return loaded


def of_kind(objects: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return spec


# -- checks ---------------------------------------------------------------------------------------------


def schema_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    keda = {
        "ScaledObject": schema("keda-scaledobject.schema.json"),
        "TriggerAuthentication": schema("keda-triggerauthentication.schema.json"),
    }
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("keda.sh/"):
            validator = jsonschema.Draft202012Validator(keda[obj["kind"]])
            for error in validator.iter_errors(obj):
                # An anyOf that failed says why each branch did (e.g. "'sentinelMaster' is a required property").
                why = "; ".join(sorted({sub.message for sub in error.context or []}))
                problems.append(f"{name}: {error.json_path}: {error.message}" + (f" ({why})" if why else ""))
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{name} (Kubernetes {version}): {error.message}")
    for scaled in of_kind(objects, "ScaledObject"):
        spec = scaled["spec"]
        if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
            problems.append(f"ScaledObject/{scaled['metadata']['name']}: minReplicaCount > maxReplicaCount")
    for auth in of_kind(objects, "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            if ref["parameter"] not in REDIS_AUTH_PARAMETERS:
                problems.append(f"TriggerAuthentication: {ref['parameter']} is no Redis scaler parameter")
    return problems


def procfile_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    for process, line in parse_procfile(read("Procfile")).items():
        if process in NOT_DEPLOYED:
            continue
        if process not in deployments:
            if process not in OPTIONAL:
                problems.append(f"Procfile's {process} has no Deployment")
            continue
        container = containers(deployments[process])[0]
        argv = [*container.get("command", []), *container.get("args", [])]
        expected = interpolate(line).split()
        if argv not in (expected, expected + EXTRA_ARGS.get(process, [])):
            problems.append(f"Deployment {process} runs {' '.join(argv)!r}, the Procfile {' '.join(expected)!r}")
    return problems


def scaling_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(objects, "ScaledObject")}
    keys = Keys(PREFIX)
    for queue in QUEUES:
        if queue not in scaled:
            problems.append(f"no ScaledObject scales the {queue} workers")
            continue
        argv = containers(deployments[queue])[0].get("args", [])
        if "-Q" not in argv or argv[argv.index("-Q") + 1] != queue:
            problems.append(f"ScaledObject {queue} scales a Deployment that does not consume {queue}")
        lists = sorted(t["metadata"].get("listName", "") for t in scaled[queue]["spec"]["triggers"])
        expected = sorted({keys.broker_queue(queue, step) for step in PRIORITY_STEPS})
        if lists != expected:
            problems.append(f"ScaledObject {queue} watches {lists}, the queue's lists are {expected}")
    for name in scaled:
        if name not in deployments:
            problems.append(f"ScaledObject {name} targets no Deployment")
    beat = deployments.get("beat")
    if beat is None:
        problems.append("no beat Deployment")
    else:
        if "beat" in scaled:
            problems.append("beat is scaled: there must be exactly one")
        if beat["spec"].get("replicas") != 1 or beat["spec"].get("strategy", {}).get("type") != "Recreate":
            problems.append("beat must run one replica, recreated (never two during a rollout)")
    return problems


def secret_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems = [f"a Secret in the manifests: {obj['metadata']['name']}" for obj in of_kind(objects, "Secret")]
    for config in of_kind(objects, "ConfigMap"):
        for name in config.get("data", {}):
            problems += _env_problems(config["metadata"]["name"], name, from_secret=False)
    for deployment in of_kind(objects, "Deployment"):
        for container in containers(deployment):
            where = f"{deployment['metadata']['name']}/{container['name']}"
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None and ref["name"] != SECRETS_NAME:
                    problems.append(f"{where}: {env['name']} from Secret {ref['name']}, not {SECRETS_NAME}")
                problems += _env_problems(where, env["name"], from_secret=ref is not None)
    return problems


def _env_problems(where: str, name: str, *, from_secret: bool) -> list[str]:
    if name == "FLOWER_BASIC_AUTH":
        return [] if from_secret else [f"{where}: FLOWER_BASIC_AUTH (a password) not from the Secret"]
    if not name.startswith("IMAGINEQ_"):
        return []
    field = setting_field(name)
    if field is None:
        return [f"{where}: {name} is no setting"]
    secret = "SecretStr" in str(field.annotation) or field.annotation is SecretStr
    secret = secret or name.endswith(("_REDIS_URL", "_ACCOUNTS", "_INGRESS_PRINCIPALS"))  # hold credentials
    if secret and not from_secret:
        return [f"{where}: {name} holds a secret but is not taken from the Secret"]
    return []


def probe_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    for deployment in of_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        for container in containers(deployment):
            if not container.get("resources", {}).get("requests"):
                problems.append(f"{name}: no resource requests")
            if "livenessProbe" not in container:
                problems.append(f"{name}: no liveness probe")
        if name == "web":
            readiness = containers(deployment)[0].get("readinessProbe", {})
            if readiness.get("httpGet", {}).get("path") != "/healthz":
                problems.append("web: its readiness probe must be /healthz (503 while Redis is unreachable)")
            if containers(deployment)[0]["livenessProbe"].get("httpGet", {}).get("path") != "/livez":
                problems.append("web: its liveness probe must be /livez (asks nothing of Redis)")
    return problems


def exposure_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    labels = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in of_kind(objects, "Deployment")
    }
    policies = of_kind(objects, "NetworkPolicy")
    for name, pod in labels.items():
        selecting = [p for p in policies if _selects(p["spec"]["podSelector"], pod)]
        if not any("Ingress" in p["spec"].get("policyTypes", []) for p in selecting):
            problems.append(f"{name}: no NetworkPolicy restricts its ingress")
        if name != "web" and any(p["spec"].get("ingress") for p in selecting):
            problems.append(f"{name}: a NetworkPolicy lets traffic in; only the web may take any")
    for service in of_kind(objects, "Service"):
        exposed = [n for n, pod in labels.items() if _selects({"matchLabels": service["spec"]["selector"]}, pod)]
        if exposed != ["web"]:
            problems.append(f"Service {service['metadata']['name']} exposes {exposed}, not the web alone")
    for budget in of_kind(objects, "PodDisruptionBudget"):
        if not any(_selects(budget["spec"]["selector"], pod) for pod in labels.values()):
            problems.append(f"PodDisruptionBudget {budget['metadata']['name']} selects no Deployment's pods")
    return problems


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


CHECKS = (schema_problems, procfile_problems, scaling_problems, secret_problems, probe_problems, exposure_problems)


# -- the real manifests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_the_manifests_hold(overlay: str, check: Any) -> None:
    assert check(list(rendered(overlay))) == []


def test_production_reads_the_queues_through_the_sentinels() -> None:
    for scaled in of_kind(rendered("overlays/production"), "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] == "redis-sentinel" and trigger["metadata"]["sentinelMaster"], scaled
    assert {obj["metadata"].get("namespace") for obj in rendered("overlays/production")} == {"imagineq"}
    assert "flower" in {d["metadata"]["name"] for d in of_kind(rendered("overlays/production"), "Deployment")}


# -- the checks can fail --------------------------------------------------------------------------------


def broken(change: Any) -> list[dict[str, Any]]:
    objects = copy.deepcopy(list(rendered("base")))
    change(objects)
    return objects


def _deployment(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == name)


def test_a_wrong_field_or_trigger_is_refused_by_the_schemas() -> None:
    def typo(objects: list[dict[str, Any]]) -> None:
        containers(_deployment(objects, "poll"))[0]["livenesProbe"] = {}

    def bad_trigger(objects: list[dict[str, Any]]) -> None:
        of_kind(objects, "ScaledObject")[0]["spec"]["triggers"][0]["metadata"].pop("listLength")

    def sentinel_without_master(objects: list[dict[str, Any]]) -> None:
        trigger = of_kind(objects, "ScaledObject")[0]["spec"]["triggers"][0]
        trigger["type"] = "redis-sentinel"
        trigger["metadata"]["addresses"] = trigger["metadata"].pop("address")

    assert any("livenesProbe" in p for p in schema_problems(broken(typo)))
    assert any("listLength" in p for p in schema_problems(broken(bad_trigger)))
    assert any("sentinelMaster" in p for p in schema_problems(broken(sentinel_without_master)))


def test_a_command_that_drifted_from_the_procfile_is_named() -> None:
    def drift(objects: list[dict[str, Any]]) -> None:
        containers(_deployment(objects, "store"))[0]["args"][-1] = "DEBUG"

    assert procfile_problems(broken(drift)) == [
        "Deployment store runs 'celery -A workers worker -Q store -n store@%h -c 4 --prefetch-multiplier 1 -E -l "
        "DEBUG', the Procfile 'celery -A workers worker -Q store -n store@%h -c 4 --prefetch-multiplier 1 -E -l INFO'"
    ]


def test_a_missing_list_a_scaled_beat_and_an_inline_secret_are_named() -> None:
    def missing_list(objects: list[dict[str, Any]]) -> None:
        scaled = next(s for s in of_kind(objects, "ScaledObject") if s["metadata"]["name"] == "store")
        scaled["spec"]["triggers"].pop()

    def two_beats(objects: list[dict[str, Any]]) -> None:
        _deployment(objects, "beat")["spec"]["replicas"] = 2

    def inline_secret(objects: list[dict[str, Any]]) -> None:
        containers(_deployment(objects, "submit"))[0]["env"].append({"name": "IMAGINEQ_API_KEY", "value": "sk-1"})

    assert any("store watches" in p for p in scaling_problems(broken(missing_list)))
    assert any("beat must run one replica" in p for p in scaling_problems(broken(two_beats)))
    assert secret_problems(broken(inline_secret)) == [
        "submit/submit: IMAGINEQ_API_KEY holds a secret but is not taken from the Secret"
    ]


def test_a_worker_opened_to_traffic_is_named() -> None:
    def opened(objects: list[dict[str, Any]]) -> None:
        objects.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "open-store"},
                "spec": {
                    "podSelector": {"matchLabels": {"app.kubernetes.io/component": "store"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{}],
                },
            }
        )

    assert exposure_problems(broken(opened)) == ["store: a NetworkPolicy lets traffic in; only the web may take any"]
