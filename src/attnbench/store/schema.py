"""The results database's schema and its migrations.

History (bump SCHEMA_VERSION and add a migration for every change):
  1: runs, environments, measurements (raw samples, host times and clocks as JSON arrays).
  2: measurements.batch_sizes: the samples in each batch, in order, as a JSON array (NULL: rows stored
     before version 2, whose batch structure is unknown).
  3: the stored workload (measurements.workload, JSON) carries `mask`, `score_mod` and `layout`: rows
     stored before them get mask 'causal' or 'full' from their `causal` flag, no score modifier and a
     dense layout (their keys do not change: a full or causal dense workload's key is as before).
"""

from __future__ import annotations

SCHEMA_VERSION = 3

_SCHEMA_1 = """
CREATE TABLE environments (
    env_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    finished REAL,
    env_id TEXT REFERENCES environments(env_id),
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'running',
    config_hash TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    workload_key TEXT NOT NULL,
    workload TEXT NOT NULL,
    impl TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    env_id TEXT NOT NULL DEFAULT '',
    device TEXT NOT NULL DEFAULT '',
    timer TEXT NOT NULL DEFAULT '',
    samples_ms TEXT NOT NULL DEFAULT '[]',
    host_ms TEXT NOT NULL DEFAULT '[]',
    clocks_mhz TEXT NOT NULL DEFAULT '[]',
    stop_reason TEXT NOT NULL DEFAULT '',
    compile_ms REAL,
    warmup_ms REAL,
    rel_err REAL,
    tolerance REAL,
    backend TEXT NOT NULL DEFAULT '',
    peak_mem_mb REAL,
    extra TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    UNIQUE (run_id, workload_key, impl, params, timer)
);
CREATE INDEX measurements_cell ON measurements (workload_key, impl, params);
CREATE TABLE kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (namespace, key)
);
"""

_BATCH_SIZES_2 = """
ALTER TABLE measurements ADD COLUMN batch_sizes TEXT;
"""

_WORKLOAD_MASKS_3 = """
UPDATE measurements SET workload = json_set(workload, '$.mask',
    CASE WHEN json_extract(workload, '$.causal') THEN 'causal' ELSE 'full' END)
    WHERE json_type(workload, '$.mask') IS NULL;
UPDATE measurements SET workload = json_set(workload, '$.score_mod', '')
    WHERE json_type(workload, '$.score_mod') IS NULL;
UPDATE measurements SET workload = json_set(workload, '$.layout', 'dense')
    WHERE json_type(workload, '$.layout') IS NULL;
"""

# version -> script that upgrades from version-1. Version 1 is the initial schema.
MIGRATIONS: dict[int, str] = {1: _SCHEMA_1, 2: _BATCH_SIZES_2, 3: _WORKLOAD_MASKS_3}
