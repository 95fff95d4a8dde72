"""Sweeps: named axes expanded into workloads, sweep files (TOML/YAML) and the built-in presets."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from .workload import Workload

# Sweep-file / CLI axis name -> Workload field.
AXES = {
    "batch": "batch",
    "heads": "q_heads",
    "q_heads": "q_heads",
    "kv_heads": "kv_heads",
    "seq": "q_len",
    "q_len": "q_len",
    "kv_seq": "kv_len",
    "kv_len": "kv_len",
    "dim": "head_dim",
    "head_dim": "head_dim",
    "dtype": "dtype",
    "causal": "causal",
    "pass": "direction",
    "direction": "direction",
    "mask": "mask",
    "score_mod": "score_mod",
    "layout": "layout",
}


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _coerce(axis: str, value: Any) -> Any:
    field = AXES[axis]
    if field in ("dtype", "direction", "mask", "score_mod", "layout"):
        return str(value)
    if field == "causal":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "causal"):
            return True
        if text in ("false", "0", "no", "full"):
            return False
        raise UserError(f"causal must be true or false, got {value!r}")
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
        if isinstance(value, float) and number != value:
            raise ValueError
        return number
    except (TypeError, ValueError):
        raise UserError(f"{axis} must be an integer, got {value!r}") from None


def expand(axes: dict[str, Any]) -> list[Workload]:
    """The product of named axes, in the order given. kv_heads and kv_seq default to heads and seq."""
    fields: dict[str, list] = {}
    for axis, values in axes.items():
        if axis not in AXES:
            raise UserError(f"unknown axis {axis!r}; known axes: {', '.join(sorted(set(AXES)))}")
        values = _as_list(values)
        if not values:
            raise UserError(f"axis {axis!r} has no values")
        fields[AXES[axis]] = [_coerce(axis, v) for v in values]
    for required in ("batch", "q_heads", "q_len", "head_dim"):
        if required not in fields:
            name = {"q_heads": "heads", "q_len": "seq", "head_dim": "dim"}.get(required, required)
            raise UserError(f"the sweep does not say {name!r}")
    names = list(fields)
    out = []
    for combo in itertools.product(*(fields[n] for n in names)):
        values = dict(zip(names, combo))
        values.setdefault("kv_heads", values["q_heads"])
        values.setdefault("kv_len", values["q_len"])
        out.append(Workload(**values))
    return out


def dedupe(workloads: Iterable[Workload]) -> list[Workload]:
    seen: set[Workload] = set()
    out = []
    for w in workloads:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


@dataclass(frozen=True)
class Sweep:
    """A named list of workloads: the union of groups, each group a product of axes."""

    name: str
    workloads: tuple[Workload, ...]
    description: str = ""

    def __len__(self) -> int:
        return len(self.workloads)

    def __iter__(self):
        return iter(self.workloads)


def sweep_from_data(data: dict[str, Any], name: str) -> Sweep:
    """Build a sweep from parsed TOML/YAML: top-level axes and/or [[group]] tables, with [defaults]."""
    if not isinstance(data, dict):
        raise UserError(f"sweep {name!r}: expected a table of axes")
    defaults = dict(data.get("defaults", {}))
    top = {k: v for k, v in data.items() if k in AXES}
    groups = data.get("group", data.get("groups"))
    unknown = set(data) - set(AXES) - {"defaults", "group", "groups", "name", "description"}
    if unknown:
        raise UserError(f"sweep {name!r}: unknown keys {', '.join(sorted(unknown))}")
    if groups is None:
        groups = [top]
    elif top:
        defaults.update(top)
    workloads: list[Workload] = []
    for group in groups:
        if not isinstance(group, dict):
            raise UserError(f"sweep {name!r}: each group must be a table of axes")
        workloads.extend(expand({**defaults, **group}))
    return Sweep(name=str(data.get("name", name)), workloads=tuple(dedupe(workloads)),
                 description=str(data.get("description", "")))


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep file (.toml, .yaml or .yml)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except Exception as exc:  # parse errors of either format
        raise UserError(f"cannot parse sweep file {path}: {exc}") from None
    return sweep_from_data(data, path.stem)


PRESET_DIR = Path(__file__).parent / "sweeps"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name: str) -> Sweep:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return load_sweep(path)


def parse_list(text: str | None) -> list[str] | None:
    """'128,256, 512' -> ['128', '256', '512']; None stays None."""
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise UserError(f"empty list: {text!r}")
    if not all(items):  # '64,,128' is a typo, not the list 64,128
        raise UserError(f"empty item in the comma list {text!r}")
    return items
