"""Launching the Horovod training worker from a Dagster step, through Dagster Pipes.

``horovodrun`` starts one process per rank; rank 0 opens the Pipes channel and streams its
logs and the final materialization back to the step. Every rank's output is kept in
``rank.<N>/stdout|stderr`` files (``horovodrun --output-filename``) and teed to the step's
stdout. When any rank exits non-zero, horovodrun stops the others; the step then fails with
the failed rank's number and last lines. A hung job is bounded twice: Gloo collectives time out
after ``collective_timeout_s`` and the whole job after ``timeout_s``.
"""

import collections
import contextlib
import ctypes
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

import dagster as dg
import psutil
from pydantic import Field, field_validator

import lepton_core
from lepton_core.rank_env import RANK_ENV_FILE
from resources.horovodrun import BIND_VARIABLE

TAIL_LINES = 30
LOCAL_NAMES = ("localhost", "127.0.0.1")
POLL_S = 5  # how often a running job checks the run's status
PR_SET_PDEATHSIG = 1
RUN_MARKER = "LEPTON_HOROVOD_RUN"  # in every rank's environment: the Dagster run id
WORKDIR_PREFIX = "lepton-horovod-"
SINGLE_PROCESS_CYCLE_MS = 50
FAILED_RANK = re.compile(r"Process (\d+) exit with status code (-?\d+)")

# Strict shapes of the fields horovodrun passes on to ssh and a shell: a value that does not
# match is refused when the resource is built from run config, naming the field.
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})(?::[1-9][0-9]{0,3})?"
HOSTS = rf"^(?:{_HOST}(?:,{_HOST})*)?$"
_INTERFACE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}"
INTERFACES = rf"^(?:{_INTERFACE}(?:,{_INTERFACE})*)?$"
PATH = r"^(?:/[A-Za-z0-9_.@+-]+)*$"
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
ENV_VALUE = re.compile(r"^[A-Za-z0-9_.,:/=+@%-]*$")
EXTRA_ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "HOROVOD_", "NCCL_", "GLOO_", "TORCH_")
# What of the step's environment horovodrun itself is given. Horovod 0.28.1 writes every
# variable of its environment into each rank's command line (``sh -c 'env K=V … python …'``),
# which any local user reads in ``ps``: everything else (secrets among it) reaches the ranks
# through RANK_ENV_FILE, a file only this user can read (lepton_core.rank_env).
PASSED_ON = re.compile(
    r"^(PATH|HOME|USER|LOGNAME|LANG|TZ|TMPDIR|VIRTUAL_ENV|LD_LIBRARY_PATH|CUDA_VISIBLE_DEVICES"
    rf"|LC_[A-Z]+|({'|'.join(p.rstrip('_') for p in EXTRA_ENV_PREFIXES)})_[A-Z0-9_]+"
    r"|DAGSTER_PIPES_[A-Z_]+)$"
)


def ended_on_purpose(exc: BaseException | None) -> str | None:
    """Why the job was stopped, when the run was canceled, interrupted or marked failed
    (anywhere in the exception's chain: a cleanup step may raise an error of its own on top
    of the interrupt); None for a job that failed by itself."""
    while exc is not None:
        if isinstance(exc, RunEndedError):
            return str(exc)
        if isinstance(exc, KeyboardInterrupt | dg.DagsterExecutionInterruptedError):
            return "the run was interrupted (terminated): the Horovod job was stopped"
        exc = exc.__cause__ or exc.__context__
    return None


def die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGKILL when the parent dies (Linux)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def stop_leftover_ranks(run_id: str) -> int:
    """Stop this machine's processes that carry the run's marker (ranks and launchers of an
    earlier attempt); how many there were."""
    return stop_processes_with(RUN_MARKER, run_id)


def processes_with(variable: str, value: str) -> list[psutil.Process]:
    """This machine's other processes whose environment has ``variable=value``."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and process.environ().get(variable) == value:
                found.append(process)
    return found


def stop_processes_with(variable: str, value: str) -> int:
    """Stop (TERM, then KILL after 10 s) this machine's other processes whose environment
    has ``variable=value``; how many there were."""
    found = processes_with(variable, value)
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(found, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)
    return len(found)


def remove_stale_workdirs() -> None:
    """Remove work folders whose launching process is gone (it was killed before its own
    cleanup could run)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        pid = folder.name.removeprefix(WORKDIR_PREFIX).split("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def run_ended(context: dg.AssetExecutionContext | None) -> str | None:
    """The run's status when it is no longer running (None without a context)."""
    if context is None:
        return None
    run = context.instance.get_run_by_id(context.run.run_id)
    if run is None or run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING):
        return None
    return run.status.value


class HorovodJobError(Exception):
    """The Horovod job failed; the message names the rank and shows its last output lines."""


class RunEndedError(HorovodJobError):
    """The Dagster run ended (canceled, or marked failed) while its Horovod job ran."""


def code_root() -> str:
    """The folder that holds the ``lepton_core`` package this process imported."""
    return str(Path(lepton_core.__file__).resolve().parent.parent)


def horovodrun_command() -> list[str]:
    """horovodrun, run by this interpreter through ``resources.horovodrun`` (which binds
    Horovod's rendezvous server to the job's interface alone)."""
    if importlib.util.find_spec("horovod") is None:
        raise FileNotFoundError(
            "Horovod is not installed in this Python; run scripts/setup.sh to build and install it"
        )
    return [sys.executable, "-m", "resources.horovodrun"]


def last_lines(path: Path, count: int = TAIL_LINES) -> list[str]:
    if not path.exists():
        return []
    with path.open(errors="replace") as fh:
        return [line.rstrip("\n") for line in collections.deque(fh, maxlen=count)]


def describe_exit(code: int) -> str:
    """Exit codes as people read them: a signal by name (negative, or shell-style 128+N)."""
    number = -code if code < 0 else code - 128 if code > 128 else 0
    if not number:
        return f"exit code {code}"
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return f"exit code {code}: killed by {name}" if code > 0 else f"killed by {name}"


def failure_message(output: str, logs: Path, launcher_tail: list[str]) -> str:
    """Which rank failed first and its last lines; the launcher's last lines if none is known."""
    failed = FAILED_RANK.findall(output)
    if not failed:
        return "horovodrun failed before any rank reported; its last lines:\n" + "\n".join(
            launcher_tail
        )
    rank, code = int(failed[0][0]), int(failed[0][1])
    parts = [f"Horovod rank {rank} failed ({describe_exit(code)}); the job was stopped."]
    for rank_dir in sorted(logs.glob("rank.*")):
        if int(rank_dir.name.split(".")[1]) != rank:
            continue
        for stream in ("stderr", "stdout"):
            tail = last_lines(rank_dir / stream)
            if tail:
                parts.append(f"--- rank {rank} {stream}, last {len(tail)} lines ---")
                parts.extend(tail)
    if len(parts) == 1:  # no per-rank files (a one-process job): the launcher's output
        parts.append(f"--- last {len(launcher_tail)} lines of output ---")
        parts.extend(launcher_tail)
    return "\n".join(parts)


class HorovodLauncherResource(dg.ConfigurableResource):
    """Runs a worker module under ``horovodrun``; rank 0 talks back through Dagster Pipes."""

    num_processes: int = Field(default=2, ge=1, description="total number of training processes")
    hosts: str = Field(
        default="",
        pattern=HOSTS,
        description="horovodrun -H value, e.g. 'node1:4,node2:4' (host names or IPv4 "
        "addresses, each with its slot count); empty: localhost:num_processes",
    )
    controller: Literal["gloo", "mpi"] = Field(
        default="gloo", description="Horovod controller: gloo (built in) or mpi"
    )
    network_interface: str = Field(
        default="",
        pattern=INTERFACES,
        description="network interface(s) for Horovod traffic, e.g. 'eth0' (comma-separated)",
    )
    ssh_port: int = Field(
        default=0, ge=0, description="SSH port of the other hosts (horovodrun -p); 0: ssh's"
    )
    ssh_identity_file: str = Field(
        default="",
        pattern=PATH,
        description="absolute path of the private key for SSH to the other hosts (horovodrun -i)",
    )
    start_timeout_s: int = Field(
        default=60, ge=1, description="seconds for all processes to start and connect"
    )
    collective_timeout_s: int = Field(
        default=60, ge=1, description="seconds a Gloo collective waits for a silent peer"
    )
    timeout_s: int = Field(default=4 * 3600, ge=1, description="wall-clock limit of the whole job")
    min_processes: int = Field(
        default=0,
        ge=0,
        description="elastic Horovod: fewest processes to keep training with; "
        "0 disables elastic mode",
    )
    max_processes: int = Field(
        default=0,
        ge=0,
        description="elastic Horovod: most processes to scale up to; 0 means num_processes",
    )
    extra_env: dict[str, str] = Field(
        default_factory=dict,
        description="extra environment variables for every rank: names starting with "
        f"{', '.join(EXTRA_ENV_PREFIXES)}; values of letters, digits and . , : / = + @ % -",
    )

    @field_validator("extra_env")
    @classmethod
    def _plain_extra_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not (ENV_NAME.match(name) and name.startswith(EXTRA_ENV_PREFIXES)):
                raise ValueError(
                    f"extra_env: {name!r} is not a variable ranks may be given (allowed: "
                    f"names of A-Z, 0-9, _ starting with {', '.join(EXTRA_ENV_PREFIXES)})"
                )
            if not ENV_VALUE.match(text):
                raise ValueError(
                    f"extra_env.{name}: {text!r} holds a character other than letters, "
                    "digits and . , : / = + @ % -"
                )
        return value

    def processes_per_host(self) -> int:
        """The most processes any one host runs (from ``hosts``' slot counts)."""
        if not self.hosts:
            return self.num_processes
        return max(int(h.split(":")[1]) if ":" in h else 1 for h in self.hosts.split(","))

    @property
    def elastic(self) -> bool:
        return self.min_processes > 0

    def command(self, module: str, args: list[str], workdir: Path) -> list[str]:
        cmd = [*horovodrun_command(), "-np", str(self.num_processes), f"--{self.controller}"]
        if self.elastic:
            most = self.max_processes or self.num_processes
            slots = self.hosts or f"localhost:{most}"
            # The script prints a file: the host list is data, never part of a script.
            (workdir / "hosts").write_text("".join(f"{h}\n" for h in slots.split(",")))
            script = workdir / "discover_hosts.sh"
            script.write_text('#!/bin/sh\nexec cat "$(dirname "$0")/hosts"\n')
            script.chmod(0o700)
            cmd += ["--min-np", str(self.min_processes), "--max-np", str(most)]
            cmd += ["--host-discovery-script", str(script)]
        else:
            cmd += ["-H", self.hosts or f"localhost:{self.num_processes}"]
        cmd += ["--start-timeout", str(self.start_timeout_s)]
        if self.ssh_port:
            cmd += ["--ssh-port", str(self.ssh_port)]
        if self.ssh_identity_file:
            cmd += ["--ssh-identity-file", self.ssh_identity_file]
        if self.num_processes > 1:
            # Horovod 0.28.1's --output-filename fails with one process (log10(0) padding
            # the rank folder names); one process's output is the launcher's own anyway.
            cmd += ["--output-filename", str(workdir / "logs")]
        cmd += ["--network-interface", self.interface()]
        # -P: the rank's working directory is not put on its import path (see worker_env).
        # The rank loads its environment file first (lepton_core.rank_env), then ``module``.
        return [*cmd, sys.executable, "-P", "-m", "lepton_core.rank_env", module, *args]

    def one_host(self) -> bool:
        return all(h.split(":")[0] in LOCAL_NAMES for h in (self.hosts or "localhost").split(","))

    def interface(self) -> str:
        """The interface(s) Horovod's traffic takes: the configured one, else loopback for a
        one-host job (its rendezvous server then listens on 127.0.0.1 alone; elastic
        horovodrun would otherwise wait for two hosts to agree on a common interface)."""
        if self.network_interface:
            return self.network_interface
        if not self.one_host():
            raise ValueError(
                f"hosts={self.hosts!r} spans several hosts: set network_interface to the "
                "interface they reach each other on (Horovod's server binds to it alone)"
            )
        return "lo"

    def worker_env(self) -> dict[str, str]:
        """Threads per rank, timeouts, and the import path: ranks import Lepton from the
        folder this process imported it from, first on ``PYTHONPATH`` (and ``-P`` keeps the
        working directory off), so a rank never runs another checkout's code than its step."""
        # A fair share of cores per process: torch's default (all cores each) oversubscribes.
        threads = max(1, (os.cpu_count() or 1) // self.processes_per_host())
        paths = [code_root(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": str(threads),
            "HOROVOD_GLOO_TIMEOUT_SECONDS": str(self.collective_timeout_s),
        }
        if self.num_processes == 1 and not self.elastic:
            # One process has no gradients to negotiate: Horovod's background loop would still
            # wake every 1 ms and take CPU from training (6 of 6 bench pairs were faster at
            # 20-50 ms). Only the few per-epoch collectives wait for its tick.
            env["HOROVOD_CYCLE_TIME"] = str(SINGLE_PROCESS_CYCLE_MS)
        return {**env, **self.extra_env}

    def launch_env(
        self, workdir: Path, bootstrap: dict[str, str], secrets: dict[str, str]
    ) -> dict[str, str]:
        """horovodrun's environment: what it may write into the ranks' command lines
        (PASSED_ON of this process's, the worker settings, Dagster Pipes' bootstrap), and
        the path of a file (mode 0600) holding the rest of this process's environment and
        ``secrets``, which each rank loads before anything else."""
        kept = {k: v for k, v in os.environ.items() if PASSED_ON.match(k)}
        rest = {k: v for k, v in os.environ.items() if k not in kept}
        env_file = workdir / "rank.env.json"
        descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as fh:
            json.dump({**rest, **secrets}, fh)
        return {
            **kept,
            **self.worker_env(),
            **bootstrap,
            RANK_ENV_FILE: str(env_file),
            BIND_VARIABLE: self.interface().split(",")[0],
        }

    def run_worker(
        self,
        context: dg.AssetExecutionContext,
        module: str,
        args: list[str],
        secrets: dict[str, str] | None = None,
    ) -> dg.MaterializeResult:
        """Run ``module`` on every rank; returns the materialization rank 0 reported.
        ``secrets``: environment variables the ranks need and no file may hold (never logged).

        Before it starts, ranks that an earlier attempt of the same run left behind are
        stopped and the work folders of dead launches removed, so a retry never trains beside
        an orphan."""
        run_id = context.run.run_id
        stopped = stop_leftover_ranks(run_id)
        if stopped:
            context.log.warning(f"stopped {stopped} processes left by an earlier attempt")
        remove_stale_workdirs()
        try:
            return self._launch(context, module, args, secrets or {})
        except BaseException as exc:
            reason = ended_on_purpose(exc)
            if reason is None:
                raise
            # A canceled, interrupted or failed run is over: a retry would train for nobody.
            raise dg.Failure(description=reason, allow_retries=False) from exc

    def _launch(
        self,
        context: dg.AssetExecutionContext,
        module: str,
        args: list[str],
        secrets: dict[str, str],
    ) -> dg.MaterializeResult:
        with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-") as tmp:
            workdir = Path(tmp)
            command = self.command(module, args, workdir)
            context.log.info(f"launching: {' '.join(command)}")
            with dg.open_pipes_session(
                context=context,
                context_injector=dg.PipesTempFileContextInjector(),
                message_reader=dg.PipesTempFileMessageReader(),
            ) as session:
                env = self.launch_env(workdir, {**session.get_bootstrap_env_vars()}, secrets)
                env[RUN_MARKER] = context.run.run_id
                self._run(command, env, workdir, context)
                ended = run_ended(context)
                if ended:  # it ended while the job finished: report nothing into it
                    raise RunEndedError(f"the run is {ended}: its model is not recorded")
            return dg.PipesClientCompletedInvocation(session).get_materialize_result()

    def _run(
        self,
        command: list[str],
        env: dict[str, str],
        workdir: Path,
        context: dg.AssetExecutionContext,
    ) -> None:
        output: list[str] = []
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        # A new session, so the whole process tree can be stopped on timeout or interrupt;
        # and horovodrun dies with this process, even by SIGKILL (its middlemen then stop
        # the ranks).
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.write(line)
                tail.append(line.rstrip("\n"))
                if FAILED_RANK.search(line):
                    output.append(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = self._wait(process, context)
        except HorovodJobError:
            self._stop(process)
            raise
        except BaseException:
            context.log.info("interrupted: stopping the Horovod job")
            self._stop(process)
            raise
        finally:
            reader.join(timeout=10)
        if code != 0:
            raise HorovodJobError(failure_message("".join(output), workdir / "logs", list(tail)))

    def _wait(self, process: subprocess.Popen[str], context: dg.AssetExecutionContext) -> int:
        """The job's exit code; a HorovodJobError past ``timeout_s`` or once the run has
        ended (run monitoring marked it failed after its worker died, or it was canceled)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return process.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise HorovodJobError(
                    f"Horovod job exceeded timeout_s={self.timeout_s}s and was stopped"
                )
            ended = run_ended(context)
            if ended:
                raise RunEndedError(f"the run is {ended}: the Horovod job was stopped")

    @staticmethod
    def _stop(process: subprocess.Popen[str]) -> None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
