"""`make demo`: the whole job on one machine, ending by itself.

First the digits sample's real training, compression and serving through `modeldeploy run` (no cluster needed),
ending with a prediction, while the local control plane's binaries build in the background on a fresh machine (with
a line every 30 s saying what is being compiled and for how long). Then the in-cluster part: a local control plane,
the CRD, the operator (this checkout's code, in the background), the same sample taken to Ready there (kwok plays
the pods). Everything it started is stopped at the end, also on failure or Ctrl-C.

With --real-node (`make demo REAL_NODE=1`, docs/real-node.md) the pipeline runs in the cluster instead: the
project's images (built when Docker lacks them), a cluster with a real node, the operator pointed at those images,
samples/digits-cnn-real-node.yaml trained by a real Job and served by real pods, then held-out digits predicted
through a port-forward on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from modeldeploy.cluster import realnode
from modeldeploy.cluster.local import ClusterError, ClusterState, LocalCluster, find_binaries, process_start_time
from modeldeploy.cluster.portforward import PortForward
from modeldeploy.cluster.waiting import wait_crd_established
from modeldeploy.spec import ModelDeploymentSpec

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "samples" / "digits-cnn.yaml"
REAL_NODE_SAMPLE = REPO / "samples" / "digits-cnn-real-node.yaml"
# What the real node runs, imported from the local Docker engine; the operator runs here, outside the cluster.
TRAINING_IMAGE, SERVING_IMAGE = realnode.PROJECT_IMAGES


def say(text: str) -> None:
    sys.stdout.write(f"\n==> {text}\n")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    def __init__(
        self, name: str, sample: Path, timeout: float, *, real_node: bool = False, bin_dir: Path | None = None
    ) -> None:
        self.cluster = LocalCluster(name, real_node=real_node)
        self.sample = sample
        self.timeout = timeout
        self.bin_dir = bin_dir or find_binaries(real_node=real_node)
        self.kubectl = str(self.bin_dir / "kubectl")
        self.env: dict[str, str] = {}
        self.operator: subprocess.Popen[bytes] | None = None
        # Outside the cluster's state directory, which `down` removes: the log outlives a failed demo.
        self.operator_log = Path(tempfile.gettempdir()) / f"modeldeploy-{name}-operator.log"

    def run_kubectl(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(
            [self.kubectl, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def start(self) -> None:
        say(f"local control plane {self.cluster.name} (etcd, kube-apiserver, controllers, scheduler, kwok nodes)")
        kubeconfig = self.cluster.up(bin_dir=self.bin_dir)
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.install_and_run_operator()

    def install_and_run_operator(self, settings: dict[str, str] | None = None) -> None:
        say("the ModelDeployment CRD")
        self.run_kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        wait_crd_established(self.run_kubectl)
        log = self.operator_log
        say(f"the operator, in the background (its log: {log})")
        for key, value in (settings or {}).items():
            sys.stdout.write(f"{key}={value}\n")
        with log.open("wb") as out:
            self.operator = subprocess.Popen(
                [sys.executable, "-m", "modeldeploy.cli", "operator"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **(settings or {})},
            )

    def to_ready(self) -> None:
        say(f"kubectl apply -f {self.sample.relative_to(REPO)}; waiting for Ready (kwok plays the Job and the pods)")
        self.run_kubectl("apply", "-f", str(self.sample))
        started = time.monotonic()
        self.run_kubectl(
            "wait", "--for=condition=Ready", "md/digits", f"--timeout={int(self.timeout)}s", timeout=self.timeout + 10
        )
        sys.stdout.write(f"Ready after {time.monotonic() - started:.1f}s\n")
        sys.stdout.write(self.run_kubectl("get", "md", "-o", "wide"))
        sys.stdout.write(self.run_kubectl("get", "jobs,deployments,services,pvc", "-l", "modeldeploy.dev/model=digits"))

    def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()

    def down(self) -> None:
        self.stop_operator()
        say(f"stopping the control plane {self.cluster.name}")
        self.cluster.down()


BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "cluster" / "build-binaries.sh"
PROGRESS_EVERY = 30.0


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"


class BinaryBuild:
    """The control plane's binaries (build-binaries.sh), built in the background while the local pipeline runs; on
    a machine that has them cached it finds them at once."""

    def __init__(self) -> None:
        self.log = Path(tempfile.gettempdir()) / f"modeldeploy-demo-build-{os.getpid()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.bin_dir: Path | None = None
        self.started = time.monotonic()

    def start(self) -> None:
        cached = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            env={**os.environ, "MODELDEPLOY_NO_BUILD": "1"},
            check=False,
        )
        if cached.returncode == 0:
            self.bin_dir = Path(cached.stdout.strip().splitlines()[-1])
            return
        self.started = time.monotonic()
        with self.log.open("wb") as out:
            # Its own session: a Ctrl-C reaches the demo, which then stops the whole build (go and its compilers).
            self.process = subprocess.Popen(
                ["bash", str(BUILD_SCRIPT)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def building(self) -> bool:
        return self.process is not None and self.bin_dir is None

    def current_step(self) -> str:
        """The script's latest progress line, e.g. 'compiling kube-apiserver ... v1.34.4 ...'."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "starting"
        steps = [line.removeprefix("build-binaries: ") for line in lines if line.startswith("build-binaries: ")]
        return steps[-1] if steps else "starting"

    def progress(self) -> str:
        return (
            f"building the control plane's binaries from their Go modules: {self.current_step()} "
            f"({minutes(time.monotonic() - self.started)} so far; once per machine, cached after)"
        )

    def wait(self) -> Path:
        """The bin directory once the build has finished, with a progress line every PROGRESS_EVERY seconds."""
        if self.bin_dir is not None:
            return self.bin_dir
        assert self.process is not None
        while True:
            try:
                self.process.wait(timeout=PROGRESS_EVERY)
                break
            except subprocess.TimeoutExpired:
                sys.stdout.write(f"  {self.progress()}\n")
                sys.stdout.flush()
        output = self.log.read_text(errors="replace").splitlines()
        if self.process.returncode != 0:
            tail = "\n".join(output[-30:])
            raise ClusterError(f"building the control plane's binaries failed (log: {self.log}):\n{tail}")
        self.bin_dir = Path(output[-1].strip())
        sys.stdout.write(f"built the control plane's binaries in {minutes(time.monotonic() - self.started)}\n")
        return self.bin_dir

    def stop(self) -> None:
        """Stop a build still running (the demo was interrupted or failed); Go's cache keeps what was compiled."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def main_local_first(args: argparse.Namespace) -> int:
    """`make demo`: the local pipeline to a first prediction while the binaries build, then the cluster part."""
    started = time.monotonic()
    # When make started (venv creation included), for the time to the first prediction as a newcomer sees it.
    make_started = float(os.environ.get("MODELDEPLOY_DEMO_STARTED") or 0) or None
    offset = time.time() - make_started if make_started else 0.0
    sample = (args.sample or SAMPLE).resolve()
    signal.signal(signal.SIGTERM, _interrupt)  # a TERM stops the background build and the cluster, as Ctrl-C does
    build = BinaryBuild()
    demo: Demo | None = None
    code = 1
    first_prediction: float | None = None
    try:
        build.start()
        if build.building:
            say(f"building the control plane's binaries in the background (about 7 min on 2 cores; log: {build.log})")
        code = run_locally(sample)
        first_prediction = time.monotonic() - started + offset
        if code != 0:
            raise RuntimeError(f"modeldeploy run {sample.name} failed (exit {code}); its lines above say why")
        say(f"first prediction {first_prediction:.0f}s after `make demo` started; now the same sample in a cluster")
        if build.building:
            sys.stdout.write(f"  {build.progress()}\n")
        bin_dir = build.wait()
        demo = Demo(args.name or "demo", sample, args.timeout or 180, bin_dir=bin_dir)
        demo.start()
        demo.to_ready()
        code = 0
    except (ClusterError, RuntimeError, subprocess.TimeoutExpired) as err:
        sys.stderr.write(f"demo failed: {err}\n")
        if demo is not None and demo.operator_log.exists():
            tail = demo.operator_log.read_text(errors="replace").splitlines()[-30:]
            sys.stderr.write(f"the operator's log ({demo.operator_log}), last lines:\n" + "\n".join(tail) + "\n")
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        build.stop()
        if demo is not None:
            demo.down()
    total = time.monotonic() - started + offset
    if code == 0 and first_prediction is not None:
        say(f"demo done: first prediction after {first_prediction:.0f}s, everything after {total:.0f}s")
    else:
        say(f"demo {'interrupted' if code == 130 else 'FAILED'} after {total:.0f}s")
    return code


def run_locally(sample: Path) -> int:
    say(f"modeldeploy run {sample.relative_to(REPO)}: the real training, compression and serving here, no cluster")
    command = [sys.executable, "-m", "modeldeploy.cli", "run", str(sample), "--port", str(free_port())]
    return subprocess.call([*command, "--exit-after-predict"])


# ---- the real node ------------------------------------------------------------------------------------------------


def refusal(problems: list[str]) -> str:
    """Why this machine cannot run `make demo REAL_NODE=1`, and what to do instead."""
    lines = "\n".join(f"  - {p}" for p in problems)
    return (
        f"make demo REAL_NODE=1 cannot run on this machine:\n{lines}\n"
        "Fix the above (docs/real-node.md, 'What it needs'), or run `make demo` without REAL_NODE: the same "
        "pipeline with kwok's simulated pods, then the real training and serving through `modeldeploy run`."
    )


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "version"], capture_output=True, check=False).returncode == 0


def image_exists(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode == 0


def held_out_digits(spec: dict[str, Any], n: int) -> tuple[Any, list[int]]:
    """`n` digits the model never trained on, spread over the trainer's own held-out split (same fraction, seed: the
    CRD's defaults where the spec gives none, as the trainer reads it)."""
    import numpy as np  # noqa: PLC0415
    from modeldeploy_training import data  # noqa: PLC0415 (TensorFlow-free)

    training = ModelDeploymentSpec.parse(spec).training
    if training is None:
        raise RuntimeError("the demo's held-out digits need a spec that trains (spec.training)")
    parts = data.split(data.load_digits(), training.validation_split, training.seed)
    picks = np.linspace(0, len(parts.y_test) - 1, n).round().astype(int)
    return parts.x_test[picks], [int(v) for v in parts.y_test[picks]]


class RealNodeDemo(Demo):
    """The same ModelDeployment trained and served for real, in the cluster, on this machine's real node."""

    def __init__(self, name: str, sample: Path, timeout: float, bin_dir: Path) -> None:
        super().__init__(name, sample, timeout, real_node=True, bin_dir=bin_dir)
        self.started_docker = False
        self.port_forward: PortForward | None = None

    def images(self) -> None:
        """The training and serving images in the local Docker engine: dockerd started and the images built if
        needed (only what is missing: `make images` rebuilds them after a change)."""
        if not docker_answers():
            say("no Docker engine answers: starting dockerd (images/docker.sh up)")
            self.started_docker = True  # set first: a dockerd that came up half-way is still ours to stop
            subprocess.run([str(REPO / "images" / "docker.sh"), "up"], check=True)
        missing = [image for image in (TRAINING_IMAGE, SERVING_IMAGE) if not image_exists(image)]
        if not missing:
            sys.stdout.write(f"images {TRAINING_IMAGE} and {SERVING_IMAGE} are built (make images rebuilds them)\n")
            return
        say(f"building {', '.join(missing)} (the first build downloads TensorFlow: minutes)")
        subprocess.run([str(REPO / "images" / "base-image.sh")], check=True)
        prefix, _, tag = TRAINING_IMAGE.rpartition(":")
        names = [image.rpartition(":")[0].rpartition("/")[2] for image in missing]
        env = {**os.environ, "IMAGE_PREFIX": prefix.rpartition("/")[0], "IMAGE_TAG": tag}
        subprocess.run([str(REPO / "images" / "build.sh"), *names], check=True, env=env)

    def start(self) -> None:
        say(
            f"local cluster {self.cluster.name} with a real node: the control plane, kwok's nodes, and containerd, "
            "a kubelet and kube-proxy on this machine (the images are imported from Docker: about 100 s)"
        )
        kubeconfig = self.cluster.up(bin_dir=self.bin_dir, owner_pid=os.getpid())
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        sys.stdout.write(self.run_kubectl("get", "nodes", "-L", realnode.NODE_LABEL_KEY))
        self.install_and_run_operator(
            {
                "MODELDEPLOY_OPERATOR_TRAINING_IMAGE": TRAINING_IMAGE,
                "MODELDEPLOY_OPERATOR_SERVING_IMAGE": SERVING_IMAGE,
            }
        )

    def status(self) -> dict[str, Any]:
        md = json.loads(self.run_kubectl("get", "md", "digits", "-o", "json"))
        status = dict(md.get("status") or {})
        status["_current"] = status.get("observedGeneration") == md["metadata"].get("generation")
        return status

    def to_ready(self) -> None:
        say(f"kubectl apply -f {self.sample.relative_to(REPO)}; waiting for Ready (a real Job trains, real pods serve)")
        self.run_kubectl("apply", "-f", str(self.sample))
        started = time.monotonic()
        last = ""
        while True:
            status = self.status()
            conditions = {c["type"]: c for c in status.get("conditions") or []}
            phase = status.get("phase") or "(no phase yet)"
            ready = conditions.get("Ready", {})
            line = f"{phase}: {ready.get('reason', '')} {ready.get('message', '')}".strip()
            if line != last:
                sys.stdout.write(f"  {time.monotonic() - started:6.1f}s  {line}\n")
                sys.stdout.flush()
                last = line
            if status["_current"] and phase == "Ready":
                break
            if status["_current"] and phase == "Failed":
                trained = conditions.get("Trained", {})
                raise RuntimeError(f"digits Failed: {trained.get('reason')}: {trained.get('message')}")
            if time.monotonic() - started > self.timeout:
                pods = self.run_kubectl("get", "pods", "-o", "wide")
                raise RuntimeError(f"digits not Ready after {self.timeout:.0f}s (phase {phase}); pods:\n{pods}")
            time.sleep(1)
        version = (status.get("versions") or [{}])[0]
        sys.stdout.write(
            f"\nReady {time.monotonic() - started:.1f}s after kubectl apply (training included); "
            f"model version {status.get('modelVersion')}, held-out accuracy {version.get('accuracy')}\n\n"
        )
        sys.stdout.write(self.run_kubectl("get", "md", "-o", "wide"))
        sys.stdout.write(self.run_kubectl("get", "pods", "-o", "wide"))

    def predict(self, count: int = 8) -> int:
        """Port-forward to the Service on 127.0.0.1, send held-out digits; returns how many were right."""
        from modeldeploy.tools import client  # noqa: PLC0415

        say("kubectl port-forward service/digits (127.0.0.1 only), then held-out digits through the V2 client")
        self.port_forward = PortForward(self.kubectl, "service/digits", 8080, env=self.env)
        url = self.port_forward.url
        endpoint = client.parse_endpoint(url, "digits")
        deadline = time.monotonic() + 30
        while not client.is_ready(endpoint):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the model did not answer on {url} within 30 s")
            time.sleep(0.2)
        meta = client.model_metadata(endpoint)
        import yaml  # noqa: PLC0415

        x, truth = held_out_digits(yaml.safe_load(self.sample.read_text(encoding="utf-8"))["spec"], count)
        rows = client.classify(endpoint, meta, client.fit_input(x, meta.inputs[0], "held-out digits"))
        sys.stdout.write(f"{url}/v2/models/digits (version {meta.version}):\n")
        right = 0
        for row, true in zip(rows, truth, strict=True):
            best = row[0]
            ok = best.label == str(true)
            right += ok
            mark = "" if ok else "  <- wrong"
            sys.stdout.write(f"  true {true}  predicted {best.label}  (probability {best.probability:.3f}){mark}\n")
        sys.stdout.write(f"{right} of {len(truth)} held-out digits right\n")
        return right

    def down(self) -> None:
        if self.port_forward is not None:
            self.port_forward.close()
        self.stop_operator()
        say(f"stopping the cluster {self.cluster.name} and its real node (pods, containerd, network, cgroups)")
        try:
            self.cluster.down()
        finally:
            if self.started_docker:
                say("stopping the dockerd this demo started (images/docker.sh down)")
                subprocess.run([str(REPO / "images" / "docker.sh"), "down"], check=False)


INTERRUPTED: list[int] = []  # the signals received: a Ctrl-C also ends the child a step was waiting on


def _interrupt(signum: int, frame: FrameType | None) -> None:
    del frame
    INTERRUPTED.append(signum)
    raise KeyboardInterrupt  # a TERM stops the demo as Ctrl-C does: everything it started is stopped


def main_real_node(args: argparse.Namespace) -> int:
    started = time.monotonic()
    problems = realnode.missing_prerequisites(None)
    if problems:
        sys.stderr.write(refusal(problems) + "\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="    %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        say("the binaries of the control plane and the real node (built once, cached)")
        bin_dir = find_binaries(real_node=True)
        directory = LocalCluster(args.name).directory
        state = ClusterState.load(directory)
        if state is not None and not (state.owner_pid and process_start_time(state.owner_pid)):
            say(f"an earlier demo's cluster {args.name} was left behind: removing it first")
            LocalCluster(args.name, real_node=True).down()
        # The node's binaries, and no other cluster's real node on this machine.
        realnode.RealNode(directory, bin_dir).check_host()
    except ClusterError as err:
        sys.stderr.write(f"demo failed: {err}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except realnode.RealNodeUnavailable as err:
        sys.stderr.write(refusal([str(err).removeprefix("the real node cannot start: ")]) + "\n")
        return 2
    sample = args.sample.resolve() if args.sample else REAL_NODE_SAMPLE
    demo = RealNodeDemo(args.name, sample, args.timeout or 600, bin_dir)
    code = 1
    try:
        demo.images()
        demo.start()
        demo.to_ready()
        count = 8
        right = demo.predict(count)
        code = 0 if 2 * right > count else 1
    except (ClusterError, RuntimeError, subprocess.SubprocessError, OSError) as err:
        if INTERRUPTED:  # the step failed because its child got the Ctrl-C too: not an error of its own
            code = 130
        sys.stderr.write(f"demo {'interrupted' if INTERRUPTED else 'failed'}: {err}\n")
        if demo.operator_log.exists() and not INTERRUPTED:
            tail = demo.operator_log.read_text(errors="replace").splitlines()[-30:]
            sys.stderr.write(f"the operator's log ({demo.operator_log}), last lines:\n" + "\n".join(tail) + "\n")
    except KeyboardInterrupt:
        code = 130
        sys.stderr.write("demo interrupted\n")
    finally:
        # A second Ctrl-C must not leave a half-removed node behind (its bridge, iptables chains, mounts).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            demo.down()
        except (ClusterError, OSError, subprocess.SubprocessError) as err:
            sys.stderr.write(f"tearing down failed: {err}\n")
            code = code or 1
    outcome = "done" if code == 0 else "interrupted" if code == 130 else "FAILED"
    say(f"demo {outcome} in {time.monotonic() - started:.0f}s")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeldeploy.tools.demo", description=__doc__)
    parser.add_argument(
        "--real-node",
        action="store_true",
        help="train and serve in the cluster on this machine's real node (root, cgroup v1, containerd)",
    )
    parser.add_argument("--name", help="the local cluster's name (default: demo; demo-real-node with --real-node)")
    parser.add_argument("--sample", type=Path, help=f"the ModelDeployment (default: {SAMPLE.relative_to(REPO)}; "
                        f"{REAL_NODE_SAMPLE.relative_to(REPO)} with --real-node)")  # fmt: skip
    parser.add_argument("--timeout", type=float, help="seconds to wait for Ready (default: 180; 600 with --real-node)")
    args = parser.parse_args(argv)
    if args.real_node:
        args.name = args.name or "demo-real-node"
        return main_real_node(args)
    return main_local_first(args)


if __name__ == "__main__":
    sys.exit(main())
