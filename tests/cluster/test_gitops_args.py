"""Flux's controllers as the local cluster starts them: every listener on 127.0.0.1, each on its own port."""

from __future__ import annotations

from pathlib import Path

from modeldeploy.cluster import gitops


def test_every_flux_listener_binds_127_0_0_1_on_a_port_of_its_own() -> None:
    ports = {name: 40000 + i for i, name in enumerate(gitops.PORTS)}
    args = gitops.source_controller_args(Path("/state/flux-artifacts"), ports) + gitops.kustomize_controller_args(ports)
    addresses = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0].endswith("-addr")]
    assert len(addresses) == 6  # storage, storage-adv, metrics and health of one, metrics and health of the other
    assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
    listening = [a for a in addresses if a != f"127.0.0.1:{ports['source-storage']}"]
    assert len(set(listening)) == len(listening) == 4


def test_the_artifact_url_kustomize_controller_fetches_is_a_full_address() -> None:
    """Left empty, --storage-adv-addr becomes the bind address `:PORT`, and every artifact fetch fails."""
    ports = {name: 40000 + i for i, name in enumerate(gitops.PORTS)}
    args = gitops.source_controller_args(Path("/s"), ports)
    assert f"--storage-adv-addr=127.0.0.1:{ports['source-storage']}" in args


def test_the_controllers_find_the_cluster_through_kubeconfig_in_their_environment() -> None:
    env = gitops.controller_env(Path("/state/kubeconfig"))
    assert env["KUBECONFIG"] == "/state/kubeconfig"
    assert gitops.git_url({"git": 4242}, "team-a-models") == "http://127.0.0.1:4242/team-a-models.git"
