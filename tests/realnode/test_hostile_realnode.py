"""The hostile campaign of tests/serving/test_hostile.py against one serving pod of the digits sample on the real
node, through kubectl port-forwards to its HTTP and gRPC ports: each case gets the answer the local server gives,
and the pod never restarts (its container never terminated) and still serves its model version afterwards."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from rn_support import Models
from serving.test_hostile import CASES, X, connect, doc, grpc_input, grpc_request, tensor, wrong_answer
from test_digits_realnode import DIGITS, READY_TIMEOUT, serving_pods

from modeldeploy.cluster.portforward import PortForward

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

MODEL = "digits"  # the campaign's cases name this model: the ModelDeployment has its name

# No case is exempt: through kubectl port-forward every one gets the local server's status and text, the raw-socket
# ones included (kubectl relays the bytes as they come and passes the server's answer and close on; the slow sender
# gets its 408 after the pod's default body timeout, 30 s, most of this test's time). A case whose answer through a
# forward legitimately differs belongs here by name, with the answer it gets and why.


@dataclass(frozen=True)
class Forwarded:
    """A serving pod's HTTP and gRPC ports forwarded to 127.0.0.1: where the campaign's senders send."""

    url: str
    http_port: int
    grpc_target: str


def test_hostile_campaign_through_port_forwards_never_restarts_the_serving_pod(
    models: Models, port_forward: Callable[[str, str, int], PortForward]
) -> None:
    # One replica: the pod the forwards reach is the only one, and its restart count is the one checked.
    models.apply(MODEL, {**DIGITS, "serving": {"replicas": 1}})
    version = models.wait_phase(MODEL, "Ready", READY_TIMEOUT)["modelVersion"]
    pods = serving_pods(models, MODEL)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod = pods[0]["metadata"]["name"]
    ports = {p["name"]: p["containerPort"] for p in pods[0]["spec"]["containers"][0]["ports"]}
    # The pod, not the Service: every request reaches the container whose restarts are counted.
    http_forward = port_forward(models.namespace, f"pod/{pod}", ports["http"])
    grpc_forward = port_forward(models.namespace, f"pod/{pod}", ports["grpc"])
    target = connect(Forwarded(http_forward.url, http_forward.local_port, f"127.0.0.1:{grpc_forward.local_port}"))
    answers: Counter[str] = Counter()
    failures: list[str] = []
    report: list[str] = []
    started = time.monotonic()
    try:
        for case, model, send, status, says in CASES:
            if model != MODEL:
                continue
            sent_at = time.monotonic()
            try:
                answer, text = send(target)
            except (httpx.HTTPError, OSError) as err:  # what the forward did to the connection: kept as the answer
                answer, text = type(err).__name__, str(err)
            answers[str(answer)] += 1
            report.append(f"  {case:40} {answer!s:20} {time.monotonic() - sent_at:6.2f} s")
            if wrong := wrong_answer(case, status, says, answer, text):
                failures.append(wrong)
            for forward in (http_forward, grpc_forward):
                assert forward.proc.poll() is None, (
                    f"{case}: kubectl port-forward exited {forward.proc.returncode}: {forward.output()}"
                )
        seconds = time.monotonic() - started
        good_http = httpx.post(f"{http_forward.url}/v2/models/{MODEL}/infer", json=doc(tensor()), timeout=10)
        good = grpc_request(grpc_input("input", "FP32", [1, 8, 8, 1], fp32_contents=X))
        grpc_version = target.stub.ModelInfer(good, timeout=10).model_version
    finally:
        target.channel.close()

    container = models.get("pod", pod)["status"]["containerStatuses"][0]
    sent = sum(answers.values())
    by_status = ", ".join(f"{status}: {count}" for status, count in sorted(answers.items()))
    print("\n" + "\n".join(report))
    print(
        f"hostile campaign through port-forwards to pod/{pod}: {sent} cases in {seconds:.1f} s, answers {by_status};"
        f" restartCount {container['restartCount']}, lastState {container.get('lastState') or {}}"
    )
    assert not failures, "\n".join(failures)
    assert container["restartCount"] == 0, container
    assert not container.get("lastState"), f"the serving container terminated: {container['lastState']}"
    assert good_http.status_code == 200, good_http.text
    assert good_http.json()["model_version"] == grpc_version == version
