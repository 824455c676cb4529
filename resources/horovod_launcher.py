"""Launching the Horovod training worker from a Dagster step, through Dagster Pipes."""

import os
import shutil
import sys
from typing import Literal

import dagster as dg
from pydantic import Field


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

    def command(self, module: str, args: list[str]) -> list[str]:
        cmd = [horovodrun_path(), "-np", str(self.num_processes), f"--{self.controller}"]
        cmd += ["-H", self.hosts or f"localhost:{self.num_processes}"]
        cmd += ["--start-timeout", str(self.start_timeout_s)]
        if self.network_interface:
            cmd += ["--network-interface", self.network_interface]
        return [*cmd, sys.executable, "-m", module, *args]

    def worker_env(self) -> dict[str, str]:
        # One process per core share: torch's default of all cores per process oversubscribes.
        threads = max(1, (os.cpu_count() or 1) // self.num_processes)
        return {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}

    def run_worker(
        self, context: dg.AssetExecutionContext, module: str, args: list[str]
    ) -> dg.MaterializeResult:
        """Run ``module`` on every rank; returns the materialization rank 0 reported."""
        command = self.command(module, args)
        context.log.info(f"launching: {' '.join(command)}")
        invocation = dg.PipesSubprocessClient().run(
            context=context, command=command, env=self.worker_env()
        )
        return invocation.get_materialize_result()
