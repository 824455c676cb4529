"""Attacks on Lepton, each failing if it succeeds (the list and outcomes: docs in the README's
Security section). A run's config must never reach a shell, a deployment's secrets never a
command line, a place a run chooses, or a file others can read."""

import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
import torch

from lepton_assets.backup import BackupError, restore
from lepton_assets.configs import check_run_config
from lepton_core.edge import export_onnx
from lepton_core.evaluate import champion_metrics
from lepton_core.models import (
    IntegrityError,
    build_model,
    champion_files,
    load_model,
    quantize_dynamic_int8,
    save_model,
)
from lepton_core.predict import predict_frame
from lepton_core.rank_env import RANK_ENV_FILE, RankEnvError, load_rank_env
from lepton_core.registry import promote, require_champion, rollback
from lepton_core.serving.follower import ChampionFollower
from lepton_core.serving.model import ServedModel
from lepton_core.spec import DIGITS_PROJECT
from lepton_core.store import ArtifactStore
from lepton_core.tuning import PASSWORD_VAR
from resources.alerts import AlertWebhookResource
from resources.artifact_store import ArtifactStoreResource
from resources.horovod_launcher import HorovodLauncherResource
from resources.label_studio import LabelStudioResource
from resources.landing_zone import LandingZoneResource
from resources.project import ProjectResource
from tests.conftest import digits_frame, digits_model_info, tree_bytes
from tests.secret_worker import digest

# What a shell would run: every one must be refused wherever a value could reach one.
SHELL = ["$(id > {f})", "`id > {f}`", "x; id > {f}", "x | id > {f}", "x && id > {f}",
         "x\nid > {f}", "x' > {f} '"]  # fmt: skip
HORO_FIELDS = {
    "hosts": "localhost:1,{attack}:1",
    "network_interface": "{attack}",
    "ssh_identity_file": "/tmp/{attack}",
}


@pytest.mark.parametrize("attack", SHELL)
@pytest.mark.parametrize("field", sorted(HORO_FIELDS))
def test_shell_in_a_horovod_field_is_refused_before_any_step_naming_it(
    field: str, attack: str, tmp_path: Path
):
    value = HORO_FIELDS[field].format(attack=attack.format(f=tmp_path / "pwned"))
    run_config = {"resources": {"horovod": {"config": {field: value}}}}
    with pytest.raises(dg.Failure, match=rf"resources\.horovod\.{field}: String should match"):
        check_run_config(run_config, DIGITS_PROJECT)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "extra_env",
    [{"LD_PRELOAD": "/tmp/x.so"}, {"PYTHONPATH": "/tmp"}, {"BASH_ENV": "/tmp/x"},
     {"OMP_NUM_THREADS": "1; id"}, {"OMP_NUM_THREADS": "$(id)"}, {"omp_x": "1"}],
)  # fmt: skip
def test_rank_variables_that_change_code_or_hold_shell_are_refused(extra_env: dict[str, str]):
    with pytest.raises(dg.Failure, match=r"resources\.horovod\.extra_env"):
        check_run_config({"resources": {"horovod": {"config": {"extra_env": extra_env}}}},
                         DIGITS_PROJECT)  # fmt: skip


def test_plain_values_pass_and_the_discovery_script_prints_the_hosts_as_data(tmp_path: Path):
    fine = {"hosts": "node-1.example:4,10.0.0.2:4", "network_interface": "eth0,ib0",
            "ssh_identity_file": "/home/me/.ssh/id_ed25519",
            "extra_env": {"OMP_NUM_THREADS": "2"}}  # fmt: skip
    check_run_config({"resources": {"horovod": {"config": fine}}}, DIGITS_PROJECT)
    launcher = HorovodLauncherResource(num_processes=2, min_processes=1, hosts="localhost:2",
                                       network_interface="lo")  # fmt: skip
    command = launcher.command("m", [], tmp_path)
    script = command[command.index("--host-discovery-script") + 1]
    assert "localhost" not in Path(script).read_text()  # the script holds no host text
    assert subprocess.run([script], capture_output=True, text=True).stdout == "localhost:2\n"


RESOURCE_FIELDS = [
    ("artifacts", ArtifactStoreResource, "uri", "file:///tmp/elsewhere"),
    ("landing", LandingZoneResource, "uri", "file:///etc"),
    ("label_studio", LabelStudioResource, "url", "http://127.0.0.1:9/steal"),
    ("alerts", AlertWebhookResource, "url_env_var", "LEPTON_ID_INDEX_URL"),
    ("project", ProjectResource, "project_path", "/tmp/evil.yaml"),
    ("project", ProjectResource, "pii_key_env_var", "HOME"),
]


@pytest.mark.parametrize(("key", "resource", "field", "value"), RESOURCE_FIELDS)
def test_where_secrets_data_and_code_go_is_not_run_config(key, resource, field, value):
    """Label Studio's token, the webhook, the store and the project's code go where the
    deployment says: a run config naming another place is refused by Dagster at launch."""

    @dg.asset(required_resource_keys={key})
    def probe() -> None:
        raise AssertionError("the run started")

    with pytest.raises(dg.DagsterInvalidConfigError, match=field):
        dg.materialize([probe], resources={key: resource()},
                       run_config={"resources": {key: {"config": {field: value}}}})  # fmt: skip


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "gopher://127.0.0.1:70/", "http://127.0.0.1:8090/\r\nX: y",
     "http://a b/", "ftp://127.0.0.1/", "http://user@127.0.0.1:8090/"],
)  # fmt: skip
def test_label_studio_and_webhooks_take_plain_http_urls_only(url: str, monkeypatch):
    monkeypatch.setenv("LEPTON_LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LEPTON_ALERT_WEBHOOK_URL", url)
    with pytest.raises(ValueError, match="LEPTON_LABEL_STUDIO_URL is not an http"):
        LabelStudioResource().resolved_url()
    with pytest.raises(ValueError, match="LEPTON_ALERT_WEBHOOK_URL is not an http") as caught:
        AlertWebhookResource().post({"summary": "x"})
    assert url not in str(caught.value)  # a webhook URL may hold a token: never echoed


def test_a_rank_env_file_open_to_others_or_missing_is_refused(tmp_path: Path, monkeypatch):
    path = tmp_path / "env.json"
    path.write_text(json.dumps({"LEPTON_X_SECRET": "s"}))
    path.chmod(0o644)
    monkeypatch.setenv(RANK_ENV_FILE, str(path))
    with pytest.raises(RankEnvError, match="readable by others"):
        load_rank_env()
    monkeypatch.setenv(RANK_ENV_FILE, str(tmp_path / "absent.json"))
    with pytest.raises(RankEnvError, match="shared filesystem"):
        load_rank_env()
    path.chmod(0o600)
    monkeypatch.setenv(RANK_ENV_FILE, str(path))
    monkeypatch.delenv("LEPTON_X_SECRET", raising=False)
    assert load_rank_env() == 1 and os.environ["LEPTON_X_SECRET"] == "s"


def scan_while(stop: threading.Event, flag: Path, seen: dict) -> None:
    """Every process's argv and the launcher's listening sockets, until both ranks are up;
    then the flag that lets them finish."""
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        ranks = 0
        for process in psutil.process_iter():
            try:
                argv = process.cmdline()
                seen["argv"].append(argv)
                if "tests.secret_worker" in argv and "-P" in argv and "sh" not in argv[0]:
                    ranks += 1
                if "resources.horovodrun" in argv:
                    seen["listening"] |= {
                        c.laddr.ip for c in process.net_connections() if c.status == "LISTEN"
                    }
            except psutil.Error:
                continue
        if ranks >= 2 and seen["listening"]:
            flag.touch()
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_secrets_reach_the_ranks_but_no_command_line_and_the_server_binds_loopback(
    tmp_path: Path, lepton_home: Path, instance: dg.DagsterInstance, monkeypatch
):
    markers = {
        "LEPTON_PII_KEY": "marker-pii-4f1c",
        "LEPTON_ID_INDEX_URL": "postgresql://lepton:marker-pw-9a7e@127.0.0.1/x",
        "AWS_SECRET_ACCESS_KEY": "marker-aws-77d2",
    }
    for name, value in markers.items():
        monkeypatch.setenv(name, value)
    passed = {PASSWORD_VAR: "marker-study-c3b0"}  # what the tuning step hands its ranks
    names = ",".join([*markers, *passed])
    flag = tmp_path / "scanned"

    @dg.asset
    def ranks(context: dg.AssetExecutionContext, horovod: HorovodLauncherResource):
        args = [names, str(flag)]
        return horovod.run_worker(context, "tests.secret_worker", args, secrets=passed)

    seen: dict = {"argv": [], "listening": set()}
    stop = threading.Event()
    scanner = threading.Thread(target=scan_while, args=(stop, flag, seen))
    scanner.start()
    try:
        launcher = HorovodLauncherResource(num_processes=2)
        result = dg.materialize([ranks], instance=instance, resources={"horovod": launcher})
    finally:
        stop.set()
        scanner.join()
    given = result.asset_materializations_for_node("ranks")[0].metadata["given"].value
    # every secret arrived in the rank's environment
    assert given == {k: digest(v) for k, v in {**markers, **passed}.items()}
    assert flag.exists() and len(seen["argv"]) > 100
    for secret in [*markers.values(), *passed.values()]:
        assert not [argv for argv in seen["argv"] if secret in " ".join(argv)], secret
    assert seen["listening"] == {"127.0.0.1"}


# -- restore: a contained unpack ---------------------------------------------------------


def write_backup(src: Path, files: dict[str, bytes], **manifest: object) -> Path:
    """A backup folder as ``lepton backup`` lays it out, with ``files`` and their digests."""
    for name, data in files.items():
        if not name.startswith("/") and ".." not in name and "//" not in name:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
    body = {"created": "2026-12-07T00:00:00+00:00", "data": "copy", "dagster_storage": "sqlite",
            "artifacts_uri": "file:///nowhere", "landing_uri": "file:///nowhere",
            "referenced": {"artifacts": {}, "landing": {}},
            "files": {n: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                      for n, d in files.items()}}  # fmt: skip
    (src / "manifest.json").write_text(json.dumps({**body, **manifest}))
    return src


@pytest.fixture
def empty_home(lepton_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(lepton_home / "dagster_home"))
    (lepton_home / "dagster_home").mkdir(parents=True)
    return lepton_home


FINE = {"artifacts/champion/current.json": b"{}", "landing/2026-01-01/a.csv": b"x\n1\n"}


@pytest.mark.parametrize(
    "name",
    ["dagster/home//tmp/lepton-pwned", "dagster/home/../../lepton-pwned",
     "artifacts/../../lepton-pwned", "landing/2026-01-01/../../../lepton-pwned",
     "/tmp/lepton-pwned", "elsewhere/lepton-pwned", "artifacts/a\nb"],
)  # fmt: skip
def test_restore_refuses_an_entry_that_climbs_out_and_writes_nothing(
    name: str, empty_home: Path, tmp_path: Path
):
    # The bad entry comes last: the earlier, fine ones must not have been written either.
    src = write_backup(tmp_path / "backup", {**FINE, name: b"pwned"})
    with pytest.raises(BackupError, match="manifest entry"):
        restore(src)
    assert tree_bytes(empty_home) == {}
    assert not Path("/tmp/lepton-pwned").exists()


def test_restore_follows_no_symlink_in_the_backup_or_the_home(empty_home: Path, tmp_path: Path):
    src = write_backup(tmp_path / "backup", {**FINE, "artifacts/passwd": b""})
    (src / "artifacts/passwd").unlink()
    (src / "artifacts/passwd").symlink_to("/etc/passwd")
    with pytest.raises(BackupError, match="is a symlink"):
        restore(src)
    assert tree_bytes(empty_home) == {}
    # A link planted in the home (a forced restore over a used one) is not written through.
    src = write_backup(tmp_path / "second", FINE)
    outside = tmp_path / "outside"
    outside.mkdir()
    (empty_home / "artifacts").mkdir(exist_ok=True)
    (empty_home / "artifacts" / "champion").symlink_to(outside)
    with pytest.raises(BackupError, match="is a symlink"):
        restore(src, force=True)
    assert list(outside.iterdir()) == []


def test_restore_reads_no_uri_the_manifest_alone_names(empty_home: Path, tmp_path: Path):
    asked: list[str] = []

    class Listener(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.end_headers()

    server = http.server.HTTPServer(("127.0.0.1", 0), Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for uri in (f"http://127.0.0.1:{server.server_port}/x", "file:///etc"):
            src = write_backup(tmp_path / f"b{len(uri)}", FINE, data="reference",
                               artifacts_uri=uri, referenced={"artifacts": {"passwd": 10},
                                                              "landing": {}})  # fmt: skip
            with pytest.raises(BackupError, match="--referenced-from"):
                restore(src)
            with pytest.raises(BackupError, match="file:// or s3://|is gone or changed"):
                restore(src, referenced_from=(uri,))
    finally:
        server.shutdown()
    assert asked == [] and tree_bytes(empty_home) == {}


def test_restore_imports_nothing_a_backups_dagster_yaml_names(
    empty_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    code = tmp_path / "code"
    code.mkdir()
    (code / "evil_storage.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(code))
    for yaml_text in (
        "storage:\n  module: evil_storage\n  class: Evil\n  config: {}\n",
        "run_launcher:\n  module: os\n  class: system\n",
        "python_logs:\n  dagster_handler_config:\n    handlers:\n      h: {class: evil.H}\n",
    ):
        src = write_backup(tmp_path / f"b{len(yaml_text)}", {**FINE,
                           "dagster/home/dagster.yaml": yaml_text.encode()},
                           dagster_storage="postgres")  # fmt: skip
        with pytest.raises(BackupError, match="names"):
            restore(src)
    assert not (tmp_path / "ran").exists() and tree_bytes(empty_home) == {}


# -- integrity from promotion to load ------------------------------------------------------


@pytest.fixture
def promoted(tmp_path: Path) -> ArtifactStore:
    """Two promotions of small MLPs (run a then run b), each with its fp32 and int8 variant."""
    store = ArtifactStore(f"file://{tmp_path / 'artifacts'}")
    info = digits_model_info("mlp")
    for run in ("a", "b"):
        save_model(store, f"models/{run}/fp32", build_model(info), info)
        save_model(store, f"models/{run}/int8", quantize_dynamic_int8(build_model(info)),
                   {**info, "quantization": "int8_dynamic", "variant": "int8_dynamic"})  # fmt: skip
        promote(store, {"model_prefix": f"models/{run}/int8"}, f"run-{run}")
    return store


def swap_weights(store: ArtifactStore, prefix: str) -> None:
    """Another run's weights of the same variant put in place behind the registry's back, with
    model.json's own digest updated too (whoever can write the store can do both)."""
    other = prefix.replace("models/b/", "models/x/").replace("models/a/", "models/x/")
    info = store.read_json(f"{prefix}/model.json")
    model = build_model(info)
    if info.get("quantization"):
        model = quantize_dynamic_int8(model)
    save_model(store, other, model, {k: v for k, v in info.items() if k != "sha256"})
    store.write_bytes(f"{prefix}/model.pt", store.read_bytes(f"{other}/model.pt"))
    store.write_bytes(f"{prefix}/model.json", store.read_bytes(f"{other}/model.json"))


def edit_description(store: ArtifactStore, prefix: str) -> None:
    info = store.read_json(f"{prefix}/model.json")
    store.write_json(f"{prefix}/model.json", {**info, "factory": "os:system"})


LOADERS = {
    "server": lambda store, c: ServedModel.load(
        store, c["model_prefix"], None, "torch", champion_files(c)
    ),  # fmt: skip
    "lepton predict": lambda store, c: predict_frame(store, digits_frame().head(2)),
    "lepton export": lambda store, c: export_onnx(store, c["model_prefix"], champion_files(c)),
    "evaluation of the champion": lambda store, c: champion_metrics(
        store, digits_frame(), torch.empty(0), {}
    ),  # fmt: skip
}


@pytest.mark.parametrize("tamper", [swap_weights, edit_description])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_every_loader_refuses_a_champion_whose_files_changed_after_promotion(
    promoted: ArtifactStore, loader: str, tamper
):
    champion = require_champion(promoted)
    # The export reads the fp32 sibling; the others the champion itself.
    prefix = "models/b/fp32" if loader == "lepton export" else "models/b/int8"
    tamper(promoted, prefix)
    refusal = rf"{prefix}/model\.(pt|json) has sha256 [0-9a-f]{{64}}, the champion record holds"
    with pytest.raises(IntegrityError, match=refusal + r" [0-9a-f]{64}: refused"):
        LOADERS[loader](promoted, champion)


def test_a_rollback_carries_the_digests_of_the_model_it_brings_back(promoted: ArtifactStore):
    swap_weights(promoted, "models/a/int8")
    record = rollback(promoted, "run-c")
    assert record["files"]["models/a/int8/model.json"]
    with pytest.raises(IntegrityError, match=r"models/a/int8/model\.json has sha256"):
        load_model(promoted, record["model_prefix"], champion_files(record))


def test_the_server_keeps_serving_when_a_promoted_model_was_swapped(promoted: ArtifactStore):
    def load(prefix: str, files: dict[str, str] | None) -> ServedModel:
        return ServedModel.load(promoted, prefix, None, "torch", files)

    follower = ChampionFollower(promoted, load, retry_s=0)
    follower.check()
    assert follower.current is not None and follower.current.prefix == "models/b/int8"
    save_model(promoted, "models/c/fp32", build_model(digits_model_info("mlp")),
               digits_model_info("mlp"))  # fmt: skip
    promote(promoted, {"model_prefix": "models/c/fp32"}, "run-c")
    swap_weights(promoted, "models/c/fp32")
    follower.check()
    assert follower.current.prefix == "models/b/int8"
    assert follower.last_error is not None and "IntegrityError" in follower.last_error["error"]
