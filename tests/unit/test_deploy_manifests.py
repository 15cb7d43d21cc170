"""What the deployment files promise beyond their schemas.

scripts/check-deploy.sh checks that deploy/kubernetes and deploy/swarm are
valid for their engines; these tests read the same files and check what a
schema cannot: each pod sees only its own role's secret key, the
NetworkPolicies allow exactly the flows of SPEC section 2, the endpoints in
the config name the pods that really exist, and every pod is non-root with
probes, limits and a SIGTERM grace period.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
STACK = ROOT / "deploy" / "swarm" / "stack.yml"
ROLES = ("catalog", "order1", "order2", "order3", "frontend", "client")
PUBLIC_KEYS = {f"{role}.key" for role in ROLES}

# SPEC section 2: who may open a connection to which port (callers by role).
CATALOG_RPC, CATALOG_PUB, ORDER_RPC, HTTP = 5555, 5556, 5561, 8080
EXPECTED_FLOWS = {
    ("frontend", "catalog", CATALOG_RPC),
    ("order", "catalog", CATALOG_RPC),
    ("client", "catalog", CATALOG_RPC),
    ("frontend", "catalog", CATALOG_PUB),
    ("frontend", "order", ORDER_RPC),
    ("order", "order", ORDER_RPC),
    ("client", "order", ORDER_RPC),
    ("outside", "frontend", HTTP),
}


@cache
def k8s_objects() -> tuple[dict, ...]:
    objects = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(objects)


def by_kind(kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == kind}


def workloads() -> dict[str, dict]:
    return {**by_kind("StatefulSet"), **by_kind("Deployment")}


def pod_spec(name: str) -> dict:
    return workloads()[name]["spec"]["template"]["spec"]


def main_container(name: str) -> dict:
    (container,) = pod_spec(name)["containers"]
    return container


def secret_items(volume: dict) -> set[str]:
    return {item["key"] for item in volume["secret"]["items"]}


def config() -> dict[str, str]:
    return by_kind("ConfigMap")["bazaar-config"]["data"]


# ---- kubernetes: structure ------------------------------------------------


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_the_workloads_are_those_of_the_issue():
    assert set(by_kind("StatefulSet")) == {"catalog", "order"}
    assert set(by_kind("Deployment")) == {"frontend"}
    assert by_kind("StatefulSet")["order"]["spec"]["replicas"] == 3
    assert by_kind("StatefulSet")["catalog"]["spec"]["replicas"] == 1
    for name in ("catalog", "order"):
        sts = by_kind("StatefulSet")[name]
        service = by_kind("Service")[sts["spec"]["serviceName"]]
        assert service["spec"]["clusterIP"] == "None", "stable pod names need a headless Service"
        assert service["spec"]["publishNotReadyAddresses"] is True
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        mounts = {m["name"]: m["mountPath"] for m in main_container(name)["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == config()["BAZAAR_DATA_DIR"]


def test_config_endpoints_name_the_pods_and_ports_that_exist():
    cfg = config()
    sts = by_kind("StatefulSet")
    ports = {
        name: {p["name"]: p["containerPort"] for p in main_container(name)["ports"]}
        for name in workloads()
    }

    def host_port(endpoint: str) -> tuple[str, int]:
        match = re.fullmatch(r"tcp://([^:]+):(\d+)", endpoint)
        assert match, endpoint
        return match.group(1), int(match.group(2))

    assert host_port(cfg["BAZAAR_CATALOG"]) == ("catalog-0.catalog", ports["catalog"]["rpc"])
    assert host_port(cfg["BAZAAR_CATALOG_PUB"]) == ("catalog-0.catalog", ports["catalog"]["pub"])
    replicas = dict(item.split("=", 1) for item in cfg["BAZAAR_ORDER_REPLICAS"].split(","))
    assert sorted(replicas) == [str(i) for i in range(1, sts["order"]["spec"]["replicas"] + 1)]
    for rid, endpoint in replicas.items():
        # ordinal = id - 1, as the pod's command computes it
        assert host_port(endpoint) == (f"order-{int(rid) - 1}.order", ports["order"]["rpc"])


def test_order_replicas_land_on_different_nodes():
    spec = by_kind("StatefulSet")["order"]["spec"]
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["labelSelector"]["matchLabels"].items()
        <= spec["template"]["metadata"]["labels"].items()
    )
    pdb = by_kind("PodDisruptionBudget")["order"]
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("name", ["catalog", "order", "frontend"])
def test_pods_are_non_root_bounded_probed_and_stop_in_time(name):
    spec = pod_spec(name)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the image's user
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert 0 < spec["terminationGracePeriodSeconds"] <= 30
    for container in spec.get("initContainers", []) + spec["containers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind])
    container = main_container(name)
    assert "readinessProbe" in container
    # Liveness must reach the interpreter (an HTTP answer from the process),
    # not only libzmq's I/O thread, which accepts TCP even when Python is wedged.
    live = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert live["path"] == "/metrics" and live["port"] in ports
    if name != "frontend":
        assert ports[live["port"]] == int(config()["BAZAAR_METRICS_PORT"])


def mebibytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


@pytest.mark.parametrize(
    ("name", "measured_mb"),
    # docs/performance.md "Footprint": RSS after load (bench/footprint.py)
    [("catalog", 28), ("order", 26), ("frontend", 46)],
)
def test_memory_limits_leave_room_over_the_measured_footprint(name, measured_mb):
    resources = main_container(name)["resources"]
    assert mebibytes(resources["requests"]["memory"]) >= measured_mb
    assert mebibytes(resources["limits"]["memory"]) >= 4 * measured_mb


# ---- kubernetes: keys -------------------------------------------------------

SECRETS_IN_POD = {
    "catalog": {"catalog.key_secret"},
    "frontend": {"frontend.key_secret"},
    # one pod template for three replicas: the init step picks its own
    "order": {f"order{i}.key_secret" for i in (1, 2, 3)},
}


def run_key_init(script: str, tmp_path: Path, pod_name: str) -> dict[str, int]:
    """Run an init step's script on a full key set; {file copied: mode}."""
    src, dst = tmp_path / "all-keys", tmp_path / "keys"
    src.mkdir()
    dst.mkdir()
    for role in ROLES:
        (src / f"{role}.key").write_text(f"public {role}\n")
        (src / f"{role}.key_secret").write_text(f"secret {role}\n")
    script = script.replace("/all-keys", str(src)).replace(" /keys/", f" {dst}/")
    env = {"POD_NAME": pod_name, "PATH": "/usr/bin:/bin"}
    subprocess.run(["sh", "-c", script], check=True, env=env, cwd=tmp_path)
    return {p.name: p.stat().st_mode & 0o777 for p in dst.iterdir()}


@pytest.mark.parametrize(
    ("name", "pod_name", "role"),
    [
        ("catalog", "catalog-0", "catalog"),
        ("frontend", "frontend-5d9c7-x2x4q", "frontend"),
        ("order", "order-0", "order1"),
        ("order", "order-2", "order3"),
    ],
)
def test_each_service_sees_only_its_own_secret_key(name, pod_name, role, tmp_path):
    spec = pod_spec(name)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert {n for n, v in volumes.items() if "secret" in v} == {"all-keys"}
    assert secret_items(volumes["all-keys"]) == PUBLIC_KEYS | SECRETS_IN_POD[name]
    # The Secret volume is mounted in the init step alone ...
    (init,) = spec["initContainers"]
    assert "all-keys" in {m["name"] for m in init["volumeMounts"]}
    mounts = {m["mountPath"]: m for m in main_container(name)["volumeMounts"]}
    assert "all-keys" not in {m["name"] for m in mounts.values()}
    # ... the service reads an in-memory copy at BAZAAR_KEYS_DIR ...
    keys = mounts[config()["BAZAAR_KEYS_DIR"]]
    assert keys["readOnly"] is True
    assert volumes[keys["name"]]["emptyDir"]["medium"] == "Memory"
    # ... which holds the public keys and its own secret key, 0400.
    copied = run_key_init(init["args"][0], tmp_path, pod_name)
    assert copied == {**dict.fromkeys(PUBLIC_KEYS, 0o444), f"{role}.key_secret": 0o400}


def test_the_admin_client_pod_gets_the_client_key_only(tmp_path):
    (pod,) = yaml.safe_load_all((K8S / "tools" / "client.yaml").read_text())
    assert pod["metadata"]["labels"][COMPONENT] == "client"  # what the policies allow
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert secret_items(volumes["all-keys"]) == PUBLIC_KEYS | {"client.key_secret"}
    (init,) = pod["spec"]["initContainers"]
    copied = run_key_init(init["args"][0], tmp_path, "bazaar-client")
    assert copied == {**dict.fromkeys(PUBLIC_KEYS, 0o444), "client.key_secret": 0o400}


def test_order_id_is_the_ordinal_plus_one():
    script = " ".join(main_container("order")["args"])
    assert script.endswith("exec bazaar order"), "bazaar must replace the shell (SIGTERM)"
    probe = script.replace("exec bazaar order", 'echo "$BAZAAR_ORDER_ID"')
    for ordinal in range(3):
        out = subprocess.run(
            ["sh", "-c", probe], env={"POD_NAME": f"order-{ordinal}"}, capture_output=True
        )
        assert out.stdout.decode().strip() == str(ordinal + 1)


# ---- kubernetes: network policies ---------------------------------------------

COMPONENT = "app.kubernetes.io/component"


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", "extend selects() for other operators"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def peer_allows(peers: list[dict] | None, labels: dict[str, str], in_namespace: bool) -> bool:
    if not peers:  # no `from`/`to`: everyone
        return True
    for peer in peers:
        if "namespaceSelector" not in peer and not in_namespace:
            continue  # a bare podSelector means this namespace only
        if "ipBlock" in peer:
            continue
        if selects(peer.get("podSelector"), labels):
            return True
    return False


def rule_allows(rules, labels, in_namespace, port, key) -> bool:
    for rule in rules or []:
        ports = rule.get("ports")
        if ports and not any(p["port"] == port and p["protocol"] == "TCP" for p in ports):
            continue
        if peer_allows(rule.get(key), labels, in_namespace):
            return True
    return False


def allowed(policies, direction, pod, peer, peer_in_namespace, port) -> bool:
    """Whether `pod`'s policies let `peer` in (Ingress) or let `pod` out (Egress)."""
    key = "from" if direction == "Ingress" else "to"
    field = "ingress" if direction == "Ingress" else "egress"
    selecting = [
        p
        for p in policies
        if selects(p["spec"]["podSelector"], pod) and direction in p["spec"]["policyTypes"]
    ]
    if not selecting:
        return True  # not isolated in this direction
    return any(
        rule_allows(p["spec"].get(field), peer, peer_in_namespace, port, key) for p in selecting
    )


def test_network_policies_allow_exactly_the_flows_of_the_spec():
    policies = list(by_kind("NetworkPolicy").values())
    pods = {c: {COMPONENT: c} for c in ("catalog", "order", "frontend", "client")}
    pods["other"] = {"app.kubernetes.io/name": "something-else"}  # same namespace
    sources = dict(pods, outside=None)  # outside: another namespace or the internet
    flows = set()
    for src, src_labels in sources.items():
        for dst in ("catalog", "order", "frontend"):
            for port in (CATALOG_RPC, CATALOG_PUB, ORDER_RPC, HTTP):
                inside = src_labels is not None
                egress_ok = not inside or allowed(
                    policies, "Egress", src_labels, pods[dst], True, port
                )
                ingress_ok = allowed(policies, "Ingress", pods[dst], src_labels or {}, inside, port)
                if egress_ok and ingress_ok:
                    flows.add((src, dst, port))
    assert flows == EXPECTED_FLOWS


def test_network_policies_deny_by_default_and_allow_dns():
    policies = by_kind("NetworkPolicy")
    assert policies["default-deny"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }
    (rule,) = policies["dns"]["spec"]["egress"]
    assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {("UDP", 53), ("TCP", 53)}


# ---- swarm --------------------------------------------------------------------


@cache
def stack() -> dict:
    return yaml.safe_load(STACK.read_text())


def test_swarm_services_get_only_their_own_secret_key():
    services = stack()["services"]
    assert set(services) == {"catalog", "order1", "order2", "order3", "frontend"}
    for name, service in services.items():
        targets = set()
        for secret in service["secrets"]:
            target = secret if isinstance(secret, str) else secret["target"]
            targets.add(target)
            if target.endswith(".key_secret"):
                assert secret["mode"] == 0o400 and secret["uid"] == "10001"
        assert targets == PUBLIC_KEYS | {f"{name}.key_secret"}, name
    assert set(stack()["secrets"]) == PUBLIC_KEYS | {f"{r}.key_secret" for r in ROLES[:-1]}


def test_swarm_pins_each_stateful_service_to_its_own_node():
    services = stack()["services"]
    constraints = {
        name: tuple(s["deploy"]["placement"]["constraints"]) for name, s in services.items()
    }
    assert constraints["order1"] == ("node.labels.bazaar.order == 1",)
    assert len({constraints[f"order{i}"] for i in (1, 2, 3)}) == 3
    assert stack()["networks"]["bazaar"]["driver"] == "overlay"
    for rid in (1, 2, 3):
        service = services[f"order{rid}"]
        assert service["environment"]["BAZAAR_ORDER_ID"] == str(rid)
        assert service["volumes"] == [f"order{rid}-data:/data"]
        replicas = dict(
            item.split("=", 1)
            for item in service["environment"]["BAZAAR_ORDER_REPLICAS"].split(",")
        )
        assert replicas[str(rid)] == f"tcp://order{rid}:{5560 + rid}"


# ---- docker-compose.yml ----------------------------------------------------


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_mount_only_their_own_keys_volume():
    services = compose()["services"]
    for name in ("catalog", "order1", "order2", "order3", "frontend", "client"):
        keys = [v for v in services[name]["volumes"] if v.startswith("keys")]
        assert keys == [f"keys-{name}:/keys:ro"], name
    # The full set is on `keys`, which only the one-shot mounts.
    assert [n for n, s in services.items() if "keys:/keys" in s.get("volumes", [])] == ["keys"]
    assert services["keys"]["volumes"] == ["keys:/keys", *(f"keys-{r}:/roles/{r}" for r in ROLES)]
    assert set(compose()["volumes"]) >= {"keys", *(f"keys-{r}" for r in ROLES)}


def run_compose_keys(tmp_path: Path) -> Path:
    """The keys service's entrypoint and command, as compose runs them, on tmp dirs."""
    keys = compose()["services"]["keys"]
    shell, flags, script, name = keys["entrypoint"]
    dirs = {"/keys": tmp_path / "keys", "/roles": tmp_path / "roles"}
    for role in ROLES:
        (dirs["/roles"] / role).mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    script = script.replace("$$", "$")  # compose's escape of a literal $
    args = [str(dirs[a]) for a in keys["command"]]
    subprocess.run([shell, flags, script, name, *args], check=True, env=env, timeout=60)
    return dirs["/roles"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the keys service runs as root (it chowns)")
def test_compose_keys_service_deals_each_role_its_own_secret_only(tmp_path):
    from bazaar import security

    roles = run_compose_keys(tmp_path)
    dealt = {}
    for role in ROLES:
        files = {
            p.name: (p.stat().st_mode & 0o777, p.stat().st_uid) for p in (roles / role).iterdir()
        }
        assert files == {
            **dict.fromkeys(PUBLIC_KEYS, (0o444, 10001)),
            f"{role}.key_secret": (0o400, 10001),
        }, role
        keys = security.load_keys(roles / role, role)  # a service starts from it
        assert set(keys.cluster) == set(ROLES)
        dealt[role] = keys.public
    # Every later `up` runs it again: same keys, nothing made anew.
    run_compose_keys(tmp_path)
    assert {r: security.load_keys(roles / r, r).public for r in ROLES} == dealt


def test_compose_healthchecks_need_only_the_services_own_key():
    """A healthcheck that calls RPC speaks as the service itself (it holds no other key)."""
    services = compose()["services"]
    for name in ("catalog", "order1", "order2", "order3", "frontend"):
        test = services[name]["healthcheck"]["test"]
        if "call" in test:
            assert "--role" in test and test[test.index("--role") + 1] == name, name


def test_swarm_healthchecks_ask_the_process_itself():
    """GET /metrics (an answer needs the interpreter), never a bare TCP connect (libzmq answers)."""
    services = stack()["services"]
    metrics_port = stack()["x-bazaar"]["environment"]["BAZAAR_METRICS_PORT"]
    for name, service in services.items():
        cmd, python, flag, code = service["healthcheck"]["test"]
        assert (cmd, python, flag) == ("CMD", "python3", "-c"), name
        compile(code, f"{name} healthcheck", "exec")
        port = "8080" if name == "frontend" else metrics_port
        assert f"u.urlopen('http://127.0.0.1:{port}/metrics', timeout=4)" in code, name
        assert "socket" not in code, name
