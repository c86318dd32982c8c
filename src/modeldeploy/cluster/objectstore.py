"""A real S3 server beside the local control plane: versitygw (Apache-2.0) with its posix backend.

`modeldeploy cluster up --object-store` starts it after the control plane, on 127.0.0.1 (and on the real node's
bridge address, so that pods there reach it), with its objects under the cluster's state directory and a fresh
root key pair; `down` stops it like every other component. The binary is built from versitygw's Go module by
build-objectstore.sh, cached like the control plane's.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Final

COMPONENT: Final = "objectstore"
PORT_KEY: Final = "objectstore"
BUCKET: Final = "models"
REGION: Final = "us-east-1"
HEALTH_PATH: Final = "/healthz"


class ObjectStoreBuildError(RuntimeError):
    """versitygw is not built and could not be; the message says what to do."""


def find_binary(build: bool = True) -> Path:
    """The versitygw binary, building it (once, cached) when it is missing."""
    override = os.environ.get("MODELDEPLOY_VERSITYGW")
    if override:
        if not Path(override).is_file():
            raise ObjectStoreBuildError(f"MODELDEPLOY_VERSITYGW={override} is not a file")
        return Path(override)
    script = resources.files("modeldeploy.cluster").joinpath("build-objectstore.sh")
    env = {**os.environ, "MODELDEPLOY_NO_BUILD": "" if build else "1"}
    with resources.as_file(script) as script_path:
        result = subprocess.run(["bash", str(script_path)], stdout=subprocess.PIPE, text=True, env=env, check=False)
    if result.returncode != 0:
        what = "building versitygw failed" if build else "versitygw is missing"
        raise ObjectStoreBuildError(f"{what} (the lines above say why)")
    return Path(result.stdout.strip().splitlines()[-1]) / "versitygw"


def new_credentials() -> dict[str, str]:
    """A root key pair for one cluster's store (in its state directory, gone with `down`)."""
    return {"accessKey": "md" + secrets.token_hex(9), "secretKey": secrets.token_urlsafe(30)}


def listen_addresses(port: int, extra_hosts: list[str]) -> list[str]:
    return [f"127.0.0.1:{port}", *(f"{host}:{port}" for host in extra_hosts)]


def server_args(data_dir: Path, port: int, extra_hosts: list[str]) -> list[str]:
    args: list[str] = []
    for address in listen_addresses(port, extra_hosts):
        args += ["--port", address]
    # Credentials go in the environment (server_env), never on the command line where `ps` shows them.
    return [*args, "--region", REGION, "--health", HEALTH_PATH, "posix", str(data_dir)]


def server_env(credentials: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "ROOT_ACCESS_KEY_ID": credentials["accessKey"],
        "ROOT_SECRET_ACCESS_KEY": credentials["secretKey"],
    }


def endpoint(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def client_env(info: dict[str, Any], host: str = "127.0.0.1") -> dict[str, str]:
    """The standard AWS variables a client (s3fs, the aws CLI, a pod through spec.storage.secretRef) needs."""
    return {
        "AWS_ACCESS_KEY_ID": info["accessKey"],
        "AWS_SECRET_ACCESS_KEY": info["secretKey"],
        "AWS_ENDPOINT_URL": endpoint(host, int(info["port"])),
        "AWS_DEFAULT_REGION": REGION,
    }


def create_bucket(info: dict[str, Any], binary: Path, bucket: str = BUCKET) -> None:
    """Make the store's bucket with versitygw's own admin command (owned by the root key pair)."""
    env = {
        **os.environ,
        "ADMIN_ACCESS_KEY_ID": info["accessKey"],
        "ADMIN_SECRET_ACCESS_KEY": info["secretKey"],
        "ADMIN_ENDPOINT_URL": endpoint("127.0.0.1", int(info["port"])),
    }
    result = subprocess.run(
        [str(binary), "admin", "create-bucket", "--owner", info["accessKey"], "--bucket", bucket],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if result.returncode != 0 and "BucketAlreadyOwnedByYou" not in result.stdout + result.stderr:
        raise RuntimeError(f"versitygw could not create bucket {bucket}: {(result.stderr or result.stdout).strip()}")


@contextmanager
def standalone(
    data_dir: Path, port: int, *, binary: Path | None = None, timeout: float = 30
) -> Iterator[dict[str, Any]]:
    """A store of its own, without a cluster (the object-storage tests and bench/objectstore.py): versitygw on
    127.0.0.1:port over data_dir, its bucket made; yields the same info as a cluster's, stopped on exit."""
    info: dict[str, Any] = {"port": port, "bucket": BUCKET, "data": str(data_dir), "hosts": [], **new_credentials()}
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"versitygw-{port}.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [str(binary or find_binary()), *server_args(data_dir, port, [])],
            env=server_env(info),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        url = endpoint("127.0.0.1", port) + HEALTH_PATH
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"versitygw exited with {proc.returncode}: {log_path.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"versitygw did not answer {url} within {timeout:g} s")
            time.sleep(0.1)
        create_bucket(info, binary or find_binary())
        yield info
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
