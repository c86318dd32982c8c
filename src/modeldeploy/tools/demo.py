"""`make demo`: the whole job on one machine, ending by itself.

A local control plane, the CRD, the operator (this checkout's code, in the background), the digits sample taken
to Ready there (kwok plays the pods), then the same spec's real training and serving through `modeldeploy run`,
ending with a prediction. Everything it started is stopped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modeldeploy.cluster.local import ClusterError, LocalCluster, find_binaries

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "samples" / "digits-cnn.yaml"


def say(text: str) -> None:
    sys.stdout.write(f"\n==> {text}\n")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    def __init__(self, name: str, sample: Path, timeout: float) -> None:
        self.cluster = LocalCluster(name)
        self.sample = sample
        self.timeout = timeout
        self.kubectl = str(find_binaries() / "kubectl")
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
        kubeconfig = self.cluster.up()
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        say("the ModelDeployment CRD")
        self.run_kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        self.run_kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
        log = self.operator_log
        say(f"the operator, in the background (its log: {log})")
        with log.open("wb") as out:
            self.operator = subprocess.Popen(
                [sys.executable, "-m", "modeldeploy.cli", "operator"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
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

    def run_locally(self) -> int:
        port = free_port()
        say(f"modeldeploy run {self.sample.relative_to(REPO)}: the real training, compression and serving, here")
        command = [sys.executable, "-m", "modeldeploy.cli", "run", str(self.sample), "--port", str(port)]
        return subprocess.call([*command, "--exit-after-predict"])

    def down(self) -> None:
        self.stop_operator()
        say(f"stopping the control plane {self.cluster.name}")
        self.cluster.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeldeploy.tools.demo", description=__doc__)
    parser.add_argument("--name", default="demo", help="the local cluster's name (default: %(default)s)")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="the ModelDeployment (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for Ready")
    args = parser.parse_args(argv)
    started = time.monotonic()
    demo = Demo(args.name, args.sample.resolve(), args.timeout)
    try:
        demo.start()
        demo.to_ready()
        demo.stop_operator()
        code = demo.run_locally()
    except (ClusterError, RuntimeError, subprocess.TimeoutExpired) as err:
        sys.stderr.write(f"demo failed: {err}\n")
        if demo.operator_log.exists():
            tail = demo.operator_log.read_text(errors="replace").splitlines()[-30:]
            sys.stderr.write(f"the operator's log ({demo.operator_log}), last lines:\n" + "\n".join(tail) + "\n")
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        demo.down()
    say(f"demo {'done' if code == 0 else 'FAILED'} in {time.monotonic() - started:.0f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
