"""Kept: the SQLite (WAL) results store of runs, environments and measurements with raw samples
(the schema and its migrations: `schema`)."""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..spec import Workload
from .measurement import Measurement, params_key
from .schema import MIGRATIONS, SCHEMA_VERSION

DEFAULT_DB = "attnbench.db"


@dataclass(frozen=True)
class RunInfo:
    run_id: int
    created: float
    finished: float | None
    env_id: str
    name: str
    status: str
    config: dict[str, Any]
    n_measurements: int = 0


def default_path() -> str:
    return os.environ.get("ATTNBENCH_DB", DEFAULT_DB)


def _problem(path: str, exc: sqlite3.Error) -> UserError:
    """An SQLite error as one line that says what went wrong with the file and what was kept."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        why = (f"is locked by another process (waited {Store.LOCK_TIMEOUT_S:.0f} s): {text}; what was stored "
               "before is kept")
    elif "readonly" in text or "read-only" in text:
        why = f"cannot be written ({text}): a read-only file, folder or disk"
    elif "full" in text:
        why = f"cannot be written ({text}); what was stored before is kept: free space and run again (--resume)"
    elif "malformed" in text or "not a database" in text or "I/O" in text:
        why = f"is damaged or not an SQLite file ({text})"
    elif "unable to open" in text:
        why = f"cannot be opened ({text}): a folder that cannot be written, or a read-only disk"
    else:
        why = f"failed: {type(exc).__name__}: {text}"
    return UserError(f"results database {path} {why}")


def _guarded(method):
    """SQLite errors from a Store method become a one-line UserError naming the file."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _problem(self.path, exc) from None
    return wrapper


def _statements(script: str):
    """A migration script's SQL statements one by one (executescript would commit the open transaction)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""
    if buf.strip():
        yield buf.strip()


class Store:
    """One SQLite file. Each measurement is committed as soon as it is added. Several processes may write one
    file at once (SQLite's locking; a writer waits up to LOCK_TIMEOUT_S for another's commit)."""

    LOCK_TIMEOUT_S = 30.0

    def __init__(self, path: str | os.PathLike | None = None, *, read_only: bool = False):
        """`read_only`: for commands that only read (report, runs, compare of stored runs): a file on a read-only
        disk or in a folder this user cannot write is then opened as it is, unchanged."""
        self.path = str(path or default_path())
        self.read_only = False
        if self.path != ":memory:":
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise UserError(f"database folder does not exist: {parent}")
            if Path(self.path).expanduser().is_dir():
                raise UserError(f"results database {self.path} is a folder; give a file name")
        try:
            self.db = sqlite3.connect(self.path, timeout=self.LOCK_TIMEOUT_S)
            self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            file = Path(self.path).expanduser()
            writable = os.access(file, os.W_OK) and os.access(file.parent, os.W_OK)
            if not (read_only and file.is_file() and not writable):
                raise _problem(self.path, exc) from None
            # SQLite cannot open a WAL file read-only without writing its shared-memory file beside it; nothing
            # can write this one, so it is read as an immutable file.
            try:
                self.db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
                self.read_only = True
            except sqlite3.Error as again:
                raise _problem(self.path, again) from None
        self.db.row_factory = sqlite3.Row
        self._migrate()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- schema -------------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        try:
            version = self.schema_version
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not an attnbench database: {exc}") from None
        if version == SCHEMA_VERSION:
            return
        self._check(version)
        if self.read_only:
            raise UserError(f"results database {self.path} has schema {version} (this attnbench reads "
                            f"{SCHEMA_VERSION}) and cannot be written here to upgrade it: copy it to a writable "
                            "folder first")
        # Another process may be creating or upgrading this file at the same moment: take the write lock,
        # look again, and create or upgrade in one transaction with the version (all or nothing).
        self.db.isolation_level = None
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                version = self.schema_version
                self._check(version)
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _statements(MIGRATIONS[target]):
                        self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version = {target}")
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _problem(self.path, exc) from None
        finally:
            self.db.isolation_level = ""

    def _check(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise UserError(f"{self.path} has schema {version}, newer than this attnbench ({SCHEMA_VERSION}); "
                            "upgrade attnbench")
        if version == 0:
            tables = self.db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
            if tables:
                raise UserError(f"{self.path} is an SQLite file but not an attnbench database")

    # -- environments and runs ------------------------------------------------------------------
    @_guarded
    def add_environment(self, env_id: str, fingerprint: dict[str, Any]) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO environments VALUES (?, ?, ?)",
                            (env_id, json.dumps(fingerprint, sort_keys=True, default=str), time.time()))

    @_guarded
    def environment(self, env_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT fingerprint FROM environments WHERE env_id=?", (env_id,)).fetchone()
        return json.loads(row[0]) if row else None

    @_guarded
    def start_run(self, env_id: str, config: dict[str, Any], config_hash: str = "", name: str = "") -> int:
        with self.db:
            cur = self.db.execute(
                "INSERT INTO runs (created, env_id, name, status, config_hash, config) VALUES (?,?,?,?,?,?)",
                (time.time(), env_id, name, "running", config_hash, json.dumps(config, default=str)))
        return int(cur.lastrowid)

    @_guarded
    def finish_run(self, run_id: int, status: str = "complete") -> None:
        with self.db:
            self.db.execute("UPDATE runs SET status=?, finished=? WHERE run_id=?", (status, time.time(), run_id))

    @_guarded
    def reopen_run(self, run_id: int) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET status='running', finished=NULL WHERE run_id=?", (run_id,))

    def _run_info(self, row: sqlite3.Row) -> RunInfo:
        return RunInfo(run_id=row["run_id"], created=row["created"], finished=row["finished"],
                       env_id=row["env_id"] or "", name=row["name"], status=row["status"],
                       config=json.loads(row["config"]), n_measurements=row["n"])

    _RUN_QUERY = ("SELECT r.*, (SELECT COUNT(*) FROM measurements m WHERE m.run_id=r.run_id) AS n "
                  "FROM runs r")

    @_guarded
    def runs(self) -> list[RunInfo]:
        rows = self.db.execute(self._RUN_QUERY + " ORDER BY r.run_id").fetchall()
        return [self._run_info(r) for r in rows]

    @_guarded
    def run(self, run_id: int | str | None = None) -> RunInfo:
        """A run by id; None or 'latest' means the newest run."""
        if run_id in (None, "latest"):
            row = self.db.execute(self._RUN_QUERY + " ORDER BY r.run_id DESC LIMIT 1").fetchone()
            if row is None:
                raise UserError(f"no runs in {self.path}; start one with `attnbench run`")
            return self._run_info(row)
        try:
            rid = int(run_id)
        except (TypeError, ValueError):
            raise UserError(f"run id must be a number or 'latest', got {run_id!r}") from None
        row = self.db.execute(self._RUN_QUERY + " WHERE r.run_id=?", (rid,)).fetchone()
        if row is None:
            raise UserError(f"no run {rid} in {self.path}")
        return self._run_info(row)

    @_guarded
    def run_env_ids(self, run_id: int) -> list[str]:
        """The environments a run's measurements were taken in (several when its workers differed), the run's own
        first."""
        info = self.run(run_id)
        rows = self.db.execute("SELECT DISTINCT env_id FROM measurements WHERE run_id=? AND env_id != ''",
                               (info.run_id,)).fetchall()
        return list(dict.fromkeys([info.env_id] * bool(info.env_id) + sorted(r[0] for r in rows)))

    @_guarded
    def resumable_run(self, config_hash: str) -> RunInfo | None:
        """The newest unfinished run with the same configuration."""
        row = self.db.execute(self._RUN_QUERY + " WHERE r.config_hash=? AND r.status!='complete' "
                              "ORDER BY r.run_id DESC LIMIT 1", (config_hash,)).fetchone()
        return self._run_info(row) if row else None

    # -- measurements ---------------------------------------------------------------------------
    _COLUMNS = ("run_id", "workload_key", "workload", "impl", "params", "status", "reason", "env_id", "device",
                "timer", "samples_ms", "host_ms", "clocks_mhz", "batch_sizes", "stop_reason", "compile_ms",
                "warmup_ms", "rel_err", "tolerance", "backend", "peak_mem_mb", "extra", "created")
    _CELL = ("run_id", "workload_key", "impl", "params", "timer")

    @_guarded
    def add(self, run_id: int, m: Measurement) -> None:
        """Insert one measurement, or update the stored one of the same cell in place (its position in the run
        is kept: a cell measured again, e.g. one more repeat, stays where the sweep put it), and commit at
        once: an interruption loses nothing stored."""
        cols = ", ".join(self._COLUMNS)
        update = ", ".join(f"{c}=excluded.{c}" for c in self._COLUMNS if c not in self._CELL)
        with self.db:
            self.db.execute(
                f"INSERT INTO measurements ({cols}) VALUES ({', '.join('?' * len(self._COLUMNS))}) "
                f"ON CONFLICT ({', '.join(self._CELL)}) DO UPDATE SET {update}",
                (run_id, m.workload.key, json.dumps(m.workload.to_dict()), m.impl, params_key(m.params),
                 m.status, m.reason, m.env_id, m.device, m.timer, json.dumps(list(m.samples_ms)),
                 json.dumps(list(m.host_ms)), json.dumps(list(m.clocks_mhz)),
                 json.dumps(list(m.batch_sizes)) if m.batch_sizes else None, m.stop_reason, m.compile_ms,
                 m.warmup_ms, m.rel_err, m.tolerance, m.backend, m.peak_mem_mb,
                 json.dumps(m.extra, default=str), time.time()))

    @_guarded
    def remove(self, run_id: int, m: Measurement) -> None:
        """Delete the stored measurement of m's cell and timer (a resumed run replacing an interrupted cell's
        partial measurement by one taken with another timer mode)."""
        with self.db:
            self.db.execute("DELETE FROM measurements WHERE run_id=? AND workload_key=? AND impl=? AND params=? "
                            "AND timer=?", (run_id, m.workload.key, m.impl, params_key(m.params), m.timer))

    @staticmethod
    def _measurement(row: sqlite3.Row) -> Measurement:
        return Measurement(
            workload=Workload.from_dict(json.loads(row["workload"])), impl=row["impl"], status=row["status"],
            params=json.loads(row["params"]) if row["params"] else {}, reason=row["reason"],
            env_id=row["env_id"], device=row["device"], timer=row["timer"],
            samples_ms=tuple(json.loads(row["samples_ms"])), host_ms=tuple(json.loads(row["host_ms"])),
            clocks_mhz=tuple(json.loads(row["clocks_mhz"])),
            batch_sizes=tuple(json.loads(row["batch_sizes"])) if row["batch_sizes"] else (),
            stop_reason=row["stop_reason"],
            compile_ms=row["compile_ms"], warmup_ms=row["warmup_ms"], rel_err=row["rel_err"],
            tolerance=row["tolerance"], backend=row["backend"], peak_mem_mb=row["peak_mem_mb"],
            extra=json.loads(row["extra"]), run_id=row["run_id"])

    @_guarded
    def measurements(self, run_id: int | None = None, *, impl: str | None = None,
                     workload_key: str | None = None) -> list[Measurement]:
        """Measurements in insertion order, filtered by run, impl and workload key."""
        where, args = [], []
        for col, val in (("run_id", run_id), ("impl", impl), ("workload_key", workload_key)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = "SELECT * FROM measurements" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [self._measurement(r) for r in self.db.execute(sql, args).fetchall()]

    @_guarded
    def cells(self, run_id: int) -> set[tuple[str, str, str]]:
        """The cells a resumed run need not measure again: all stored but those an interruption cut short."""
        rows = self.db.execute("SELECT workload_key, impl, params FROM measurements WHERE run_id=? "
                               "AND stop_reason!='interrupted'", (run_id,))
        return {(r[0], r[1], r[2]) for r in rows}

    # -- small key-value cache (ceilings, tuning results) -------------------------------------
    @_guarded
    def put(self, namespace: str, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)",
                            (namespace, key, json.dumps(value, default=str), time.time()))

    @_guarded
    def get(self, namespace: str, key: str) -> Any | None:
        row = self.db.execute("SELECT value FROM kv WHERE namespace=? AND key=?", (namespace, key)).fetchone()
        return json.loads(row[0]) if row else None

    # -- JSON export / import ----------------------------------------------------------------
    def export_run(self, run_id: int) -> dict[str, Any]:
        info = self.run(run_id)
        return {
            "format": "attnbench-run",
            "schema_version": SCHEMA_VERSION,
            "run": {"run_id": info.run_id, "created": info.created, "finished": info.finished,
                    "name": info.name, "status": info.status, "config": info.config, "env_id": info.env_id},
            "environment": self.environment(info.env_id),
            "measurements": [measurement_to_dict(m) for m in self.measurements(info.run_id)],
        }

    @_guarded
    def import_run(self, data: dict[str, Any]) -> int:
        if data.get("format") != "attnbench-run":
            raise UserError("not an attnbench run export (missing format: attnbench-run)")
        run = data["run"]
        self.add_environment(run["env_id"], data.get("environment") or {})
        run_id = self.start_run(run["env_id"], run.get("config", {}), name=run.get("name", ""))
        for md in data["measurements"]:
            self.add(run_id, measurement_from_dict(md))
        self.finish_run(run_id, run.get("status", "complete"))
        return run_id


def measurement_to_dict(m: Measurement) -> dict[str, Any]:
    return {
        "workload": m.workload.to_dict(), "impl": m.impl, "params": m.params, "status": m.status,
        "reason": m.reason, "env_id": m.env_id, "device": m.device, "timer": m.timer,
        "samples_ms": list(m.samples_ms), "host_ms": list(m.host_ms), "clocks_mhz": list(m.clocks_mhz),
        "batch_sizes": list(m.batch_sizes), "stop_reason": m.stop_reason, "compile_ms": m.compile_ms,
        "warmup_ms": m.warmup_ms, "rel_err": m.rel_err, "tolerance": m.tolerance, "backend": m.backend,
        "peak_mem_mb": m.peak_mem_mb, "extra": m.extra,
    }


def measurement_from_dict(d: dict[str, Any]) -> Measurement:
    d = dict(d)
    d["workload"] = Workload.from_dict(d["workload"])
    for key in ("samples_ms", "host_ms", "clocks_mhz", "batch_sizes"):  # batch_sizes: absent before schema 2
        d[key] = tuple(d.get(key) or ())
    return Measurement(**d)
