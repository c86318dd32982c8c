"""The `modeldeploy cluster` subcommand: bring the local control plane up and down."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

HELP = "run a local Kubernetes control plane (etcd, apiserver, controllers, scheduler, kwok) on 127.0.0.1"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples:\n"
        "  export KUBECONFIG=$(modeldeploy cluster up | tail -1)\n"
        "  modeldeploy cluster status --name demo\n"
        "  modeldeploy cluster down\n"
        "  modeldeploy cluster up --real-node --name demo     # plus a real node for the project's pods\n"
        "  modeldeploy cluster up --gitops --name demo        # plus Flux and a Git server (docs/gitops.md)\n"
        "  modeldeploy cluster up --object-store --name demo  # plus an S3 server (versitygw; docs/object-storage.md)\n"
        "  modeldeploy cluster load-images --name demo        # re-import the images after `make images`\n"
    )
    parser.add_argument("action", choices=["up", "down", "status", "load-images"], help="what to do")
    parser.add_argument("--name", default="modeldeploy", help="cluster name; its state lives in a directory of its own")
    parser.add_argument("--nodes", type=int, default=3, help="fake (kwok) nodes to register (default: 3)")
    parser.add_argument(
        "--real-node",
        action="store_true",
        help="also run a real node (containerd, kubelet, kube-proxy; needs root): see docs/real-node.md",
    )
    parser.add_argument(
        "--gitops",
        action="store_true",
        help="also run Flux's source-controller and kustomize-controller and a Git server on 127.0.0.1 "
        "(built once from Flux's Go modules): see docs/gitops.md",
    )
    parser.add_argument(
        "--object-store",
        action="store_true",
        help="also run an S3 server (versitygw, built once from its Go module) on 127.0.0.1 with a bucket `models`, "
        "and print its endpoint and credentials: see docs/object-storage.md",
    )
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        help="load-images: an image of the local Docker engine to import into the real node (repeatable; "
        "default: the project's three images)",
    )


def run(args: argparse.Namespace) -> int:
    from modeldeploy.cluster.local import ClusterError, LocalCluster  # noqa: PLC0415 (keep --help fast)
    from modeldeploy.cluster.pki import PkiError  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cluster = LocalCluster(
        args.name, nodes=args.nodes, real_node=args.real_node, gitops=args.gitops, object_store=args.object_store
    )
    try:
        if args.action == "up":
            kubeconfig = cluster.up()
            sys.stderr.write(f"cluster {args.name} is up; kubectl --kubeconfig {kubeconfig} get nodes\n")
            store = cluster.object_store_info()
            if store:
                sys.stderr.write(describe_object_store(store, kubeconfig.parent))
            sys.stdout.write(f"{kubeconfig}\n")
        elif args.action == "down":
            stopped = cluster.down()
            sys.stderr.write(f"cluster {args.name}: stopped {', '.join(stopped) or 'nothing (it was not running)'}\n")
        elif args.action == "load-images":
            from modeldeploy.cluster.realnode import PROJECT_IMAGES  # noqa: PLC0415

            imported = cluster.load_images(args.image or list(PROJECT_IMAGES))
            sys.stderr.write(f"cluster {args.name}: imported {', '.join(imported)}\n")
        else:
            sys.stdout.write(json.dumps(cluster.status(), indent=2) + "\n")
    except (ClusterError, PkiError) as err:
        sys.stderr.write(f"modeldeploy cluster {args.action}: {err}\n")
        return 1
    return 0


def describe_object_store(store: dict[str, Any], directory: Path) -> str:
    """What a user needs to point a ModelDeployment (and their own tools) at the cluster's S3 server."""
    from modeldeploy.cluster import objectstore  # noqa: PLC0415

    env = objectstore.client_env(store)
    hosts = list(store.get("hosts") or [])
    pod_env_file = directory / ("object-store-pods.env" if hosts else "object-store.env")
    where = env["AWS_ENDPOINT_URL"] + "".join(f" and http://{h}:{store['port']} (for pods)" for h in hosts)
    lines = [
        f"object store: s3://{store['bucket']} at {where}",
        f"  credentials (also in {directory / 'object-store.env'}):",
        *(f"    {k}={v}" for k, v in env.items()),
        f"  for pods: kubectl create secret generic object-store --from-env-file={pod_env_file}",
        f"            then spec.storage.uri: s3://{store['bucket']}/PREFIX, spec.storage.secretRef.name: object-store",
    ]
    return "\n".join(lines) + "\n"
