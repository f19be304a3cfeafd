"""The Kubernetes manifests (deploy/k8s): the base and every overlay render with `kubectl kustomize`, each
object validates offline against the Kubernetes and prometheus-operator schemas, and the renders hold what
the schemas cannot check. Then two real gateways run on the base's settings and reload the policies
ConfigMap as kubelet swaps it in place."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from pydantic import BaseModel

from gateway.settings import load_settings
from router.policy import default_policy_dir, load_policy_set
from tests.gateway_process import GATEWAY_BIN, GatewayProcess, start_gateway
from tests.services import redis_url
from vllm_sim.config import SimConfig
from vllm_sim.serving import SimServer

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", **{o: K8S / "overlays" / o for o in ("dev", "gpu", "prod")}}
OVERLAYS = ("dev", "gpu", "prod")
GPU_OVERLAYS = ("gpu", "prod")
# The oldest Kubernetes the manifests are for (preStop's `sleep` action: 1.30+); kubernetes-validate ships it.
KUBERNETES_VERSION = "1.33.0"
CRD_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
}
POLICIES_MOUNT = "/etc/gateway/policies"
SECRETS_EXAMPLE = K8S / "base" / "secrets.example.env"
COMPOSE_ALERTS = ROOT / "deploy" / "compose" / "prometheus" / "alerts.yaml"
WORKLOADS = ("Deployment", "StatefulSet", "Job")

Obj = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: these tests render deploy/k8s with `kubectl kustomize` (kubectl 1.27+, "
                    "kustomize built in). Install it: https://kubernetes.io/docs/tasks/tools/")
    return found


@functools.cache
def rendered(name: str) -> tuple[Obj, ...]:
    done = subprocess.run([kubectl(), "kustomize", str(KUSTOMIZATIONS[name])], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {KUSTOMIZATIONS[name]} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def render(name: str) -> list[Obj]:
    """A copy each test may change."""
    return copy.deepcopy(list(rendered(name)))


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_specs(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for o in objs:
        if o["kind"] in WORKLOADS:
            yield o, o["spec"]["template"]["spec"]


def config_map(objs: list[Obj], prefix: str) -> Obj:
    """The ConfigMap generated as `prefix` (its name may carry kustomize's hash suffix)."""
    found = [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].rsplit("-", 1)[0] == prefix
             or o["metadata"]["name"] == prefix]
    assert len(found) == 1, [o["metadata"]["name"] for o in found]
    return found[0]


def gateway_pod(objs: list[Obj]) -> tuple[Obj, Obj]:
    spec = one(objs, "Deployment", "gateway")["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "gateway"]
    return spec, container


def ours(container: Obj) -> bool:
    """A container of the gateway's image (the gateway, the migration, the simulated workers)."""
    image: str = container["image"]
    return image.split("@")[0].split(":")[0].rsplit("/", 1)[-1] == "llm-gateway"


def validate(obj: Obj) -> None:
    """Kubernetes' own kinds against its OpenAPI schemas (strict: unknown fields refused); the
    prometheus-operator kinds against its models, strictly: what they do not keep or convert is refused."""
    model = CRD_MODELS.get((obj["apiVersion"], obj["kind"]))
    if model is None:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        return
    again = model.model_validate(obj).model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert again == obj, f"{obj['kind']} {obj['metadata']['name']}: fields its schema does not know, or values " \
                         f"of another type:\n{yaml.safe_dump(obj)}\nread as\n{yaml.safe_dump(again)}"


# --- rendering and schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_each_kustomization_renders_and_validates_offline(name: str) -> None:
    objs = render(name)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "ConfigMap", "Job", "NetworkPolicy", "ServiceAccount"} <= kinds, kinds
    assert len({(o["kind"], o["metadata"]["name"]) for o in objs}) == len(objs)
    for obj in objs:
        try:
            validate(obj)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            raise AssertionError(f"{name}: {obj['kind']} {obj['metadata']['name']}: {path}: {error.message}") from None


def test_the_validators_refuse_what_a_cluster_would() -> None:
    """The offline checks above can fail: a misspelt field, a missing required one, a wrong type."""
    objs = render("base")
    deployment = one(objs, "Deployment", "gateway")
    validate(deployment)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    without = copy.deepcopy(deployment)
    del without["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["maxSkew"]
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    for bad in (typo, without, wrong):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(bad)
    rule = one(objs, "PrometheusRule", "gateway")
    validate(rule)
    misspelt = copy.deepcopy(rule)
    misspelt["spec"]["groups"][0]["rules"][0]["fro"] = misspelt["spec"]["groups"][0]["rules"][0].pop("for")
    monitor = copy.deepcopy(one(objs, "ServiceMonitor", "gateway"))
    monitor["spec"]["endpoints"][0]["interval"] = 15
    for bad in (misspelt, monitor):
        with pytest.raises((AssertionError, ValueError)):
            validate(bad)


# --- what the schemas cannot check -------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_service_selects_pods_and_names_their_port(name: str) -> None:
    objs = render(name)
    for service in of_kind(objs, "Service"):
        selector = service["spec"]["selector"]
        pods = [(o, spec) for o, spec in pod_specs(objs) if o["kind"] != "Job"
                and selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()]
        if not pods:
            assert name == "base" and service["metadata"]["name"] != "gateway", service["metadata"]["name"]
            continue  # the base's pools name worker Services an overlay adds
        for workload, spec in pods:
            assert workload["spec"]["selector"]["matchLabels"].items() <= \
                workload["spec"]["template"]["metadata"]["labels"].items()
            ports = {p.get("name"): p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                target = port["targetPort"]
                assert target in ports or target in ports.values(), (service["metadata"]["name"], target, ports)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_gateway_pod_probes_drains_and_is_locked_down(name: str) -> None:
    objs = render(name)
    spec, gateway = gateway_pod(objs)
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": 8080} and "--port" in gateway["args"] and "8080" in gateway["args"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = gateway[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == 8080, (probe, get)
    # Endpoints go before SIGTERM; then the gateway's 10 s drain and the records' flush fit the grace period.
    pre_stop = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5 and spec["terminationGracePeriodSeconds"] >= pre_stop + 10 + 15
    assert spec["automountServiceAccountToken"] is False
    account = one(objs, "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert spec["topologySpreadConstraints"] and all(
        c["labelSelector"]["matchLabels"].items() <= one(objs, "Deployment", "gateway")["spec"]["template"]
        ["metadata"]["labels"].items() for c in spec["topologySpreadConstraints"])
    for resource in ("cpu", "memory"):
        assert resource in gateway["resources"]["requests"] and resource in gateway["resources"]["limits"]
    mounts = {m["mountPath"]: m for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    state = volumes[mounts["/var/lib/gateway"]["name"]]
    if name == "prod":  # one ReadWriteMany volume: a live replica replays what a deleted pod's spool held
        claim = one(objs, "PersistentVolumeClaim", state["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and "emptyDir" not in state
    else:  # kept across a container's restart, which replays it
        assert "emptyDir" in state
    settings = gateway_settings(objs)
    assert settings["state_dir"] == "/var/lib/gateway" and settings["policies_dir"] == POLICIES_MOUNT


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_containers_run_as_non_root_on_a_read_only_root(name: str) -> None:
    objs = render(name)
    checked = 0
    for workload, spec in pod_specs(objs):
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", workload["metadata"]["name"]
        for c in spec["containers"] + spec.get("initContainers", []):
            security = c.get("securityContext", {})
            where = f"{workload['metadata']['name']}/{c['name']}"
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            if c["image"].startswith("vllm/vllm-openai"):
                continue  # the upstream engine runs as root and writes its caches (the gpu namespace: baseline)
            assert security.get("readOnlyRootFilesystem") is True, where
            assert (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")) is True, where
            user = security.get("runAsUser", pod_security.get("runAsUser"))
            assert isinstance(user, int) and user > 0, where
            if ours(c):
                assert user == 10001, where
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_policies_configmap_is_mounted_as_a_directory_and_updated_in_place(name: str) -> None:
    objs = render(name)
    spec, gateway = gateway_pod(objs)
    (mount,) = [m for m in gateway["volumeMounts"] if m["mountPath"] == POLICIES_MOUNT]
    assert "subPath" not in mount and "subPathExpr" not in mount  # a subPath mount never sees an update
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    # No `items`: every key is a file; no hash suffix: `kubectl apply` updates the same ConfigMap in place.
    assert volume["configMap"] == {"name": "gateway-policies"}
    data = one(objs, "ConfigMap", "gateway-policies")["data"]
    assert {"models.yaml", "classify.yaml", "routing.yaml", "prices.yaml", "predictor"} == set(data)


def test_the_policies_copy_is_the_shipped_policy_byte_for_byte() -> None:
    """Kustomize reads no file outside a kustomization: base/policies/ is a copy of policies/, kept equal here."""
    copied = K8S / "base" / "policies"
    files = sorted(p.relative_to(copied) for p in copied.rglob("*") if p.is_file())
    assert files, copied
    for rel in files:
        assert (copied / rel).read_bytes() == (ROOT / "policies" / rel).read_bytes(), (
            f"{copied / rel} differs from policies/{rel}: copy it again (cp policies/{rel} {copied / rel})")
    for name in ("models.yaml", "classify.yaml", "routing.yaml", "prices.yaml", "predictor/predictor.json"):
        assert Path(name) in files, name


def test_the_policies_configmap_loads_as_the_shipped_policy(tmp_path: Path) -> None:
    data = one(render("base"), "ConfigMap", "gateway-policies")["data"]
    for key, text in data.items():
        (tmp_path / key).write_text(text)
    assert load_policy_set(tmp_path).hash == load_policy_set(default_policy_dir()).hash


def gateway_settings(objs: list[Obj]) -> dict[str, Any]:
    text = config_map(objs, "gateway-config")["data"]["gateway.yaml"]
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def example_secret_keys() -> set[str]:
    """The keys of the Secret `gateway-secrets` the operator creates from base/secrets.example.env."""
    lines = [line.strip() for line in SECRETS_EXAMPLE.read_text().splitlines()]
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_secret_key_referenced_exists(name: str) -> None:
    objs = render(name)
    secrets = {s["metadata"]["name"]: set(s.get("data", {})) | set(s.get("stringData", {}))
               for s in of_kind(objs, "Secret")}
    referenced = 0
    for workload, spec in pod_specs(objs):
        for c in spec["containers"]:
            where = f"{workload['metadata']['name']}/{c['name']}"
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is None or ref.get("optional"):
                    continue
                # A Secret of the render (dev's generated one, under its generated name), else the operator's.
                known = secrets[ref["name"]] if ref["name"] in secrets else (
                    example_secret_keys() if ref["name"] == "gateway-secrets" else set())
                assert ref["key"] in known, f"{where}: {ref}"
                referenced += 1
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, f"{where}: {source}"
    assert referenced >= 4  # the gateway's three, the migration's database URL
    assert name != "dev" or secrets, "dev generates its Secret"
    # The connection strings and the key-hash secret never sit in the settings file.
    assert not {"database_url", "key_hash_secret", "redis_url"} & set(gateway_settings(objs))


@pytest.mark.parametrize("name", OVERLAYS)
def test_each_overlays_settings_load_and_their_pools_name_services_of_the_render(name: str, tmp_path: Path) -> None:
    objs = render(name)
    text = config_map(objs, "gateway-config")["data"]["gateway.yaml"]
    (tmp_path / "gateway.yaml").write_text(text)
    settings = load_settings(tmp_path / "gateway.yaml", env={})
    assert settings.pools and all(p.launch is None for p in settings.pools)  # workers are the cluster's
    services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in of_kind(objs, "Service")}
    for pool in settings.pools:
        for url in pool.replicas:
            parts = urlsplit(url)
            assert parts.hostname in services and parts.port in services[parts.hostname], (pool.name, url, services)
    # Apart from the pools, every overlay runs the base's settings.
    base = gateway_settings(render("base"))
    mine = yaml.safe_load(text)
    assert {k: v for k, v in mine.items() if k != "pools"} == {k: v for k, v in base.items() if k != "pools"}


@pytest.mark.parametrize("name", GPU_OVERLAYS)
def test_the_gpu_workers_request_gpus_and_are_ready_on_health(name: str) -> None:
    objs = render(name)
    engines = [(o, spec) for o, spec in pod_specs(objs)
               if any(c["image"].startswith("vllm/vllm-openai:") for c in spec["containers"])]
    assert len(engines) == 2
    claims = {c["metadata"]["name"] for c in of_kind(objs, "PersistentVolumeClaim")}
    for workload, spec in engines:
        (c,) = spec["containers"]
        gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus >= 1 and int(c["resources"]["requests"]["nvidia.com/gpu"]) == gpus
        if gpus > 1:
            assert f"--tensor-parallel-size={gpus}" in c["args"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        get = c["readinessProbe"]["httpGet"]
        assert get["path"] == "/health" and ports.get(get["port"], get["port"]) == 8000
        assert "--port=8000" in c["args"] and any(a.startswith("--served-model-name=") for a in c["args"])
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] in claims
        assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
        assert workload["spec"]["strategy"]["type"] == "Recreate"
    # Each pool's model is the name its engine serves.
    served = {a.split("=", 1)[1] for _, spec in engines for a in spec["containers"][0]["args"]
              if a.startswith("--served-model-name=")}
    assert {p["model"] for p in gateway_settings(objs)["pools"]} == served


def test_dev_simulates_the_workers_with_the_gateways_image() -> None:
    objs = render("dev")
    settings = gateway_settings(objs)
    for pool in settings["pools"]:
        (url,) = pool["replicas"]
        workload = one(objs, "Deployment", urlsplit(url).hostname or "")
        (c,) = workload["spec"]["template"]["spec"]["containers"]
        assert ours(c) and c["args"][:3] == ["sim", "--model", pool["model"]]
    assert one(objs, "Deployment", "gateway")["spec"]["replicas"] == 1
    assert not of_kind(objs, "HorizontalPodAutoscaler") and not of_kind(objs, "PodDisruptionBudget")


def test_prod_pins_the_image_and_keeps_three_gateways() -> None:
    objs = render("prod")
    images = {c["image"] for _, spec in pod_specs(objs) for c in spec["containers"] if ours(c)}
    assert len(images) == 1 and "@sha256:" in next(iter(images)), images  # the gateway and its migration
    hpa = one(objs, "HorizontalPodAutoscaler", "gateway")["spec"]
    pdb = one(objs, "PodDisruptionBudget", "gateway")["spec"]
    assert 3 <= hpa["minReplicas"] < hpa["maxReplicas"] and 2 <= pdb["minAvailable"] < hpa["minReplicas"]
    spec, gateway = gateway_pod(objs)
    assert gateway["resources"]["requests"] == gateway["resources"]["limits"]  # Guaranteed QoS
    by_host = [c for c in spec["topologySpreadConstraints"] if c["topologyKey"] == "kubernetes.io/hostname"]
    assert [c["whenUnsatisfiable"] for c in by_host] == ["DoNotSchedule"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_migration_job_runs_the_gateways_image_once(name: str) -> None:
    objs = render(name)
    job = one(objs, "Job", "gateway-db-upgrade")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["db", "upgrade"] and c["image"] == gateway_pod(objs)[1]["image"]
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_network_policy_and_the_scrape_cover_the_gateway(name: str) -> None:
    objs = render(name)
    labels = one(objs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    policy = one(objs, "NetworkPolicy", "gateway")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == {8080}
    egress = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, 5432, 6379, 8000, 4318} <= egress
    monitors = of_kind(objs, "ServiceMonitor")
    if name == "dev":
        assert not monitors  # a development cluster seldom has Prometheus Operator
        return
    (monitor,) = monitors
    service = one(objs, "Service", "gateway")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [service["spec"]["ports"][0]["name"]]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_the_prometheus_rule_is_the_compose_stacks_rule_file() -> None:
    rule = one(render("base"), "PrometheusRule", "gateway")
    assert rule["spec"] == yaml.safe_load(COMPOSE_ALERTS.read_text())
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {"GatewayHighErrorRate", "GatewayNoHealthyReplica", "GatewayAccountingSpoolGrowing",
                      "GatewayBudgetNearlySpent"}


# --- policy hot reload through kubelet's atomic writer -----------------------------------------------------


def kubelet_write(target: Path, files: Mapping[str, str], stamp: str) -> None:
    """What kubelet does to a ConfigMap volume: the files in a new timestamped directory, a `..data_tmp`
    symlink to it renamed over `..data` (atomic), a symlink per key into `..data`, the old directory removed."""
    data = target / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    fresh = target / f"..{stamp}"
    fresh.mkdir()
    for name, text in files.items():
        (fresh / name).write_text(text)
    os.symlink(fresh.name, target / "..data_tmp")
    os.rename(target / "..data_tmp", data)
    for name in files:
        if not (target / name).is_symlink():
            os.symlink(f"..data/{name}", target / name)
    if old is not None:
        shutil.rmtree(target / old)


def policy_status(gw: GatewayProcess) -> dict[str, Any]:
    r = httpx.get(gw.base_url + "/admin/policy", headers=gw.auth, timeout=5)
    assert r.status_code == 200, r.text
    status: dict[str, Any] = r.json()
    return status


def test_two_gateways_reload_the_policies_configmap_in_place(tmp_path: Path, pg_database: str) -> None:
    """Two gateways (two pods) on the base's settings, one PostgreSQL and one Redis, the policies mounted as
    kubelet mounts a ConfigMap: a new version swapped in reaches both, the same hash, without a restart."""
    objs = render("base")
    shipped: dict[str, str] = one(objs, "ConfigMap", "gateway-policies")["data"]
    mount = tmp_path / "policies"
    mount.mkdir()
    kubelet_write(mount, shipped, "2026_01_05_10_00_00.000000001")
    settings = gateway_settings(objs)
    secrets = {"GATEWAY_DATABASE_URL": pg_database, "GATEWAY_KEY_HASH_SECRET": "k8s-test-secret",
               "GATEWAY_REDIS_URL": redis_url()}
    with SimServer(SimConfig(model="demo-small")) as small, SimServer(SimConfig(model="demo-large")) as large:
        config = {**settings, "host": "127.0.0.1", "policies_dir": str(mount),
                  "prices_file": str(mount / "prices.yaml"),
                  "pools": [{**settings["pools"][0], "replicas": [small.url]},
                            {**settings["pools"][1], "replicas": [large.url]}]}
        # The migration Job's command, on the same settings file.
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        migrated = subprocess.run([str(GATEWAY_BIN), "db", "upgrade"], capture_output=True, text=True, timeout=120,
                                  env={**env, **secrets, "GATEWAY_CONFIG": str(tmp_path / "gateway.yaml")})
        assert migrated.returncode == 0 and "(up to date)" in migrated.stdout, migrated.stderr
        gateways = []
        try:
            for pod in ("a", "b"):
                state = tmp_path / pod / "state"
                gateways.append(start_gateway(tmp_path / pod, {**config, "state_dir": str(state)}, env=secrets))
            before = [policy_status(gw) for gw in gateways]
            assert {s["hash"] for s in before} == {load_policy_set(default_policy_dir()).hash}
            assert all(s["quality_target"] == 0.55 for s in before)

            for stamp, target in (("2026_01_05_10_05_00.000000002", 0.7), ("2026_01_05_10_10_00.000000003", 0.55)):
                edited = {**shipped, "routing.yaml": shipped["routing.yaml"].replace(
                    "quality_target: 0.55", f"quality_target: {target}")}
                assert edited["routing.yaml"].count(f"quality_target: {target}") == 1
                kubelet_write(mount, edited, stamp)
                expected = load_policy_set(mount / f"..{stamp}").hash
                deadline = time.monotonic() + 10
                while {policy_status(gw)["hash"] for gw in gateways} != {expected}:
                    assert time.monotonic() < deadline, [policy_status(gw) for gw in gateways]
                    time.sleep(0.1)
                now = [policy_status(gw) for gw in gateways]
                assert all(s["quality_target"] == target and s["last_error"] is None for s in now)
                assert all(gw.process.poll() is None for gw in gateways)  # reloaded, not restarted
            assert sorted(p.name for p in mount.iterdir() if p.name.startswith("..2026")) == \
                ["..2026_01_05_10_10_00.000000003"]
        finally:
            for gw in gateways:
                gw.stop()
        assert all("policy reload refused" not in gw.log() for gw in gateways), [gw.log()[-2000:] for gw in gateways]

