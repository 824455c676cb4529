"""Launching the Horovod training worker from a Dagster step, through Dagster Pipes.

``horovodrun`` starts one process per rank; rank 0 opens the Pipes channel and streams its
logs and the final materialization back to the step. Every rank's output is kept in
``rank.<N>/stdout|stderr`` files (``horovodrun --output-filename``) and teed to the step's
stdout. When any rank exits non-zero, horovodrun stops the others; the step then fails with
the failed rank's number and last lines. A hung job is bounded twice: Gloo collectives time out
after ``collective_timeout_s`` and the whole job after ``timeout_s``.
"""

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

TAIL_LINES = 30
FAILED_RANK = re.compile(r"Process (\d+) exit with status code (-?\d+)")


class HorovodJobError(Exception):
    """The Horovod job failed; the message names the rank and shows its last output lines."""


def horovodrun_path() -> str:
    """``horovodrun`` beside the running interpreter (the project's venv), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    found = beside if os.path.exists(beside) else shutil.which("horovodrun")
    if not found:
        raise FileNotFoundError(
            "horovodrun not found beside the Python interpreter or on PATH; "
            "run scripts/setup.sh to build and install Horovod"
        )
    return found


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
        description="horovodrun -H value, e.g. 'node1:4,node2:4'; empty: localhost:num_processes",
    )
    controller: Literal["gloo", "mpi"] = Field(
        default="gloo", description="Horovod controller: gloo (built in) or mpi"
    )
    network_interface: str = Field(
        default="", description="network interface(s) for Horovod traffic, e.g. 'eth0'"
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
        default_factory=dict, description="extra environment variables for every rank"
    )

    def processes_per_host(self) -> int:
        """The most processes any one host runs (from ``hosts``' slot counts)."""
        if not self.hosts:
            return self.num_processes
        return max(int(h.split(":")[1]) if ":" in h else 1 for h in self.hosts.split(","))

    @property
    def elastic(self) -> bool:
        return self.min_processes > 0

    def command(self, module: str, args: list[str], workdir: Path) -> list[str]:
        cmd = [horovodrun_path(), "-np", str(self.num_processes), f"--{self.controller}"]
        if self.elastic:
            most = self.max_processes or self.num_processes
            script = workdir / "discover_hosts.sh"
            slots = self.hosts or f"localhost:{most}"
            script.write_text("#!/bin/sh\n" + "".join(f"echo {h}\n" for h in slots.split(",")))
            script.chmod(0o755)
            cmd += ["--min-np", str(self.min_processes), "--max-np", str(most)]
            cmd += ["--host-discovery-script", str(script)]
        else:
            cmd += ["-H", self.hosts or f"localhost:{self.num_processes}"]
        cmd += ["--start-timeout", str(self.start_timeout_s)]
        if self.num_processes > 1:
            # Horovod 0.28.1's --output-filename fails with one process (log10(0) padding
            # the rank folder names); one process's output is the launcher's own anyway.
            cmd += ["--output-filename", str(workdir / "logs")]
        interface = self.network_interface
        if not interface and self.elastic and not self.hosts:
            # Elastic horovodrun otherwise waits for two hosts to agree on a common interface.
            interface = "lo"
        if interface:
            cmd += ["--network-interface", interface]
        return [*cmd, sys.executable, "-m", module, *args]

    def worker_env(self) -> dict[str, str]:
        # A fair share of cores per process: torch's default (all cores each) oversubscribes.
        threads = max(1, (os.cpu_count() or 1) // self.processes_per_host())
        return {
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": str(threads),
            "HOROVOD_GLOO_TIMEOUT_SECONDS": str(self.collective_timeout_s),
            **self.extra_env,
        }

    def run_worker(
        self, context: dg.AssetExecutionContext, module: str, args: list[str]
    ) -> dg.MaterializeResult:
        """Run ``module`` on every rank; returns the materialization rank 0 reported."""
        with tempfile.TemporaryDirectory(prefix="lepton-horovod-") as tmp:
            workdir = Path(tmp)
            command = self.command(module, args, workdir)
            context.log.info(f"launching: {' '.join(command)}")
            with dg.open_pipes_session(
                context=context,
                context_injector=dg.PipesTempFileContextInjector(),
                message_reader=dg.PipesTempFileMessageReader(),
            ) as session:
                env = {**os.environ, **self.worker_env(), **session.get_bootstrap_env_vars()}
                self._run(command, env, workdir, context)
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
        # A new session, so the whole process tree can be stopped on timeout or interrupt.
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
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
            code = process.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self._stop(process)
            raise HorovodJobError(
                f"Horovod job exceeded timeout_s={self.timeout_s}s and was stopped"
            ) from None
        except BaseException:
            context.log.info("interrupted: stopping the Horovod job")
            self._stop(process)
            raise
        finally:
            reader.join(timeout=10)
        if code != 0:
            raise HorovodJobError(failure_message("".join(output), workdir / "logs", list(tail)))

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
