//! The embedded default: SQLite in WAL mode, one file in the data dir.
//!
//! Durability: `synchronous = FULL`, so a commit is on disk (the WAL is
//! fsynced) before [`Store::write`] returns and the ingest writer
//! acknowledges anything. WAL lets readers query while the writer commits.
//!
//! Migrations are versioned and append-only: a released migration is never
//! edited, a change is a new entry at the end of [`MIGRATIONS`].

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    AlertOutcome, Backend, Change, DeviationRecord, DriftPoint, FindingRecord, HostRecord,
    HostStatus, ImageRecord, OutboxRecord, QueueState, ReportWrite, SessionOpen, StickyFlag, Store,
    StoreError, Write, Written,
};

/// Schema versions, in order. Index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    // 1: hosts, their current deviations, drift history, images.
    r#"
    CREATE TABLE hosts (
        host_id            TEXT PRIMARY KEY NOT NULL,
        hostname           TEXT NOT NULL,
        image_id           TEXT NOT NULL,
        image_version      TEXT NOT NULL,
        manifest_digest    BLOB NOT NULL,
        image_build_time   INTEGER NOT NULL,
        agent_version      TEXT NOT NULL,
        state_epoch        INTEGER NOT NULL,
        first_seen         INTEGER NOT NULL,
        last_seen          INTEGER NOT NULL,
        boot_time          INTEGER NOT NULL,
        first_boot_time    INTEGER NOT NULL,
        status             TEXT NOT NULL DEFAULT 'active',
        last_seq           INTEGER NOT NULL DEFAULT 0,
        dropped_reports    INTEGER NOT NULL DEFAULT 0,
        drift_pct          REAL NOT NULL DEFAULT 0,
        deviating          INTEGER NOT NULL DEFAULT 0,
        observed           INTEGER NOT NULL DEFAULT 0,
        not_verified       INTEGER NOT NULL DEFAULT 0,
        last_scan          INTEGER NOT NULL DEFAULT 0,
        acked_codes        TEXT NOT NULL DEFAULT '',
        acked_at           INTEGER NOT NULL DEFAULT 0,
        retired_at         INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE deviations (
        host_id       TEXT NOT NULL REFERENCES hosts(host_id),
        key           BLOB NOT NULL,
        kind          TEXT NOT NULL,
        body          BLOB NOT NULL,
        critical      INTEGER NOT NULL,
        first_seen    INTEGER NOT NULL,
        last_changed  INTEGER NOT NULL,
        scan_id       INTEGER NOT NULL,
        PRIMARY KEY (host_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE host_flags (
        host_id   TEXT NOT NULL REFERENCES hosts(host_id),
        code      TEXT NOT NULL,
        message   TEXT NOT NULL,
        since     INTEGER NOT NULL,
        count     INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (host_id, code)
    ) WITHOUT ROWID;
    CREATE TABLE drift_history (
        host_id    TEXT NOT NULL REFERENCES hosts(host_id),
        at         INTEGER NOT NULL,
        drift_pct  REAL NOT NULL,
        deviating  INTEGER NOT NULL,
        observed   INTEGER NOT NULL
    );
    CREATE INDEX drift_history_by_host ON drift_history (host_id, at);
    CREATE TABLE images (
        manifest_digest  BLOB PRIMARY KEY NOT NULL,
        image_id         TEXT NOT NULL,
        image_version    TEXT NOT NULL,
        source_commit    TEXT NOT NULL,
        build_time       INTEGER NOT NULL,
        entries          INTEGER NOT NULL,
        files            INTEGER NOT NULL,
        packages         INTEGER NOT NULL,
        registered_at    INTEGER NOT NULL
    );
    "#,
    // 2: the replacement queue, severities and fleet-wide findings, and the
    // durable alert outbox. The fingerprint is deliberately not indexed: an
    // index on it cut durable ingest from 226k to 88k events/s (random
    // inserts into a second B-tree on every upsert); findings are computed
    // by one scan instead, and cached by the query layer.
    r#"
    ALTER TABLE hosts ADD COLUMN queue_state TEXT NOT NULL DEFAULT 'none';
    ALTER TABLE hosts ADD COLUMN drain_since INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE hosts ADD COLUMN drained_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE deviations ADD COLUMN severity TEXT NOT NULL DEFAULT 'low';
    ALTER TABLE deviations ADD COLUMN fingerprint BLOB NOT NULL DEFAULT x'';
    -- Images count their hosts on every fleet query (to know which digests
    -- are registered and how many hosts run each).
    CREATE INDEX hosts_by_digest ON hosts (manifest_digest);
    CREATE TABLE alert_outbox (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        sink          TEXT NOT NULL,
        alert_id      TEXT NOT NULL,
        body          BLOB NOT NULL,
        created       INTEGER NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        next_attempt  INTEGER NOT NULL,
        delivered     INTEGER NOT NULL DEFAULT 0,
        dead          INTEGER NOT NULL DEFAULT 0,
        last_error    TEXT NOT NULL DEFAULT '',
        UNIQUE (sink, alert_id)
    );
    CREATE INDEX alert_outbox_due ON alert_outbox (delivered, dead, next_attempt);
    "#,
];

/// The database file inside the data dir.
pub const DB_FILE: &str = "driftwatch.sqlite3";

/// SQLite in a data directory.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    path: PathBuf,
}

impl SqliteBackend {
    /// Creates the data dir (0700) and the database if needed, and brings
    /// the schema up to date.
    pub fn open(data_dir: &Path) -> Result<SqliteBackend, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|source| StoreError::DataDir {
                path: data_dir.display().to_string(),
                source,
            })?;
        let backend = SqliteBackend {
            path: data_dir.join(DB_FILE),
        };
        let mut conn = backend.connect()?;
        migrate(&mut conn)?;
        Ok(backend)
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }
}

impl Backend for SqliteBackend {
    fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(SqliteStore {
            conn: self.connect()?,
        }))
    }

    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

/// Applies every migration newer than the database, each in its own
/// transaction with its version row.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )
    .map_err(db)?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::NewerSchema {
            found: current,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, unixepoch())",
            [index as i64 + 1],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(())
}

/// One SQLite connection.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

impl Store for SqliteStore {
    fn write(&mut self, batch: &[Write]) -> Result<Vec<Written>, StoreError> {
        let tx = self.conn.transaction().map_err(db)?;
        let mut out = Vec::with_capacity(batch.len());
        for write in batch {
            out.push(apply(&tx, write).map_err(db)?);
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    fn hosts(&mut self) -> Result<Vec<HostRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{HOST_SELECT} ORDER BY h.host_id"))
            .map_err(db)?;
        let mut hosts = stmt
            .query_map([], host_row)
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        drop(stmt);
        let mut flags = self
            .conn
            .prepare_cached(
                "SELECT host_id, code, message, since, count FROM host_flags ORDER BY since, code",
            )
            .map_err(db)?;
        let rows = flags
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    StickyFlag {
                        code: r.get(1)?,
                        message: r.get(2)?,
                        since: r.get(3)?,
                        count: r.get::<_, i64>(4)? as u64,
                    },
                ))
            })
            .map_err(db)?;
        let mut by_host: std::collections::HashMap<String, Vec<StickyFlag>> =
            std::collections::HashMap::new();
        for row in rows {
            let (host, flag) = row.map_err(db)?;
            by_host.entry(host).or_default().push(flag);
        }
        for host in &mut hosts {
            host.sticky = by_host.remove(&host.host_id).unwrap_or_default();
        }
        Ok(hosts)
    }

    fn host(&mut self, host_id: &str) -> Result<Option<HostRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{HOST_SELECT} WHERE h.host_id = ?1"))
            .map_err(db)?;
        let Some(mut host) = stmt.query_row([host_id], host_row).optional().map_err(db)? else {
            return Ok(None);
        };
        host.sticky = sticky_flags(&self.conn, host_id).map_err(db)?;
        Ok(Some(host))
    }

    fn deviations(
        &mut self,
        host_id: &str,
        limit: usize,
    ) -> Result<Vec<DeviationRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT kind, body, critical, first_seen, last_changed, severity FROM deviations
                 WHERE host_id = ?1 ORDER BY critical DESC, key LIMIT ?2",
            )
            .map_err(db)?;
        stmt.query_map(params![host_id, limit as i64], |r| {
            Ok(DeviationRecord {
                kind: r.get(0)?,
                body: r.get(1)?,
                critical: r.get(2)?,
                first_seen: r.get(3)?,
                last_changed: r.get(4)?,
                severity: r.get(5)?,
            })
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)
    }

    fn history(&mut self, host_id: &str, limit: usize) -> Result<Vec<DriftPoint>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT at, drift_pct, deviating, observed FROM (
                     SELECT rowid, at, drift_pct, deviating, observed FROM drift_history
                     WHERE host_id = ?1 ORDER BY at DESC, rowid DESC LIMIT ?2
                 ) ORDER BY at, rowid",
            )
            .map_err(db)?;
        stmt.query_map(params![host_id, limit as i64], |r| {
            Ok(DriftPoint {
                at: r.get(0)?,
                drift_pct: r.get(1)?,
                deviating: r.get::<_, i64>(2)? as u64,
                observed: r.get::<_, i64>(3)? as u64,
            })
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)
    }

    fn images(&mut self) -> Result<Vec<(ImageRecord, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT i.manifest_digest, i.image_id, i.image_version, i.source_commit,
                        i.build_time, i.entries, i.files, i.packages, i.registered_at,
                        (SELECT COUNT(*) FROM hosts h
                          WHERE h.manifest_digest = i.manifest_digest AND h.status != 'retired')
                 FROM images i ORDER BY i.image_id, i.build_time, i.image_version",
            )
            .map_err(db)?;
        stmt.query_map([], |r| Ok((image_row(r)?, r.get::<_, i64>(9)? as u64)))
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    fn findings(&mut self, min_hosts: u64, limit: usize) -> Result<Vec<FindingRecord>, StoreError> {
        // One scan, no index (see migration 2). Host ids are printable
        // ASCII, so the unit separator cannot occur in them.
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT MIN(d.kind), MIN(d.body), MAX(d.severity), COUNT(*), MIN(d.first_seen),
                        group_concat(d.host_id, char(31))
                 FROM deviations d JOIN hosts h ON h.host_id = d.host_id
                 WHERE h.status = 'active' AND length(d.fingerprint) > 0
                 GROUP BY d.fingerprint HAVING COUNT(*) >= ?1
                 ORDER BY COUNT(*) DESC, MIN(d.first_seen) LIMIT ?2",
            )
            .map_err(db)?;
        stmt.query_map(params![min_hosts as i64, limit as i64], |r| {
            let hosts: String = r.get(5)?;
            let mut host_ids: Vec<String> = hosts.split('\u{1f}').map(str::to_string).collect();
            host_ids.sort();
            host_ids.truncate(100);
            Ok(FindingRecord {
                kind: r.get(0)?,
                body: r.get(1)?,
                // The members share kind and subject, so the same rule
                // gave them the same severity.
                severity: r.get(2)?,
                host_count: r.get::<_, i64>(3)? as u64,
                host_ids,
                first_seen: r.get(4)?,
            })
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)
    }

    fn due_alerts(&mut self, now: i64, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, sink, alert_id, body, attempts FROM alert_outbox
                 WHERE delivered = 0 AND dead = 0 AND next_attempt <= ?1
                 ORDER BY id LIMIT ?2",
            )
            .map_err(db)?;
        stmt.query_map(params![now, limit as i64], |r| {
            Ok(OutboxRecord {
                id: r.get(0)?,
                sink: r.get(1)?,
                alert_id: r.get(2)?,
                body: r.get(3)?,
                attempts: r.get::<_, i64>(4)? as u32,
            })
        })
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)
    }

    fn alert_backlog(&mut self) -> Result<(u64, u64), StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(delivered = 0 AND dead = 0), 0), COALESCE(SUM(dead), 0)
                 FROM alert_outbox",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(db)
    }
}

const HOST_SELECT: &str = "SELECT h.host_id, h.hostname, h.image_id, h.image_version,
    h.manifest_digest, h.image_build_time, h.agent_version, h.first_seen, h.last_seen,
    h.boot_time, h.first_boot_time, h.status, h.last_seq, h.dropped_reports, h.drift_pct,
    h.deviating, h.observed, h.not_verified, h.last_scan,
    (SELECT COUNT(*) FROM deviations d WHERE d.host_id = h.host_id),
    h.acked_codes, h.acked_at, h.queue_state, h.drain_since, h.drained_by
    FROM hosts h";

fn host_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HostRecord> {
    let status: String = r.get(11)?;
    let acked: String = r.get(20)?;
    Ok(HostRecord {
        host_id: r.get(0)?,
        hostname: r.get(1)?,
        image_id: r.get(2)?,
        image_version: r.get(3)?,
        manifest_digest: r.get(4)?,
        image_build_time: r.get(5)?,
        agent_version: r.get(6)?,
        first_seen: r.get(7)?,
        last_seen: r.get(8)?,
        boot_time: r.get(9)?,
        first_boot_time: r.get(10)?,
        status: if status == "retired" {
            HostStatus::Retired
        } else {
            HostStatus::Active
        },
        last_seq: r.get::<_, i64>(12)? as u64,
        dropped_reports: r.get::<_, i64>(13)? as u64,
        drift_pct: r.get(14)?,
        deviating: r.get::<_, i64>(15)? as u64,
        observed: r.get::<_, i64>(16)? as u64,
        not_verified: r.get::<_, i64>(17)? as u64,
        last_scan: r.get(18)?,
        deviation_count: r.get::<_, i64>(19)? as u64,
        sticky: Vec::new(),
        acked_codes: acked
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect(),
        acked_at: r.get(21)?,
        queue_state: if r.get::<_, String>(22)? == "draining" {
            QueueState::Draining
        } else {
            QueueState::None
        },
        drain_since: r.get(23)?,
        drained_by: r.get(24)?,
    })
}

fn image_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        manifest_digest: r.get(0)?,
        image_id: r.get(1)?,
        image_version: r.get(2)?,
        source_commit: r.get(3)?,
        build_time: r.get(4)?,
        entries: r.get::<_, i64>(5)? as u64,
        files: r.get::<_, i64>(6)? as u64,
        packages: r.get::<_, i64>(7)? as u64,
        registered_at: r.get(8)?,
    })
}

fn sticky_flags(conn: &Connection, host_id: &str) -> rusqlite::Result<Vec<StickyFlag>> {
    let mut stmt = conn.prepare_cached(
        "SELECT code, message, since, count FROM host_flags WHERE host_id = ?1 ORDER BY since, code",
    )?;
    stmt.query_map([host_id], |r| {
        Ok(StickyFlag {
            code: r.get(0)?,
            message: r.get(1)?,
            since: r.get(2)?,
            count: r.get::<_, i64>(3)? as u64,
        })
    })?
    .collect()
}

fn apply(tx: &rusqlite::Transaction<'_>, write: &Write) -> rusqlite::Result<Written> {
    match write {
        Write::Session(s) => open_session(tx, s),
        Write::Report(r) => apply_report(tx, r),
        Write::Heartbeat { host_id, at } => {
            tx.prepare_cached(
                "UPDATE hosts SET last_seen = MAX(last_seen, ?2) WHERE host_id = ?1",
            )?
            .execute(params![host_id, at])?;
            Ok(Written::Heartbeat)
        }
        Write::RegisterImage(image) => {
            tx.prepare_cached(
                "INSERT INTO images (manifest_digest, image_id, image_version, source_commit,
                                     build_time, entries, files, packages, registered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (manifest_digest) DO UPDATE SET
                     image_id = excluded.image_id, image_version = excluded.image_version,
                     source_commit = excluded.source_commit, build_time = excluded.build_time,
                     entries = excluded.entries, files = excluded.files,
                     packages = excluded.packages",
            )?
            .execute(params![
                image.manifest_digest,
                image.image_id,
                image.image_version,
                image.source_commit,
                image.build_time,
                image.entries as i64,
                image.files as i64,
                image.packages as i64,
                image.registered_at
            ])?;
            let stored = tx.query_row(
                "SELECT manifest_digest, image_id, image_version, source_commit, build_time,
                        entries, files, packages, registered_at
                 FROM images WHERE manifest_digest = ?1",
                [&image.manifest_digest],
                image_row,
            )?;
            Ok(Written::Image(stored))
        }
        Write::Acknowledge { host_id, codes, at } => {
            let n = tx
                .prepare_cached(
                    "UPDATE hosts SET acked_codes = ?2, acked_at = ?3 WHERE host_id = ?1",
                )?
                .execute(params![host_id, codes.join(","), at])?;
            Ok(Written::Host { found: n == 1 })
        }
        Write::Retire { host_id, at } => {
            let n = tx
                .prepare_cached(
                    "UPDATE hosts SET status = 'retired', retired_at = ?2, acked_codes = '',
                     acked_at = 0, queue_state = 'none', drain_since = 0, drained_by = ''
                     WHERE host_id = ?1",
                )?
                .execute(params![host_id, at])?;
            tx.prepare_cached("DELETE FROM host_flags WHERE host_id = ?1")?
                .execute([host_id])?;
            Ok(Written::Host { found: n == 1 })
        }
        Write::SetQueueState {
            host_id,
            state,
            by,
            at,
        } => {
            let (since, by) = match state {
                QueueState::Draining => (*at, by.as_str()),
                QueueState::None => (0, ""),
            };
            let n = tx
                .prepare_cached(
                    "UPDATE hosts SET queue_state = ?2, drain_since = ?3, drained_by = ?4
                     WHERE host_id = ?1 AND status = 'active'",
                )?
                .execute(params![host_id, state.as_str(), since, by])?;
            Ok(Written::Host { found: n == 1 })
        }
        Write::AlertOutcome { id, outcome } => {
            match outcome {
                AlertOutcome::Delivered { at } => tx
                    .prepare_cached(
                        "UPDATE alert_outbox SET delivered = ?2, attempts = attempts + 1,
                         last_error = '' WHERE id = ?1",
                    )?
                    .execute(params![id, at])?,
                AlertOutcome::Retry {
                    next_attempt,
                    error,
                } => tx
                    .prepare_cached(
                        "UPDATE alert_outbox SET next_attempt = ?2, attempts = attempts + 1,
                         last_error = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, next_attempt, error])?,
                AlertOutcome::Dead { at, error } => tx
                    .prepare_cached(
                        "UPDATE alert_outbox SET dead = ?2, attempts = attempts + 1,
                         last_error = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, at, error])?,
            };
            Ok(Written::Done)
        }
    }
}

fn open_session(tx: &rusqlite::Transaction<'_>, s: &SessionOpen) -> rusqlite::Result<Written> {
    let existing: Option<(u64, i64, String, i64)> = tx
        .prepare_cached(
            "SELECT last_seq, state_epoch, status, retired_at FROM hosts WHERE host_id = ?1",
        )?
        .query_row([&s.host_id], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let epoch = s.state_epoch as i64;
    let Some((last_seq, stored_epoch, status, retired_at)) = existing else {
        tx.prepare_cached(
            "INSERT INTO hosts (host_id, hostname, image_id, image_version, manifest_digest,
                 image_build_time, agent_version, state_epoch, first_seen, last_seen,
                 boot_time, first_boot_time)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?10)",
        )?
        .execute(params![
            s.host_id,
            s.hostname,
            s.image_id,
            s.image_version,
            s.manifest_digest,
            s.image_build_time,
            s.agent_version,
            epoch,
            s.at,
            s.boot_time
        ])?;
        return Ok(Written::Session {
            last_applied_seq: 0,
        });
    };
    // A new epoch: the agent lost its spool and counter. Its sequence
    // restarts, and its first scan (a snapshot) must replace every
    // deviation it reported before, whatever scan ids they carried.
    let last_seq = if stored_epoch != epoch {
        tx.prepare_cached("UPDATE deviations SET scan_id = -1 WHERE host_id = ?1")?
            .execute([&s.host_id])?;
        0
    } else {
        last_seq
    };
    tx.prepare_cached(
        "UPDATE hosts SET hostname = ?2, image_id = ?3, image_version = ?4,
             manifest_digest = ?5, image_build_time = ?6, agent_version = ?7, state_epoch = ?8,
             last_seen = MAX(last_seen, ?9), boot_time = ?10,
             first_boot_time = MIN(first_boot_time, ?10), last_seq = ?11, status = 'active'
         WHERE host_id = ?1",
    )?
    .execute(params![
        s.host_id,
        s.hostname,
        s.image_id,
        s.image_version,
        s.manifest_digest,
        s.image_build_time,
        s.agent_version,
        epoch,
        s.at,
        s.boot_time,
        last_seq as i64
    ])?;
    if status == "retired" {
        raise_flag(
            tx,
            &s.host_id,
            "returned",
            &format!(
                "reported again after it was retired at {}",
                crate::time::utc(retired_at)
            ),
            s.at,
        )?;
    }
    Ok(Written::Session {
        last_applied_seq: last_seq,
    })
}

fn raise_flag(
    tx: &rusqlite::Transaction<'_>,
    host_id: &str,
    code: &str,
    message: &str,
    at: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO host_flags (host_id, code, message, since) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (host_id, code) DO UPDATE SET count = count + 1",
    )?
    .execute(params![host_id, code, message, at])?;
    Ok(())
}

fn apply_report(tx: &rusqlite::Transaction<'_>, r: &ReportWrite) -> rusqlite::Result<Written> {
    let last_seq: Option<i64> = tx
        .prepare_cached("SELECT last_seq FROM hosts WHERE host_id = ?1")?
        .query_row([&r.host_id], |row| row.get(0))
        .optional()?;
    let Some(last_seq) = last_seq else {
        return Ok(Written::Report { applied: false });
    };
    let last_seq = last_seq as u64;
    if r.seq <= last_seq {
        return Ok(Written::Report { applied: false });
    }
    // Reports the agent dropped show up as a gap, whether or not it
    // managed to say so.
    let gap = r.seq - last_seq - 1;
    let dropped = gap.max(r.dropped_reports);
    let scan_id = r.scan_id as i64;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO deviations (host_id, key, kind, body, critical, first_seen,
                                     last_changed, scan_id, severity, fingerprint)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9)
             ON CONFLICT (host_id, key) DO UPDATE SET
                 body = excluded.body, critical = MAX(critical, excluded.critical),
                 last_changed = excluded.last_changed, scan_id = excluded.scan_id,
                 severity = excluded.severity, fingerprint = excluded.fingerprint",
        )?;
        let mut previous_body =
            tx.prepare_cached("SELECT body FROM deviations WHERE host_id = ?1 AND key = ?2")?;
        let mut queue_alert = tx.prepare_cached(
            "INSERT OR IGNORE INTO alert_outbox (sink, alert_id, body, created, next_attempt)
             VALUES (?1, ?2, ?3, ?4, ?4)",
        )?;
        let mut delete =
            tx.prepare_cached("DELETE FROM deviations WHERE host_id = ?1 AND key = ?2")?;
        for change in &r.changes {
            match change.change {
                Change::New | Change::Changed => {
                    // What the host had before, looked up only when it
                    // matters: one alert per new deviation (a snapshot
                    // re-sending a deviation the host already has is not
                    // news), and a critical flag raised again only by a
                    // deviation that is new or changed.
                    let wants_alert = change.alert.as_ref().is_some_and(|a| !a.sinks.is_empty());
                    let previous: Option<Vec<u8>> = if wants_alert || change.critical.is_some() {
                        previous_body
                            .query_row(params![r.host_id, change.key], |row| row.get(0))
                            .optional()?
                    } else {
                        None
                    };
                    let is_new = previous.is_none();
                    let is_news = previous.as_deref() != Some(change.body.as_slice());
                    let alert = change.alert.as_ref().filter(|_| wants_alert && is_new);
                    upsert.execute(params![
                        r.host_id,
                        change.key,
                        change.kind,
                        change.body,
                        change.critical.is_some(),
                        r.at,
                        scan_id,
                        change.severity,
                        change.fingerprint
                    ])?;
                    if let Some(alert) = alert {
                        for sink in alert.sinks.iter() {
                            queue_alert.execute(params![sink, alert.id, alert.body, r.at])?;
                        }
                    }
                    if let Some(reason) = &change.critical
                        && is_news
                    {
                        raise_flag(tx, &r.host_id, "critical_change", reason, r.at)?;
                    }
                }
                Change::Resolved => {
                    delete.execute(params![r.host_id, change.key])?;
                }
            }
        }
    }
    if let Some(end) = &r.scan_end {
        if end.snapshot {
            tx.prepare_cached("DELETE FROM deviations WHERE host_id = ?1 AND scan_id != ?2")?
                .execute(params![r.host_id, scan_id])?;
        }
        tx.prepare_cached(
            "UPDATE hosts SET drift_pct = ?2, deviating = ?3, observed = ?4, not_verified = ?5,
                 last_scan = ?6 WHERE host_id = ?1",
        )?
        .execute(params![
            r.host_id,
            end.drift_pct,
            end.deviating as i64,
            end.observed as i64,
            end.not_verified as i64,
            end.finished_at
        ])?;
        tx.prepare_cached(
            "INSERT INTO drift_history (host_id, at, drift_pct, deviating, observed)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            r.host_id,
            end.finished_at,
            end.drift_pct,
            end.deviating as i64,
            end.observed as i64
        ])?;
    }
    tx.prepare_cached(
        "UPDATE hosts SET last_seq = ?2, last_seen = MAX(last_seen, ?3),
             dropped_reports = MIN(dropped_reports + ?4, 9223372036854775807)
             WHERE host_id = ?1",
    )?
    .execute(params![
        r.host_id,
        r.seq as i64,
        r.at,
        dropped.min(i64::MAX as u64) as i64
    ])?;
    Ok(Written::Report { applied: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ChangeWrite, ScanEndWrite};

    fn session(host: &str, epoch: u64, boot: i64, at: i64) -> Write {
        Write::Session(SessionOpen {
            host_id: host.into(),
            hostname: "h".into(),
            image_id: "img".into(),
            image_version: "1".into(),
            manifest_digest: vec![7; 32],
            boot_time: boot,
            image_build_time: 100,
            agent_version: "0.1.0".into(),
            state_epoch: epoch,
            at,
        })
    }

    fn change(change: Change, key: &str, critical: Option<&str>) -> ChangeWrite {
        ChangeWrite {
            change,
            key: key.as_bytes().to_vec(),
            kind: "modified".into(),
            body: key.as_bytes().to_vec(),
            critical: critical.map(str::to_string),
            severity: "low",
            fingerprint: key.as_bytes().to_vec(),
            alert: None,
        }
    }

    fn report(
        host: &str,
        seq: u64,
        scan: u64,
        changes: Vec<ChangeWrite>,
        end: Option<bool>,
    ) -> Write {
        Write::Report(ReportWrite {
            host_id: host.into(),
            seq,
            scan_id: scan,
            dropped_reports: 0,
            changes,
            scan_end: end.map(|snapshot| ScanEndWrite {
                finished_at: 1000 + seq as i64,
                drift_pct: 1.5,
                deviating: 3,
                observed: 200,
                not_verified: 0,
                snapshot,
            }),
            at: 1000 + seq as i64,
        })
    }

    fn keys(store: &mut Box<dyn Store>, host: &str) -> Vec<String> {
        store
            .deviations(host, 100)
            .unwrap()
            .into_iter()
            .map(|d| String::from_utf8(d.body).unwrap())
            .collect()
    }

    #[test]
    fn reports_apply_once_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(dir.path()).unwrap();
        let mut store = backend.open().unwrap();
        let out = store.write(&[session("a", 1, 500, 1000)]).unwrap();
        assert_eq!(
            out,
            vec![Written::Session {
                last_applied_seq: 0
            }]
        );
        let r1 = report(
            "a",
            1,
            1,
            vec![
                change(Change::New, "x", None),
                change(Change::New, "y", None),
            ],
            None,
        );
        let r2 = report(
            "a",
            2,
            1,
            vec![change(Change::Changed, "x", None)],
            Some(false),
        );
        let out = store.write(&[r1.clone(), r2.clone(), r1.clone()]).unwrap();
        assert_eq!(
            out,
            vec![
                Written::Report { applied: true },
                Written::Report { applied: true },
                Written::Report { applied: false }
            ]
        );
        drop(store);
        // Reopen: the schema is not re-applied and the data is there.
        let backend = SqliteBackend::open(dir.path()).unwrap();
        let mut store = backend.open().unwrap();
        assert_eq!(
            store.write(&[session("a", 1, 400, 2000), r2]).unwrap(),
            vec![
                Written::Session {
                    last_applied_seq: 2
                },
                Written::Report { applied: false }
            ]
        );
        assert_eq!(keys(&mut store, "a"), vec!["x", "y"]);
        let host = store.host("a").unwrap().unwrap();
        assert_eq!(host.last_seq, 2);
        assert_eq!(host.first_boot_time, 400, "earliest boot time is kept");
        assert_eq!(host.boot_time, 400);
        assert_eq!(host.first_seen, 1000);
        assert_eq!(host.last_seen, 2000);
        assert_eq!(host.deviation_count, 2);
        assert_eq!(store.history("a", 10).unwrap().len(), 1);
    }

    #[test]
    fn resolve_snapshot_and_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteBackend::open(dir.path()).unwrap().open().unwrap();
        store
            .write(&[
                session("a", 1, 0, 10),
                report(
                    "a",
                    1,
                    1,
                    vec![
                        change(Change::New, "x", None),
                        change(Change::New, "y", None),
                        change(Change::New, "z", None),
                    ],
                    Some(false),
                ),
                report(
                    "a",
                    2,
                    2,
                    vec![change(Change::Resolved, "y", None)],
                    Some(false),
                ),
            ])
            .unwrap();
        assert_eq!(keys(&mut store, "a"), vec!["x", "z"]);
        // A snapshot mentions only z: x is resolved by omission.
        store
            .write(&[report(
                "a",
                3,
                3,
                vec![change(Change::New, "z", None)],
                Some(true),
            )])
            .unwrap();
        assert_eq!(keys(&mut store, "a"), vec!["z"]);
        // The agent lost its state: new epoch, sequence restarts at 1, and
        // its snapshot (scan id 3 again!) still replaces everything.
        let out = store
            .write(&[
                session("a", 2, 0, 20),
                report("a", 1, 3, vec![change(Change::New, "w", None)], Some(true)),
            ])
            .unwrap();
        assert_eq!(
            out,
            vec![
                Written::Session {
                    last_applied_seq: 0
                },
                Written::Report { applied: true }
            ]
        );
        assert_eq!(keys(&mut store, "a"), vec!["w"]);
    }

    #[test]
    fn critical_flags_stick_until_retired_and_a_return_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteBackend::open(dir.path()).unwrap().open().unwrap();
        store
            .write(&[
                session("a", 1, 0, 10),
                report(
                    "a",
                    1,
                    1,
                    vec![change(
                        Change::New,
                        "usr/bin/ls",
                        Some("modified usr/bin/ls"),
                    )],
                    None,
                ),
                report(
                    "a",
                    2,
                    1,
                    vec![change(Change::Resolved, "usr/bin/ls", None)],
                    Some(false),
                ),
            ])
            .unwrap();
        let host = store.host("a").unwrap().unwrap();
        assert_eq!(host.deviation_count, 0);
        assert_eq!(
            host.sticky.len(),
            1,
            "resolving does not clear a critical flag"
        );
        assert_eq!(host.sticky[0].message, "modified usr/bin/ls");
        assert_eq!(
            store
                .write(&[Write::Retire {
                    host_id: "a".into(),
                    at: 30
                }])
                .unwrap(),
            vec![Written::Host { found: true }]
        );
        let host = store.host("a").unwrap().unwrap();
        assert!(host.sticky.is_empty());
        assert_eq!(host.status, HostStatus::Retired);
        store.write(&[session("a", 1, 0, 40)]).unwrap();
        let host = store.host("a").unwrap().unwrap();
        assert_eq!(host.status, HostStatus::Active);
        assert_eq!(host.sticky[0].code, "returned");
        assert_eq!(
            store
                .write(&[Write::Retire {
                    host_id: "nope".into(),
                    at: 30
                }])
                .unwrap(),
            vec![Written::Host { found: false }]
        );
    }

    #[test]
    fn a_gap_counts_as_dropped_and_unknown_hosts_are_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteBackend::open(dir.path()).unwrap().open().unwrap();
        let out = store
            .write(&[
                report("ghost", 1, 1, vec![], Some(false)),
                session("a", 1, 0, 10),
                report("a", 5, 1, vec![], Some(false)),
            ])
            .unwrap();
        assert_eq!(out[0], Written::Report { applied: false });
        assert_eq!(store.host("a").unwrap().unwrap().dropped_reports, 4);
        assert!(store.host("ghost").unwrap().is_none());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        SqliteBackend::open(dir.path()).unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute("INSERT INTO schema_migrations VALUES (99, 0)", [])
            .unwrap();
        let err = SqliteBackend::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("version 99, newer"), "{err}");
    }
}
