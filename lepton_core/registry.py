"""The champion pointer: an atomic pointer to the promoted model, and an append-only history.

``champion/current.json`` names the model in production; it is replaced in one atomic write,
so a reader sees the old or the new champion, never a mix. Every promotion also adds one new
object ``champion/history/<UTC time>-<run>.json`` and none is ever rewritten: on S3 too
(where objects cannot be appended to) the history only grows.
"""

from datetime import UTC, datetime
from typing import Any

from lepton_core.store import ArtifactStore

POINTER_KEY = "champion/current.json"
HISTORY_PREFIX = "champion/history"


def current_champion(store: ArtifactStore) -> dict[str, Any] | None:
    return store.read_json(POINTER_KEY) if store.exists(POINTER_KEY) else None


def require_champion(store: ArtifactStore) -> dict[str, Any]:
    """The champion pointer; a ValueError naming the store when nothing was promoted yet."""
    pointer = current_champion(store)
    if pointer is None:
        raise ValueError(f"no champion under {store.uri}: run the training job first")
    return pointer


def champion_history(store: ArtifactStore) -> list[dict[str, Any]]:
    """Every promotion and rollback, oldest first."""
    return [store.read_json(key) for key in store.list(HISTORY_PREFIX) if key.endswith(".json")]


def champion_lineage(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The promotions still in force, oldest first: a promotion pushes, a rollback pops."""
    lineage: list[dict[str, Any]] = []
    for record in history:
        if record["action"] == "promote":
            lineage.append(record)
        else:
            lineage.pop()
    return lineage


def _record(store: ArtifactStore, record: dict[str, Any], run_id: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    record = {**record, "at": now.isoformat(), "run_id": run_id}
    history_key = f"{HISTORY_PREFIX}/{now.strftime('%Y%m%dT%H%M%S%fZ')}-{run_id[:8]}.json"
    if store.exists(history_key):
        raise FileExistsError(f"history entry {history_key} already exists; it is never rewritten")
    store.write_json(history_key, record)
    store.write_json(POINTER_KEY, record)
    return record


def model_files(store: ArtifactStore, prefix: str) -> dict[str, str]:
    """key -> sha256 of the description and weights of the model at ``prefix`` and of its
    siblings (the other variants of the same training run: an export takes the fp32 one)."""
    folder = prefix.rsplit("/", 1)[0]
    return {
        key: store.sha256(key)
        for key in sorted(store.files(folder))
        if key.endswith(("/model.json", "/model.pt"))
    }


def promote(store: ArtifactStore, entry: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Point the champion at ``entry['model_prefix']`` and record it in the history, with
    the sha256 of every file a loader of it reads (``files``, checked by
    ``models.load_model``)."""
    previous = (current_champion(store) or {}).get("model_prefix")
    files = model_files(store, entry["model_prefix"])
    return _record(store, {**entry, "files": files, "action": "promote", "previous": previous},
                   run_id)  # fmt: skip


def rollback(store: ArtifactStore, run_id: str, by: str | None = None) -> dict[str, Any]:
    """Point the champion back at the one before the current champion, and record it
    (``by``: who started it, where known)."""
    lineage = champion_lineage(champion_history(store))
    if len(lineage) < 2:
        raise ValueError(
            f"no earlier champion to roll back to ({len(lineage)} promotion(s) in force)"
        )
    current, target = lineage[-1], lineage[-2]
    skip = ("action", "previous", "at", "run_id", "by")
    keep = {k: v for k, v in target.items() if k not in skip}
    record = {**keep, "action": "rollback", "previous": current["model_prefix"], "by": by}
    return _record(store, record, run_id)
