"""Retention: what in the artifact store nothing needs any more, listed and removed.

The store keeps growing with every retrain: a dataset version, a trained model, its
compressed variants, an evaluation report, checkpoints and a job file per run. The policy:

- **never removed**: the days' data (``raw/``, ``validated/``, ``quarantine/``,
  ``validation/``), the champion pointer and its whole history (``champion/``) and the
  ``current/`` pointers;
- **kept**: whatever a champion record ever named (its model generation, report and dataset
  version, so every rollback still works), whatever a ``current/`` pointer names, and the
  ``keep_last`` most recent entries of each kind below (newest file inside an entry decides);
- **removed**: every other entry of these kinds.

Kinds of entries: a dataset version (``datasets/<version>/``); a model generation, one
training run's model with its compressed variants and report (``models/<g>/``,
``compressed/<g>/``, ``reports/<g>/``, where ``<g>`` is ``<dataset version>-<run>``); a
checkpoint lineage (``checkpoints/<version>/<run>/``); a run's job file (``runs/<run>/``);
a tuning study's trials (``tuning/<study>/``; the study itself is in the Dagster instance's
database); a day's split shard (``shards/<day>-<digest>/``). A kept model generation keeps
its dataset version, and a kept dataset version the shards it lists; a shard is kept for no
other reason.

Served traffic is kept by day: the sampler's rows (``serving/samples/<day>/``), each day's
served-drift record (``serving/drift/<day>.json``) and the annotation candidates picked from
a day (``annotations/candidates/<day>.parquet``) stay for the ``keep_days`` newest days that
have them, each kind on its own; older days go. ``lepton gc --dry-run`` lists the plan.
"""

import re
from dataclasses import dataclass, field

from lepton_core.keys import dataset_info_key
from lepton_core.registry import champion_history
from lepton_core.store import ArtifactStore

GENERATION_FOLDERS = ("models", "compressed", "reports")
# kind -> (folders whose entries it owns, depth of an entry below the folder)
KINDS = {
    "dataset": (("datasets",), 1),
    "generation": (GENERATION_FOLDERS, 1),
    "checkpoint": (("checkpoints",), 2),
    "run": (("runs",), 1),
    "shard": (("shards",), 1),
    "study": (("tuning",), 1),
}
# keep_last applies to these
RECENT_KINDS = ("dataset", "generation", "checkpoint", "run", "study")
# kind -> folder of per-day entries (a folder or a file named by its day); keep_days applies
DAY_KINDS = {
    "served_samples": "serving/samples",
    "served_drift": "serving/drift",
    "annotation_candidates": "annotations/candidates",
}
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass
class Entry:
    kind: str
    name: str  # e.g. a dataset version, a generation "<version>-<run>", "<version>/<run>"
    files: dict[str, tuple[int, float]] = field(default_factory=dict)

    @property
    def newest(self) -> float:
        return max(modified for _, modified in self.files.values())

    @property
    def size(self) -> int:
        return sum(size for size, _ in self.files.values())


@dataclass
class Plan:
    keep: list[Entry]
    delete: list[Entry]

    @property
    def freed_bytes(self) -> int:
        return sum(e.size for e in self.delete)


def entries(store: ArtifactStore) -> list[Entry]:
    found: dict[tuple[str, str], Entry] = {}
    for kind, (folders, depth) in KINDS.items():
        for folder in folders:
            for key, stat in store.files(folder).items():
                parts = key.split("/")
                if len(parts) <= depth + 1:
                    continue  # a file beside the entries (e.g. a stray pointer): left alone
                name = "/".join(parts[1 : depth + 1])
                found.setdefault((kind, name), Entry(kind, name)).files[key] = stat
    for kind, folder in DAY_KINDS.items():
        for key, stat in store.files(folder).items():
            day = key[len(folder) + 1 :].split("/")[0].split(".")[0]  # <day>/… or <day>.json
            if DAY.fullmatch(day):  # anything else in the folder is left alone
                found.setdefault((kind, day), Entry(kind, day)).files[key] = stat
    return list(found.values())


def generation_of(prefix: str) -> str | None:
    """The model generation a model, variant or report prefix belongs to."""
    parts = prefix.split("/")
    return parts[1] if parts[0] in GENERATION_FOLDERS and len(parts) > 1 else None


def referenced(store: ArtifactStore) -> set[tuple[str, str]]:
    """(kind, name) of every entry that a champion record or a current pointer names."""
    refs: set[tuple[str, str]] = set()
    records = champion_history(store)
    for record in records:
        if record.get("dataset_version"):
            refs.add(("dataset", record["dataset_version"]))
        for key in ("model_prefix", "report", "previous"):
            generation = generation_of(record.get(key) or "")
            if generation:
                refs.add(("generation", generation))
    for key in store.list("current"):
        pointer = store.read_json(key)
        if "version" in pointer:
            refs.add(("dataset", pointer["version"]))
        if "study" in pointer:
            refs.add(("study", pointer["study"]))
        for value in pointer.values():
            generation = generation_of(value) if isinstance(value, str) else None
            if generation:
                refs.add(("generation", generation))
    return refs


def shards_of(store: ArtifactStore, versions: set[str]) -> set[tuple[str, str]]:
    """The day shards the dataset versions list (a version without its dataset.json, e.g.
    a build that stopped half way, lists none)."""
    found: set[tuple[str, str]] = set()
    for version in versions:
        if store.exists(dataset_info_key(version)):
            prefixes = store.read_json(dataset_info_key(version)).get("shards", [])
            found |= {("shard", prefix.split("/", 1)[1]) for prefix in prefixes}
    return found


def retention_plan(store: ArtifactStore, keep_last: int = 3, keep_days: int = 30) -> Plan:
    """Which entries stay and which go, by the policy in this module's docstring."""
    if keep_last < 1:
        raise ValueError("keep_last must be at least 1: the newest of each kind always stays")
    if keep_days < 1:
        raise ValueError("keep_days must be at least 1: the newest day of each kind stays")
    everything = entries(store)
    keep = referenced(store)
    for kind in RECENT_KINDS:
        mine = sorted((e for e in everything if e.kind == kind), key=lambda e: -e.newest)
        keep |= {(e.kind, e.name) for e in mine[:keep_last]}
    for kind in DAY_KINDS:
        days = sorted((e.name for e in everything if e.kind == kind), reverse=True)
        keep |= {(kind, day) for day in days[:keep_days]}
    # A kept model generation "<version>-<run>" keeps the dataset version it was trained on.
    keep |= {
        ("dataset", name.rsplit("-", 1)[0]) for kind, name in set(keep) if kind == "generation"
    }
    keep |= shards_of(store, {name for kind, name in keep if kind == "dataset"})
    stays = [e for e in everything if (e.kind, e.name) in keep]
    goes = [e for e in everything if (e.kind, e.name) not in keep]
    return Plan(keep=stays, delete=goes)


def apply_plan(store: ArtifactStore, plan: Plan) -> None:
    for entry in plan.delete:
        for key in entry.files:
            store.delete(key)
