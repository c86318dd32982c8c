"""The operator's NetworkPolicy enforced for real: kube-router's network-policy controller (its firewall only, built
from its Go module by `make netpol-binaries`) runs on the real node beside the bridge CNI, and pods in two
namespaces call the serving pod. Only the ModelDeployment's own namespace gets through until
spec.serving.allowFrom names the other one.

Opt-in (MODELDEPLOY_NETPOL_TEST=1, as the Argo CD tests): kube-router v2.1.0 is the only release of it that the Go
module proxy here serves, and advisories are reported against it; it runs only for this test, on a cluster whose
traffic stays on this host, and is stopped and its chains and ipsets removed after it. See
docs/real-node.md for why no other enforcing implementation runs on these machines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rn_support import PLACEMENT, Models, RealCluster, stop_process
from test_digits_realnode import DIGITS, READY_TIMEOUT, serving_pods

from modeldeploy.cluster import realnode
from modeldeploy.cluster.local import SERVICE_CIDR
from modeldeploy.cluster.waiting import wait_until

pytestmark = [
    pytest.mark.realnode,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("MODELDEPLOY_NETPOL_TEST") != "1",
        reason="opt-in: MODELDEPLOY_NETPOL_TEST=1 (and `make netpol-binaries`)",
    ),
]

REPO = Path(__file__).resolve().parents[2]


def kube_router() -> Path:
    """The kube-router binary `make netpol-binaries` built; skips, saying how to build it, when there is none."""
    built = subprocess.run(
        ["bash", str(REPO / "src/modeldeploy/cluster/build-netpol.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "MODELDEPLOY_NO_BUILD": "1"},
        check=False,
    )
    if built.returncode != 0:
        pytest.skip(built.stderr.strip())
    return Path(built.stdout.strip().splitlines()[-1]) / "kube-router"


# One request from inside a pod, tried again for `seconds` until it is answered: exit 0 with the status, or 1 with
# the last error (a policy's REJECT or DROP: refused, or timed out).
CLIENT = """
import sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
until = time.monotonic() + seconds
while True:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            print("answered", answer.status)
            sys.exit(0)
    except Exception as err:
        last = f"{type(err).__name__}: {err}"
    if time.monotonic() > until:
        print("not answered:", last)
        sys.exit(1)
    time.sleep(0.5)
"""


@pytest.fixture
def enforcer(real_cluster: RealCluster, tmp_path: Path) -> Iterator[None]:
    """kube-router's network-policy controller on the real node, for one test; its rules and ipsets removed after."""
    binary = kube_router()
    if shutil.which("ipset") is None:
        pytest.skip("ipset is not installed (apt-get install ipset): kube-router keeps the policies' peers in ipsets")
    log = (tmp_path / "kube-router.log").open("wb")
    router = subprocess.Popen(
        [
            str(binary),
            "--run-firewall=true",
            "--run-router=false",
            "--run-service-proxy=false",
            f"--kubeconfig={real_cluster.kubeconfig}",
            f"--hostname-override={realnode.NODE_NAME}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--enable-ipv6=false",
            "--health-port=0",  # it would listen on every address
            "--metrics-port=0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: router.poll() is not None or _filter_rules().count("KUBE-ROUTER-FORWARD") > 1,
            timeout=60,
            what="kube-router's firewall chains",
        )
        assert router.poll() is None, f"kube-router exited {router.returncode}: {_tail(tmp_path)}"
        yield
    finally:
        stop_process(router, timeout=30)
        log.close()
        remove_kube_router_state()


# What kube-router's network-policy controller adds to the host: filter chains with these prefixes, the jumps to
# them from INPUT, FORWARD and OUTPUT, and ipsets of the policies' peers. Its own `--cleanup-config` is not used: in
# v2.1.0 it also deletes every IPVS definition on the host (its service proxy's cleanup) and then crashes.
CHAIN_PREFIXES = ("KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-")
IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-", "kube-router-")


def remove_kube_router_state() -> None:
    """Remove kube-router's chains (one iptables-restore transaction) and then its ipsets."""
    rules = _filter_rules().splitlines()
    chains = [line[1:].split()[0] for line in rules if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES)]
    jumps = [
        "-D" + line[2:]
        for line in rules
        if line.startswith("-A ") and line.split()[1] in ("INPUT", "FORWARD", "OUTPUT")
        and any(f"-j {chain}" in line for chain in chains)
    ]  # fmt: skip
    commands = ["*filter", *jumps, *(f"-F {c}" for c in chains), *(f"-X {c}" for c in chains), "COMMIT", ""]
    subprocess.run(["iptables-restore", "--noflush"], input="\n".join(commands), text=True, check=True)
    sets = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, check=True).stdout.split()
    for name in sets:
        if name.startswith(IPSET_PREFIXES):
            subprocess.run(["ipset", "destroy", name], capture_output=True, check=False)


def _filter_rules() -> str:
    return subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, check=False).stdout


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "kube-router.log").read_text(errors="replace")[-2000:]


def call_from(models: Models, namespace: str, url: str, seconds: float) -> tuple[bool, str]:
    """Whether a pod in `namespace` on the real node gets an answer from `url` within `seconds`, and what it said."""
    name = f"client-{uuid.uuid4().hex[:6]}"
    image = next(i for i in realnode.PROJECT_IMAGES if "serving" in i)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            **PLACEMENT,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", CLIENT, url, str(seconds)],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    models.cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def phase() -> str | None:
        got = json.loads(models.cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
        return got["status"].get("phase") if got["status"].get("phase") in ("Succeeded", "Failed") else None

    ended = wait_until(phase, timeout=seconds + 60, what=f"the client pod {namespace}/{name} to end")
    said = models.cluster.kubectl("logs", name, "-n", namespace).stdout.strip()
    return ended == "Succeeded", said


def test_only_the_namespaces_allow_from_names_reach_the_serving_pods(
    enforcer: None, models: Models, real_cluster: RealCluster
) -> None:
    models.apply("digits", {**DIGITS, "serving": {"replicas": 1}})
    models.wait_phase("digits", "Ready", READY_TIMEOUT)
    policy = models.get("networkpolicy", "digits")
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]
    # The pod's own address: pods here have a route to their bridge's subnet only (no Service routing from pods,
    # docs/real-node.md), and a NetworkPolicy is about what reaches the pod.
    (pod,) = serving_pods(models, "digits")
    port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "http")
    url = f"http://{pod['status']['podIP']}:{port}/v2/health/ready"
    other = f"{models.namespace}-other"
    real_cluster.create_namespace(other)
    try:
        # kube-router has made the policy's rules: else a request could pass before they exist.
        wait_until(
            lambda: f"namespace {models.namespace}" in _filter_rules(),
            timeout=60,
            what="kube-router's rules for the ModelDeployment's NetworkPolicy",
        )
        # The kubelet (the node's own address) still reaches the pod: its readiness probe keeps it Ready.
        assert all(c["status"] == "True" for p in serving_pods(models, "digits") for c in p["status"]["conditions"])

        same, same_said = call_from(models, models.namespace, url, seconds=30)
        assert same, f"a pod of the model's own namespace was not let through: {same_said}"
        outside, said = call_from(models, other, url, seconds=5)
        assert not outside, f"a pod of namespace {other} reached the serving pods despite the policy: {said}"
        assert "not answered" in said, said

        # Name the other namespace: the operator rewrites the policy, kube-router lets that namespace's pods in.
        allow = [{"podSelector": {}}, {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": other}}}]
        models.apply("digits", {**DIGITS, "serving": {"replicas": 1, "allowFrom": allow}})
        wait_until(
            lambda: models.get("networkpolicy", "digits")["spec"]["ingress"][0]["from"] == allow,
            timeout=60,
            what="the operator to write allowFrom into the NetworkPolicy",
        )
        allowed_at = time.monotonic()
        outside, said_after = call_from(models, other, url, seconds=30)
        assert outside, f"a pod of namespace {other}, now in allowFrom, was not let through: {said_after}"
        print(
            f"\nNetworkPolicy enforced by kube-router: own namespace {same_said!r}; namespace {other} {said!r}, then "
            f"{said_after!r} {time.monotonic() - allowed_at:.1f} s after allowFrom named it (client pod included)"
        )
    finally:
        real_cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
