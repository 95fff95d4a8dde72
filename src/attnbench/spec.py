"""What is measured: the frozen Workload, sweeps (named axes -> product), sweep files and presets."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError

DTYPES = ("fp16", "bf16", "fp32", "fp64")
DTYPE_ALIASES = {
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "fp64": "fp64", "float64": "fp64", "double": "fp64",
}
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}
PASSES = ("fwd", "bwd", "fwd+bwd")

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
}


@dataclass(frozen=True, order=True)
class Workload:
    """One attention problem. Q is (batch, q_heads, q_len, head_dim); K and V are (batch, kv_heads, kv_len, head_dim)."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    dtype: str = "fp16"
    causal: bool = False
    direction: str = "fwd"

    def __post_init__(self) -> None:
        for name in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        dtype = DTYPE_ALIASES.get(str(self.dtype).lower())
        if dtype is None:
            raise UserError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        object.__setattr__(self, "dtype", dtype)
        if self.q_heads % self.kv_heads:
            raise UserError(
                f"kv_heads ({self.kv_heads}) must divide q_heads ({self.q_heads}) for grouped-query attention"
            )
        if not isinstance(self.causal, bool):
            raise UserError(f"causal must be true or false, got {self.causal!r}")
        if self.direction not in PASSES:
            raise UserError(f"unknown pass {self.direction!r}; choose one of {', '.join(PASSES)}")

    @property
    def gqa(self) -> bool:
        return self.kv_heads != self.q_heads

    @property
    def key(self) -> str:
        """A stable, readable identifier: the store and the dispatch table key on it."""
        parts = [
            f"b{self.batch}", f"hq{self.q_heads}", f"hkv{self.kv_heads}", f"sq{self.q_len}",
            f"sk{self.kv_len}", f"d{self.head_dim}", self.dtype, "causal" if self.causal else "full",
            self.direction,
        ]
        return "_".join(parts)

    @property
    def label(self) -> str:
        """Short human label, e.g. 'B32 H8 S512 D64 fp16'."""
        heads = f"H{self.q_heads}" if not self.gqa else f"H{self.q_heads}/{self.kv_heads}"
        seq = f"S{self.q_len}" if self.q_len == self.kv_len else f"S{self.q_len}x{self.kv_len}"
        out = f"B{self.batch} {heads} {seq} D{self.head_dim} {self.dtype}"
        if self.causal:
            out += " causal"
        if self.direction != "fwd":
            out += f" {self.direction}"
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Workload":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> "Workload":
        return dataclasses.replace(self, **changes)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _coerce(axis: str, value: Any) -> Any:
    field = AXES[axis]
    if field in ("dtype", "direction"):
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
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UserError(f"empty list: {text!r}")
    return items
