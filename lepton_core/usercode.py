"""User code by import path: ``"package.module:function"``, resolved when a run starts.

A project's ``code_path`` goes first on ``sys.path`` of every process that resolves the
user's code (the Dagster step, every Horovod rank, ``lepton predict``), so a user's package
need not be installed.
"""

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class UserCodeError(ValueError):
    """User code could not be imported or does not keep its contract; names the path."""


def add_code_path(code_path: str | None) -> None:
    if code_path and code_path not in sys.path:
        sys.path.insert(0, code_path)


def resolve(path: str, code_path: str | None = None, what: str = "function") -> Callable[..., Any]:
    """The callable at ``path`` (``module:name``); a clear error names the path otherwise."""
    add_code_path(code_path)
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise UserCodeError(f"{what} {path!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = f" (code_path {code_path})" if code_path else ""
        raise UserCodeError(f"{what} {path!r}: cannot import {module_name}{where}: {exc}") from exc
    found = getattr(module, name, None)
    if found is None:
        raise UserCodeError(f"{what} {path!r}: module {module_name} has no {name!r}")
    if not callable(found):
        raise UserCodeError(f"{what} {path!r}: {type(found).__name__} is not callable")
    return found


def code_digest(path: str, code_path: str | None = None) -> str:
    """sha256 of the code behind ``path``: every ``.py`` file under the project's
    ``code_path`` (relative name and content, in name order), else the file of the module
    ``path`` names. Recorded with each model, so its card says which code trained it."""
    digest = hashlib.sha256()
    if code_path:
        root = Path(code_path)
        files = sorted(root.rglob("*.py"))
        names = [f.relative_to(root).as_posix() for f in files]
    else:
        add_code_path(code_path)
        spec = importlib.util.find_spec(path.partition(":")[0])
        if spec is None or spec.origin is None:
            raise UserCodeError(f"{path!r}: no module file to digest")
        files, names = [Path(spec.origin)], [Path(spec.origin).name]
    for name, file in zip(names, files, strict=True):
        digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()
