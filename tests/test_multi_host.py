"""Horovod across two hosts for real: two network namespaces joined by a veth pair, Debian's
sshd in the second on a throwaway key, horovodrun's remote-host path from the first. The
two-host job must end with the same weights as a one-host job of the same seed."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_assets.training import WORKER_MODULE
from lepton_core.data import read_dataset_info
from lepton_core.models import model_description
from lepton_core.spec import DIGITS_PROJECT, TrainingSettings
from lepton_core.store import ArtifactStore
from resources.horovod_launcher import HorovodJobError, HorovodLauncherResource

SSHD = "/usr/sbin/sshd"
PORT = 2222
pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not Path(SSHD).exists() or not shutil.which("ip"),
        reason="needs root, iproute2 and Debian's openssh-server (scripts/setup.sh --test)",
    ),
]


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


def wait_for_port(namespace: str, address: str, seconds: float = 20) -> None:
    probe = f"import socket; socket.create_connection(({address!r}, {PORT}), timeout=1)"
    deadline = time.monotonic() + seconds
    while True:
        check = ["ip", "netns", "exec", namespace, sys.executable, "-c", probe]
        if subprocess.run(check, capture_output=True).returncode == 0:
            return
        assert time.monotonic() < deadline, f"sshd on {address}:{PORT} did not come up"
        time.sleep(0.5)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[dict]:
    """Namespaces A (10.77.0.1) and B (10.77.0.2, sshd on 2222), each with an /etc/hosts that
    maps this machine's name to its own address (Horovod's process-set Gloo context binds to
    whatever the name resolves to)."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"lepton-a-{tag}", f"lepton-b-{tag}"
    hosts = {a: "10.77.0.1", b: "10.77.0.2"}
    sshd = None
    try:
        for namespace in hosts:
            sh("ip", "netns", "add", namespace)
        sh("ip", "link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for namespace, end in ((a, f"va{tag}"), (b, f"vb{tag}")):
            sh("ip", "link", "set", end, "netns", namespace)
            sh("ip", "-n", namespace, "link", "set", end, "name", "hv0")
            sh("ip", "-n", namespace, "addr", "add", f"{hosts[namespace]}/24", "dev", "hv0")
            sh("ip", "-n", namespace, "link", "set", "hv0", "up")
            sh("ip", "-n", namespace, "link", "set", "lo", "up")
            etc = Path("/etc/netns") / namespace
            etc.mkdir(parents=True, exist_ok=True)
            name = socket.gethostname()
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{hosts[namespace]} {name}\n")
        key, host_key = tmp_path / "id_ed25519", tmp_path / "host_ed25519"
        for path in (key, host_key):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path))
        (tmp_path / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
        config = tmp_path / "sshd_config"
        config.write_text(
            f"Port {PORT}\nListenAddress {hosts[b]}\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nPidFile {tmp_path / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "StrictModes no\nUsePAM no\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        log = (tmp_path / "sshd.log").open("w")
        sshd = subprocess.Popen(
            ["ip", "netns", "exec", b, SSHD, "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(a, hosts[b])
        yield {
            "driver": a,
            "addresses": list(hosts.values()),
            "key": str(key),
            "sshd_log": tmp_path / "sshd.log",
        }
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        for namespace in (a, b):
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)


def train(
    store: ArtifactStore,
    version: str,
    launcher: HorovodLauncherResource,
    name: str,
    namespace: str | None = None,
) -> dict:
    """One Horovod job of the worker, from the driver's namespace; the saved model's record."""
    job = {
        **TrainingSettings(epochs=2, patience=0, seed=7).model_dump(),
        "model_info": model_description(DIGITS_PROJECT, read_dataset_info(store, version)),
        "loss": None,
        "dataset_version": version,
        "output_prefix": f"models/{name}",
        "checkpoint_prefix": f"checkpoints/{name}",
    }
    store.write_json(f"runs/{name}/job.json", job)
    args = ["--artifacts-uri", store.uri, "--job-key", f"runs/{name}/job.json"]
    with tempfile.TemporaryDirectory() as workdir:
        command = launcher.command(WORKER_MODULE, args, Path(workdir))
        if namespace:
            command = ["ip", "netns", "exec", namespace, *command]
        env = launcher.launch_env(Path(workdir), {}, {})
        launcher._run(command, env, Path(workdir), context=None)  # type: ignore[arg-type]
    return store.read_json(f"models/{name}/model.json")


def test_ranks_on_two_hosts_train_what_one_host_trains(
    two_hosts: dict, artifacts: ArtifactStore, dataset_version: str
):
    # One intra-op thread per rank in both jobs: the same arithmetic, so the same weights.
    one_thread = {"OMP_NUM_THREADS": "1"}
    local = HorovodLauncherResource(num_processes=2, extra_env=one_thread)
    spread = HorovodLauncherResource(
        num_processes=2,
        hosts=",".join(f"{address}:1" for address in two_hosts["addresses"]),
        network_interface="hv0",
        ssh_port=PORT,
        ssh_identity_file=two_hosts["key"],
        extra_env=one_thread,
    )
    one_host = train(artifacts, dataset_version, local, "one-host")
    two_host = train(artifacts, dataset_version, spread, "two-hosts", two_hosts["driver"])
    assert two_host["sha256"] == one_host["sha256"]
    # Rank 1 really ran on the second host: horovodrun logged in there over SSH.
    assert "Accepted publickey for root" in two_hosts["sshd_log"].read_text()


def test_an_unreachable_host_fails_within_the_start_timeout_naming_it(
    two_hosts: dict, artifacts: ArtifactStore, dataset_version: str
):
    unreachable = "10.77.0.9"
    launcher = HorovodLauncherResource(
        num_processes=2,
        hosts=f"{two_hosts['addresses'][0]}:1,{unreachable}:1",
        network_interface="hv0",
        ssh_port=PORT,
        ssh_identity_file=two_hosts["key"],
        start_timeout_s=15,
    )
    started = time.monotonic()
    with pytest.raises(HorovodJobError, match=unreachable):
        train(artifacts, dataset_version, launcher, "unreachable", two_hosts["driver"])
    assert time.monotonic() - started < 60
