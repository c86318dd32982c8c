"""Certificates and keys for the local control plane, made with the openssl command line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


class PkiError(RuntimeError):
    """openssl is missing or failed; the message carries its output."""


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise PkiError("openssl is not installed (Debian: apt-get install openssl)")
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PkiError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()[-2000:]}")


def make_pki(directory: Path, service_ip: str) -> None:
    """A CA; the apiserver's serving cert; an admin client cert (system:masters); the service-account key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "admin.crt").exists():
        return
    days = "3650"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        days,
        "-subj",
        "/CN=modeldeploy-local-ca",
        cwd=directory,
    )
    (directory / "apiserver.ext").write_text(
        f"subjectAltName=IP:127.0.0.1,IP:{service_ip},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        "extendedKeyUsage=serverAuth\n",
        encoding="utf-8",
    )
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n", encoding="utf-8")
    for name, subject, ext in (
        ("apiserver", "/CN=kube-apiserver", "apiserver.ext"),
        ("admin", "/O=system:masters/CN=modeldeploy-admin", "client.ext"),
    ):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
            cwd=directory,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            days,
            "-extfile",
            ext,
            cwd=directory,
        )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)


def _sign(directory: Path, name: str, subject: str, extensions: str, days: str = "3650") -> None:
    """A key and a certificate `name`.{key,crt} for `subject`, signed by the CA in `directory`."""
    (directory / f"{name}.ext").write_text(extensions, encoding="utf-8")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
             cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", days, "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip


def make_node_pki(directory: Path, node_name: str, node_ip: str) -> None:
    """The real node's identities: the kubelet's client cert (group system:nodes), its serving cert for the node's
    address (the apiserver checks it for logs, exec and port-forward), and kube-proxy's client cert."""
    if (directory / "kube-proxy.crt").exists():
        return
    client = "extendedKeyUsage=clientAuth\n"
    _sign(directory, "kubelet-client", f"/O=system:nodes/CN=system:node:{node_name}", client)
    _sign(
        directory,
        "kubelet-serving",
        f"/CN={node_name}",
        f"subjectAltName=IP:{node_ip},IP:127.0.0.1,DNS:{node_name}\nextendedKeyUsage=serverAuth\n",
    )
    _sign(directory, "kube-proxy", "/CN=system:kube-proxy", client)
