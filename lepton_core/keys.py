"""Every key of the artifact store, in one place.

Partitioned artifacts are per day; unpartitioned ones live under versioned prefixes, and
``current/<asset>.json`` points at the latest of each.
"""


def current_key(asset_name: str) -> str:
    return f"current/{asset_name}.json"


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


def dataset_info_key(version: str) -> str:
    return f"{dataset_prefix(version)}/dataset.json"


def split_key(version: str, split: str) -> str:
    return f"{dataset_prefix(version)}/{split}.parquet"
