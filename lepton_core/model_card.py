"""The model card: what a model was trained on, with what, how it scored and how it became
champion, in one page a person can read (Markdown and HTML, every value escaped like the
report).

Nothing is recorded twice: the card is read from what the lifecycle already wrote.

- ``<model>/model.json``: factory, kwargs, code digest, training settings, tuned
  configuration, compression variant and the trained model it came from;
- ``datasets/<version>/dataset.json`` and, per day, ``raw/<day>.json`` (the landing files,
  among them the annotation batches: files named ``annotations-*``) and
  ``validated/<day>.json`` (rows kept, rows quarantined, whether the day's checks passed);
- ``reports/<model>/evaluation.json``: test metrics with 95 % intervals, the verdict of the
  blessing check, its broken rules and the rules it applied;
- ``champion/history``: every promotion and rollback of this model (time, run, initiator).
"""

import json
from typing import Any

from lepton_core.evaluate import SUMMARY, cell, report_html, report_prefix_of, tuned_line
from lepton_core.keys import dataset_info_key, raw_manifest_key, validated_manifest_key
from lepton_core.registry import champion_history, current_champion
from lepton_core.rows import is_annotation_file
from lepton_core.store import ArtifactStore


def card_key(model_prefix: str, extension: str) -> str:
    """Where a model's card is kept: beside its evaluation report."""
    return f"{report_prefix_of(model_prefix)}/card.{extension}"


def day_lines(store: ArtifactStore, days: list[str]) -> list[str]:
    """One table row per day of the dataset: its validation result and annotation files."""
    lines = [
        "| day | rows kept | quarantined | checks | annotation batches |",
        "|---|---|---|---|---|",
    ]
    for day in days:
        validated = store.read_json(validated_manifest_key(day))
        files = store.read_json(raw_manifest_key(day))["files"]
        batches = [f for f in files if is_annotation_file(f)]
        lines.append(
            f"| {day} | {validated['rows']} | {validated['quarantined']} | "
            f"{'passed' if validated['check_passed'] else 'FAILED'} | "
            f"{', '.join(f'`{b}`' for b in batches) or 'none'} |"
        )
    return lines


def metric_lines(ev: dict[str, Any]) -> list[str]:
    """The candidate's test metrics, each with its 95 % interval where one was computed."""
    metrics, intervals = ev["candidate"], ev["candidate"].get("intervals", {})
    lines = ["| metric | value | 95 % interval |", "|---|---|---|"]
    for name in SUMMARY[ev["task"]]:
        low_high = intervals.get(name)
        span = f"{cell(low_high[0])} – {cell(low_high[1])}" if low_high else ""
        lines.append(f"| {name} | {cell(metrics[name])} | {span} |")
    return lines


def blessing_lines(ev: dict[str, Any]) -> list[str]:
    rules = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(ev.get("rules", {}).items()))
    against = f"champion `{ev['champion_model']}`" if ev["champion_model"] else "no champion"
    lines = [
        f"Verdict: **{'BLESSED' if ev['blessed'] else 'NOT BLESSED'}**, against {against}; "
        f"rules applied: {rules or '(not recorded)'}."
    ]
    return lines + [f"- broke: {rule}" for rule in ev["broken_rules"]]


def history_lines(store: ArtifactStore, prefix: str) -> list[str]:
    """Each promotion of this model and each rollback to it or away from it."""
    events = [
        r for r in champion_history(store) if prefix in (r["model_prefix"], r.get("previous"))
    ]
    if not events:
        return ["Never champion."]
    lines = ["| when (UTC) | action | champion after | before | run | by |", "|---" * 6 + "|"]
    for r in events:
        before = f"`{r['previous']}`" if r.get("previous") else "none"
        lines.append(
            f"| {r['at']} | {r['action']} | `{r['model_prefix']}` | {before} | "
            f"{r['run_id']} | {r.get('by') or 'not recorded'} |"
        )
    return lines


def card_markdown(store: ArtifactStore, prefix: str) -> str:
    """The card of the model at ``prefix`` (a compressed candidate or a trained model)."""
    info = store.read_json(f"{prefix}/model.json")
    version = info["dataset_version"]
    dataset = store.read_json(dataset_info_key(version))
    pointer = current_champion(store)
    status = (
        "the current champion"
        if pointer and pointer["model_prefix"] == prefix
        else "not the champion"
    )
    training = info.get("training") or {}
    ev_key = f"{report_prefix_of(prefix)}/evaluation.json"
    lines = [
        f"# Model card: `{prefix}`",
        "",
        f"Status: {status}. Weights sha256 `{info['sha256']}`.",
        "",
        "## Training",
        "",
        f"Factory `{info['factory']}` with kwargs `{json.dumps(info.get('kwargs', {}))}`; "
        f"code digest `{info.get('code_digest') or 'not recorded'}`"
        + (f" (code path `{info['code_path']}`)" if info.get("code_path") else "")
        + f"; loss `{info.get('loss') or 'the task default'}`.",
        "",
        tuned_line(info.get("tuned")),
        "",
        "Settings: "
        + (", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(training.items())) or "not recorded")
        + ".",
        "",
        f"Compression variant `{info['variant']}` of `{info.get('source') or prefix}`.",
        "",
        "## Data",
        "",
        f"Dataset version `{version}`: {len(dataset['partitions'])} days, rows per split "
        f"{json.dumps(dataset['rows'], sort_keys=True)}.",
        "",
        *day_lines(store, dataset["partitions"]),
        "",
        "## Evaluation",
        "",
    ]
    if store.exists(ev_key):
        ev = store.read_json(ev_key)
        lines += [f"On {ev['test_rows']} held-out test rows.", "", *metric_lines(ev), ""]
        lines += [*blessing_lines(ev), ""]
    else:
        lines += ["Not evaluated (no evaluation report for this model).", ""]
    return "\n".join([*lines, "## Champion history", "", *history_lines(store, prefix), ""])


def write_card(store: ArtifactStore, prefix: str) -> str:
    """Write the card of ``prefix`` as Markdown and HTML; the HTML's key."""
    markdown = card_markdown(store, prefix)
    store.write_text(card_key(prefix, "md"), markdown)
    key = card_key(prefix, "html")
    store.write_text(key, report_html(markdown, {}, f"Model card: {prefix}"))
    return key
