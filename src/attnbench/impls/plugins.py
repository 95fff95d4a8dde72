"""User kernels: `--impl module:function` or `path/to/file.py:function`, and the `attnbench.impls` entry points.

A plugin function has SDPA's signature: fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
scale=None, enable_gqa=False) -> out (enable_gqa is passed only for grouped-query workloads).
Optional attributes on the function: `supports(workload, device) -> str | None`,
`param_space(workload, device) -> list[dict]` (params then arrive as keyword arguments), and
`mask_kinds` / `score_mods` (tuples of spec.masks kinds the function computes; default full and causal,
no score modifier): for any other declared mask the function gets `mask=` (spec.masks text, with
is_causal=False) and, with a modifier, `score_mod=` keyword arguments.
An entry point may also name an Impl instance or subclass.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..spec import Workload
from .base import Impl

ENTRY_POINT_GROUP = "attnbench.impls"


class FunctionImpl(Impl):
    family = "plugin"

    def __init__(self, name: str, fn: Callable[..., Any]):
        self.name = name
        self.fn = fn
        self.mask_kinds = tuple(getattr(fn, "mask_kinds", Impl.mask_kinds))
        self.score_mods = tuple(getattr(fn, "score_mods", Impl.score_mods))
        doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
        self.description = doc[0] if doc else f"plugin {name}"

    def supports(self, workload: Workload, device: str) -> str | None:
        why = self.mask_reason(workload)
        if why:
            return why
        check = getattr(self.fn, "supports", None)
        why = check(workload, device) if callable(check) else None
        if why is not None and not isinstance(why, str):   # `return w.head_dim == 64` would read as a reason
            raise TypeError(f"{self.name}.supports() returned {why!r}; it returns None (supported) or the reason "
                            "it is not")
        return why or None

    def param_space(self, workload: Workload, device: str) -> list[dict[str, Any]]:
        space = getattr(self.fn, "param_space", None)
        return list(space(workload, device)) if callable(space) else [{}]

    def build(self, workload: Workload, device: str, params: dict[str, Any]):
        user = self.fn
        kwargs: dict[str, Any] = {"is_causal": workload.causal, **params}
        if workload.gqa:
            kwargs["enable_gqa"] = True
        if workload.mask not in ("full", "causal"):
            kwargs["mask"] = workload.mask
        if workload.score_mod:
            kwargs["score_mod"] = workload.score_mod
        return lambda q, k, v: user(q, k, v, **kwargs)


def load_object(spec: str) -> Any:
    """'package.module:attr', 'path/to/file.py:attr' or '/abs/file.py:attr' -> the object, or a one-line UserError.

    A module is looked up with the working directory importable, as `python -m`, uvicorn and pytest do: first
    on sys.path with the working directory in front, during this import only (a local mykern.py wins over an
    installed mykern, as with `python -m`); it is not left on sys.path. A file is loaded by path, with its own
    folder importable while it executes (so its top-level imports of sibling files work).
    """
    target, _, attr = spec.rpartition(":")
    if not target or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise UserError(f"--impl {spec!r}: expected a registered name, 'package.module:function' or "
                        "'path/to/file.py:function'")
    is_path = target.endswith(".py") or "/" in target or "\\" in target
    module = _load_file(spec, target) if is_path else _load_module(spec, target)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            have = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None)))
            hint = f" (it has: {', '.join(have[:6])}{', ...' if len(have) > 6 else ''})" if have else ""
            raise UserError(f"--impl {spec!r}: {target} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    return obj


@contextlib.contextmanager
def _importable(folder: str):
    """`folder` first on sys.path for the duration of one import; removed again after."""
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:  # the imported code removed it itself
            pass


def _load_module(spec: str, name: str):
    if not all(p.isidentifier() for p in name.split(".")):
        raise UserError(f"--impl {spec!r}: {name!r} is neither a module name nor a path to a .py file")
    importlib.invalidate_caches()   # a file written since the folder was last looked at
    try:
        with _importable(os.getcwd()):
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):  # the module itself, not its imports
            raise UserError(f"--impl {spec!r}: cannot import {name}: no module named {exc.name!r} on sys.path "
                            f"or in the working directory {os.getcwd()}") from None
        raise UserError(f"--impl {spec!r}: cannot import {name}: {_one_line(exc)}") from None
    except Exception as exc:
        raise UserError(f"--impl {spec!r}: cannot import {name}: {_one_line(exc)}") from None


def _load_file(spec: str, target: str):
    import hashlib
    import importlib.util

    path = Path(target).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_file():
        raise UserError(f"--impl {spec!r}: no file {target} ({path} does not exist)")
    path = path.resolve()
    # One module per file, whatever spelling of its path: loaded once, found again in sys.modules.
    name = f"attnbench_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise UserError(f"--impl {spec!r}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        with _importable(str(path.parent)):
            loader_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UserError(f"--impl {spec!r}: cannot import {target}: {_one_line(exc)}") from None
    return module


def _one_line(exc: BaseException) -> str:
    """An import failure in one line: a syntax error with its file and line, else the error and the last line of
    the plugin's own code that raised it."""
    import traceback

    if isinstance(exc, SyntaxError):
        return f"syntax error in {exc.filename} line {exc.lineno}: {exc.msg}"
    text = (str(exc).strip().splitlines() or [""])[0]
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename
              and not f.filename.endswith("plugins.py")]
    where = f" ({frames[-1].filename} line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


def as_impl(name: str, obj: Any) -> Impl:
    if isinstance(obj, Impl):
        return obj
    if isinstance(obj, type) and issubclass(obj, Impl):
        return obj()
    if callable(obj):
        return FunctionImpl(name, obj)
    raise UserError(f"impl {name!r} is neither a function nor an attnbench Impl")


def entry_point_impls() -> dict[str, Impl]:
    from importlib.metadata import entry_points

    found: dict[str, Impl] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = as_impl(ep.name, ep.load())
        except Exception as exc:  # a broken plugin must not break the tool
            found[ep.name] = BrokenImpl(ep.name, f"entry point {ep.value} failed to load: {exc}")
    return found


class BrokenImpl(Impl):
    family = "plugin"

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        self.description = reason

    def supports(self, workload: Workload, device: str) -> str | None:
        return self.reason
