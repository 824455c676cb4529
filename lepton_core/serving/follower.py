"""Following the champion: a promotion or rollback is served without a restart.

A thread polls the champion pointer (``champion/current.json``, local or S3). When it names
another model, the new version is loaded beside the one serving, warmed up and checked
(``ServedModel.load``), and only then becomes ``current``: one reference assignment, atomic
for every reader. A request holds the version it started on until it is answered, so
in-flight requests finish on their model. A version that fails to load leaves the old one
serving; the failure is logged, counted and shown in readiness detail, and that pointer is
tried again only after ``retry_s`` (or when the pointer moves again).
"""

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lepton_core.models import champion_files
from lepton_core.registry import current_champion
from lepton_core.serving.model import ServedModel
from lepton_core.store import ArtifactStore

log = logging.getLogger("lepton.serve")


class ChampionFollower:
    def __init__(
        self,
        store: ArtifactStore,
        load: Callable[[str, dict[str, str] | None], ServedModel],
        poll_s: float = 1.0,
        retry_s: float = 60.0,
        on_swap: Callable[[ServedModel], None] | None = None,
        on_failure: Callable[[str, Exception], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.load = load
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.on_swap = on_swap
        self.on_failure = on_failure
        self.clock = clock
        self.current: ServedModel | None = None
        self.last_error: dict[str, Any] | None = None
        self._failed_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """One poll: swap to the pointer's model if it is new and loads."""
        pointer = current_champion(self.store)
        if pointer is None:
            return
        prefix = pointer["model_prefix"]
        if self.current is not None and self.current.prefix == prefix:
            return
        failed = self._failed_at.get(prefix)
        if failed is not None and self.clock() - failed < self.retry_s:
            return
        try:
            served = self.load(prefix, champion_files(pointer))
        except Exception as exc:  # any failure of a new version leaves the old one serving
            self._failed_at[prefix] = self.clock()
            self.last_error = {
                "model": prefix,
                "error": f"{type(exc).__name__}: {exc}",
                "at": datetime.now(UTC).isoformat(),
            }
            serving = self.current.version if self.current else "nothing"
            log.error("could not load %s (still serving %s): %s", prefix, serving, exc)
            if self.on_failure:
                self.on_failure(prefix, exc)
            return
        previous = self.current
        self.current = served
        self._failed_at.pop(prefix, None)
        log.info("now serving %s (was %s)", served.version, previous.version if previous else None)
        if self.on_swap:
            self.on_swap(served)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except OSError as exc:  # the store unreachable for a moment: keep serving, retry
                log.warning("champion pointer unreadable: %s", exc)

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._run, name="champion-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
