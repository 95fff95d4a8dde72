import dataclasses
import json
import sqlite3

import pytest

from attnbench.errors import UserError
from attnbench.store import Measurement
from attnbench.spec import Workload
from attnbench.store import SCHEMA_VERSION, Store

W = Workload(batch=1, q_heads=2, kv_heads=2, q_len=8, kv_len=8, head_dim=16, dtype="fp32")


def m(impl="sdpa-math", status="ok", samples=(1.0, 1.1, 0.9), **kw):
    return Measurement(workload=W, impl=impl, status=status, samples_ms=tuple(samples) if status == "ok" else (),
                       env_id="e1", timer="fake", **kw)


def test_roundtrip_keeps_raw_samples(tmp_path):
    with Store(tmp_path / "r.db") as s:
        assert s.schema_version == SCHEMA_VERSION
        s.add_environment("e1", {"torch": "x"})
        rid = s.start_run("e1", {"impls": ["a"]}, "h1", "first")
        s.add(rid, m(params={"BLOCK_M": 64}, clocks_mhz=(1700.0,) * 3, extra={"k": [1, 2]}))
        s.add(rid, m(impl="flex", status="error", reason="boom"))
        s.finish_run(rid)
        got = s.measurements(rid)
        assert [x.impl for x in got] == ["sdpa-math", "flex"]
        assert got[0].samples_ms == (1.0, 1.1, 0.9)
        assert got[0].params == {"BLOCK_M": 64}
        assert got[0].extra == {"k": [1, 2]}
        assert got[0].workload == W
        assert got[1].reason == "boom" and not got[1].ok
        info = s.run("latest")
        assert (info.run_id, info.status, info.name, info.n_measurements) == (rid, "complete", "first", 2)
        assert s.environment("e1") == {"torch": "x"}


def test_wal_and_reopen(tmp_path):
    path = tmp_path / "r.db"
    with Store(path) as s:
        rid = s.start_run("e", {})
        s.add(rid, m())
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    with Store(path) as s:  # reopening runs no migration and keeps the data
        assert len(s.measurements()) == 1


def test_resumable_run_and_cells(tmp_path):
    with Store(tmp_path / "r.db") as s:
        rid = s.start_run("e", {}, "cfg")
        s.add(rid, m())
        s.finish_run(rid, "interrupted")
        assert s.resumable_run("cfg").run_id == rid
        assert s.resumable_run("other") is None
        assert s.cells(rid) == {(W.key, "sdpa-math", "")}
        cut = dataclasses.replace(m(), impl="reference", stop_reason="interrupted")
        s.add(rid, cut)  # an interruption's partial cell is measured again on resume (any executor)
        assert s.cells(rid) == {(W.key, "sdpa-math", "")} and len(s.measurements(rid)) == 2
        s.remove(rid, cut)
        assert [x.impl for x in s.measurements(rid)] == ["sdpa-math"]
        s.finish_run(rid, "complete")
        assert s.resumable_run("cfg") is None


def test_refuses_foreign_or_newer_databases(tmp_path):
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="not an attnbench database"):
        Store(foreign)
    newer = tmp_path / "newer.db"
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="newer than this attnbench"):
        Store(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(UserError):
        Store(junk)
    with pytest.raises(UserError, match="folder does not exist"):
        Store(tmp_path / "no" / "such" / "dir.db")


def test_run_lookup_errors(tmp_path):
    with Store(tmp_path / "r.db") as s:
        with pytest.raises(UserError, match="no runs"):
            s.run()
        with pytest.raises(UserError, match="no run 7"):
            s.start_run("e", {}) and s.run(7)
        with pytest.raises(UserError, match="must be a number"):
            s.run("abc")


def test_export_import(tmp_path):
    with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        a.add_environment("e1", {"gpu_name": "G"})
        rid = a.start_run("e1", {"x": 1}, name="n")
        a.add(rid, m())
        a.finish_run(rid)
        data = a.export_run(rid)
        assert data["schema_version"] == SCHEMA_VERSION
        new = b.import_run(data)
        assert b.measurements(new)[0].samples_ms == (1.0, 1.1, 0.9)
        assert b.environment("e1") == {"gpu_name": "G"}
        with pytest.raises(UserError, match="not an attnbench run export"):
            b.import_run({"format": "other"})


def test_kv_cache(tmp_path):
    with Store(tmp_path / "r.db") as s:
        assert s.get("ceilings", "e1") is None
        s.put("ceilings", "e1", {"copy_gbps": 3000})
        assert s.get("ceilings", "e1") == {"copy_gbps": 3000}


def test_batch_sizes_round_trip_and_validation(tmp_path):
    with Store(tmp_path / "r.db") as s:
        rid = s.start_run("e1", {})
        s.add(rid, m(samples=(1.0, 1.1, 0.9, 1.2), batch_sizes=(1, 0, 3)))
        s.add(rid, m(impl="old-style", samples=(1.0, 2.0)))
        got = {x.impl: x for x in s.measurements(rid)}
        assert got["sdpa-math"].batch_sizes == (1, 0, 3)  # an empty batch keeps its place (round k stays k)
        assert got["old-style"].batch_sizes == ()          # structure unknown
        row = s.db.execute("SELECT batch_sizes FROM measurements WHERE impl='old-style'").fetchone()
        assert row[0] is None
    with pytest.raises(ValueError, match="sum to 2, not to the 3 samples"):
        m(batch_sizes=(1, 1))


def test_schema_1_database_is_migrated_and_its_rows_have_unknown_structure(tmp_path):
    from attnbench.store.schema import MIGRATIONS

    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript(MIGRATIONS[1])
    con.execute("PRAGMA user_version = 1")
    con.execute("INSERT INTO runs (created, env_id, config) VALUES (1.0, 'e1', '{}')")
    con.execute("INSERT INTO measurements (run_id, workload_key, workload, impl, status, samples_ms, created) "
                "VALUES (1, ?, ?, 'sdpa-math', 'ok', '[1.0, 2.0, 3.0]', 1.0)", (W.key, json.dumps(W.to_dict())))
    con.commit()
    con.close()
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 3
        (old,) = s.measurements(1)
        assert old.samples_ms == (1.0, 2.0, 3.0) and old.batch_sizes == () and old.ok
        s.add(1, m(impl="new", batch_sizes=(2, 1)))
        assert s.measurements(1, impl="new")[0].batch_sizes == (2, 1)


def test_measuring_a_cell_again_updates_it_in_place(tmp_path):
    with Store(tmp_path / "r.db") as s:
        rid = s.start_run("e1", {})
        for impl in ("a", "b", "c"):
            s.add(rid, m(impl=impl))
        s.add(rid, m(impl="a", samples=(5.0, 6.0), batch_sizes=(1, 1)))  # one more repeat of cell a
        got = s.measurements(rid)
        assert [x.impl for x in got] == ["a", "b", "c"] and got[0].samples_ms == (5.0, 6.0)


def test_export_import_carries_batch_sizes_and_reads_old_exports(tmp_path):
    with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        rid = a.start_run("e1", {})
        a.add(rid, m(batch_sizes=(2, 1)))
        data = a.export_run(rid)
        assert data["measurements"][0]["batch_sizes"] == [2, 1]
        assert b.measurements(b.import_run(data))[0].batch_sizes == (2, 1)
        del data["measurements"][0]["batch_sizes"]  # an export written before schema 2
        data["schema_version"] = 1
        assert b.measurements(b.import_run(data))[0].batch_sizes == ()


def test_schema_2_rows_get_the_mask_fields_of_their_causal_flag(tmp_path):
    from attnbench.store.schema import MIGRATIONS

    path = tmp_path / "v2.db"
    con = sqlite3.connect(path)
    for v in (1, 2):
        con.executescript(MIGRATIONS[v])
    con.execute("PRAGMA user_version = 2")
    con.execute("INSERT INTO runs (created, env_id, config) VALUES (1.0, 'e1', '{}')")
    old = {"batch": 2, "q_heads": 4, "kv_heads": 4, "q_len": 64, "kv_len": 64, "head_dim": 32, "dtype": "fp16",
           "direction": "fwd"}
    for impl, causal in (("a", True), ("b", False)):
        w = dict(old, causal=causal)
        con.execute("INSERT INTO measurements (run_id, workload_key, workload, impl, status, samples_ms, created) "
                    "VALUES (1, ?, ?, ?, 'ok', '[1.0]', 1.0)", (Workload.from_dict(w).key, json.dumps(w), impl))
    con.commit()
    con.close()
    with Store(path) as s:
        assert s.schema_version == 3
        rows = {r[0]: json.loads(r[1]) for r in s.db.execute("SELECT impl, workload FROM measurements")}
        assert (rows["a"]["mask"], rows["b"]["mask"]) == ("causal", "full")
        assert rows["a"]["score_mod"] == "" and rows["b"]["layout"] == "dense"
        got = {m.impl: m.workload for m in s.measurements(1)}
        assert got["a"] == Workload.from_dict(dict(old, causal=True)) and got["a"].key.endswith("_causal_fwd")


def test_a_database_another_process_is_creating_is_waited_for_not_created_twice(tmp_path):
    """Two `attnbench run` starting at once on a new file: the second waits for the first's schema instead of
    creating the tables again ('table environments already exists') or calling it a foreign file."""
    import threading

    path = tmp_path / "r.db"
    first = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    first.execute("PRAGMA journal_mode=WAL")
    from attnbench.store.schema import MIGRATIONS

    # The first process is creating the tables: its transaction is open (executescript leaves it so).
    first.executescript("BEGIN IMMEDIATE;" + "".join(MIGRATIONS[v] for v in range(1, SCHEMA_VERSION + 1)))

    def finish():
        first.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        first.execute("COMMIT")

    timer = threading.Timer(0.5, finish)
    timer.start()
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        s.start_run("e", {})
    timer.join()
    first.close()


def test_locked_full_read_only_or_damaged_files_are_one_line_errors(tmp_path, monkeypatch):
    path = tmp_path / "r.db"
    with Store(path) as s:
        run = s.start_run("e", {})
        s.db.execute("PRAGMA query_only = 1")  # as a read-only file would be
        with pytest.raises(UserError, match=r"r\.db cannot be written \(attempt to write a readonly database\)"):
            s.add(run, m())
        s.db.execute("PRAGMA query_only = 0")
        pages = s.db.execute("PRAGMA page_count").fetchone()[0]
        s.db.execute(f"PRAGMA max_page_count = {pages}")  # as a full disk would be
        with pytest.raises(UserError, match="database or disk is full.*what was stored before is kept"):
            for i in range(200):
                s.add(run, m(impl=f"i{i}", samples=[1.0] * 500))
    monkeypatch.setattr(Store, "LOCK_TIMEOUT_S", 0.1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with Store(path) as s:
        with pytest.raises(UserError, match="is locked by another process"):
            s.start_run("e", {})
    other.execute("ROLLBACK")
    other.close()
    with Store(path) as s:
        for i in range(300):
            s.add(run, m(impl=f"j{i}", samples=[1.0 + i] * 200))
    data = path.read_bytes()
    third = len(data) // 3
    path.write_bytes(data[:third] + bytes(third) + data[2 * third:])  # pages overwritten: opens, reads fail
    with Store(path) as s:
        with pytest.raises(UserError, match="is damaged or not an SQLite file"):
            s.measurements(run)
    path.write_bytes(data[: 2 * third])  # a copy cut short
    with pytest.raises(UserError, match="is damaged or not an SQLite file"):
        with Store(path) as s:
            s.measurements(run)
    with pytest.raises(UserError, match="is a folder"):
        Store(tmp_path)


def test_a_file_on_a_read_only_disk_is_read_as_it_is(tmp_path, monkeypatch):
    """report, runs and compare read a results file that cannot be written (a read-only mount of CI artifacts):
    SQLite cannot open a WAL file there the usual way, so it is opened immutable; one that would need an
    upgrade says so. A read-only disk is simulated: the usual open fails as it does there, and nothing is
    writable."""
    import os

    from attnbench.store import database

    path, old = tmp_path / "r.db", tmp_path / "old.db"
    with Store(path) as s:
        s.add(s.start_run("e", {}), m())
    con = sqlite3.connect(old)
    con.execute("CREATE TABLE runs (x)")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    connect = sqlite3.connect

    def read_only_disk(target, *args, uri=False, **kw):
        if not uri:
            raise sqlite3.OperationalError("unable to open database file")
        return connect(target, *args, uri=uri, **kw)

    monkeypatch.setattr(database.sqlite3, "connect", read_only_disk)
    monkeypatch.setattr(os, "access", lambda p, mode: mode != os.W_OK)
    with pytest.raises(UserError, match="cannot be opened"):
        Store(path)  # a command that writes
    with Store(path, read_only=True) as s:
        assert s.read_only and [x.impl for x in s.measurements()] == ["sdpa-math"]
        with pytest.raises(UserError, match="cannot be written"):
            s.start_run("e", {})
    with pytest.raises(UserError, match="has schema 1 .* copy it to a writable folder"):
        Store(old, read_only=True)
