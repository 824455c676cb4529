"""Every key of the artifact store, in one place.

Partitioned artifacts are per day; unpartitioned ones live under versioned prefixes, and
``current/<asset>.json`` points at the latest of each.
"""


def current_key(asset_name: str) -> str:
    return f"current/{asset_name}.json"


def run_pointer_key(run_id: str, asset_name: str) -> str:
    """The output of an unpartitioned asset that one run produced (see pointers.py)."""
    return f"runs/{run_id}/{asset_name}.json"


def raw_key(day: str) -> str:
    return f"raw/{day}.parquet"


def raw_manifest_key(day: str) -> str:
    """The landing files a day's raw batch was read from, with their sha256."""
    return f"raw/{day}.json"


def validated_key(day: str) -> str:
    return f"validated/{day}.parquet"


def validated_manifest_key(day: str) -> str:
    return f"validated/{day}.json"


def quarantine_key(day: str) -> str:
    return f"quarantine/{day}.parquet"


def dataset_prefix(version: str) -> str:
    return f"datasets/{version}"


def drift_reference_key(version: str) -> str:
    """The train split's drift summary (bins and shares), computed once per version."""
    return f"{dataset_prefix(version)}/drift_reference.json"


def annotations_key(version: str) -> str:
    """The annotation rows in force in a version, with their provenance and landing day."""
    return f"{dataset_prefix(version)}/annotations.parquet"


def dataset_info_key(version: str) -> str:
    return f"{dataset_prefix(version)}/dataset.json"


def shard_prefix(day: str, digest: str) -> str:
    """One validated day split into train/val/test, shared by every dataset version that
    holds that day's content under the same spec (``digest`` hashes both)."""
    return f"shards/{day}-{digest}"


def shard_key(prefix: str, split: str) -> str:
    return f"{prefix}/{split}.parquet"


def shard_manifest_key(prefix: str) -> str:
    """Rows and sha256 per split; written last, so its presence means the shard is whole."""
    return f"{prefix}/shard.json"
