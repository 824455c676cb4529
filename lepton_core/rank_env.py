"""A rank's environment from the file its launcher wrote, so secrets never ride a command line.

Horovod 0.28.1 starts every rank as ``sh -c 'env K=V … python …'`` with each variable of
horovodrun's environment written out, where any local user reads it in ``ps``. The launcher
(``resources.horovod_launcher``) therefore gives horovodrun only plain settings and writes the
rest of the step's environment (secrets among it) to a file of mode 0600 whose path is in
``LEPTON_RANK_ENV_FILE``. Each rank runs ``python -m lepton_core.rank_env MODULE ARGS…``, which
loads it and only then imports ``MODULE`` as ``__main__``: libraries that read their settings
when imported (fsspec's ``FSSPEC_S3_*``, say) see them. For ranks on other hosts the
file must be where they can read it (the launcher's work folder under ``TMPDIR`` on a shared
filesystem), else the rank fails naming it.
"""

import json
import os
import runpy
import stat
import sys

RANK_ENV_FILE = "LEPTON_RANK_ENV_FILE"


class RankEnvError(RuntimeError):
    """The launcher's environment file is missing, open to others, or not a JSON object."""


def load_rank_env() -> int:
    """Add the variables of ``$LEPTON_RANK_ENV_FILE`` that this process lacks to its
    environment; how many. Nothing happens when the variable is unset (a rank run by hand)."""
    path = os.environ.get(RANK_ENV_FILE)
    if not path:
        return 0
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise RankEnvError(
            f"{RANK_ENV_FILE}={path} cannot be read on this host ({exc.strerror}): a rank on "
            "another host needs the launcher's work folder on a shared filesystem"
        ) from exc
    with os.fdopen(descriptor) as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise RankEnvError(f"{path} is readable by others (mode {oct(mode & 0o777)})")
        values = json.load(fh)
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in values.items()
    ):
        raise RankEnvError(f"{path} is not a JSON object of strings")
    missing = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(missing)
    return len(missing)


def main() -> None:
    """``python -m lepton_core.rank_env MODULE ARGS…``: the environment, then the module."""
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m lepton_core.rank_env MODULE [ARGS...]")
    load_rank_env()
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
