//! The durable spool: every report is on disk before it is sent, and stays
//! there until the collector acknowledges it.
//!
//! The collector applies reports exactly once by their per-host `seq`, so
//! the agent's half of the contract is: never lose a report, never skip
//! one, and never give one `seq` two different contents. Everything here
//! serves those three rules across crashes, restarts and a collector that
//! is away for days.
//!
//! # On disk (in `--state-dir`, mode 0700)
//!
//! ```text
//! lock                    flock(2)ed while an agent runs: one agent per state dir
//! state                   counters and the previous scan's deviation set
//! spool/<seq:020>.report  one unacknowledged report each
//! ```
//!
//! Every file is `magic (8 bytes) | version (u32 LE) | BLAKE3 of body (32
//! bytes) | body`, the body a protobuf message (`driftwatch.v1.Report`, or
//! [`StateRecord`] below). A file is written under a temporary name,
//! fsynced, renamed into place, and the directory fsynced: a crash leaves
//! the old file or the new one, never half of one. Every name is opened
//! relative to the directory's descriptor with `O_NOFOLLOW`, and temporary
//! files with `O_EXCL`, so a symlink planted in the state directory is
//! never written through.
//!
//! # The commit point
//!
//! A scan's reports are written first, then the state file, which records
//! the scan's deviation set (what the next scan is compared with) and
//! `committed_seq`, the scan's last seq. Renaming the state file is the
//! commit. Reports above `committed_seq` belong to a scan that never
//! committed: on startup they are deleted, and the next scan regenerates
//! them from the same baseline. They may reuse those seqs because they were
//! never sent: the sender only reads committed reports.
//!
//! # Local and wire sequence numbers
//!
//! Files carry local sequence numbers; the wire seq is local + `seq_offset`.
//! The offset only grows, and only when the collector has applied seqs this
//! state directory never assigned (the state directory was wiped, or
//! another agent used the same host id): then the spool is moved above the
//! collector's last applied seq with one atomic state write, instead of
//! renaming every file.
//!
//! # The bound, and gaps
//!
//! The spool holds at most `--spool-max-bytes`. When a new scan would not
//! fit, the oldest reports are dropped, counted and logged. A corrupt or
//! unreadable spool file is dropped the same way. Either leaves a gap in
//! the seqs the collector receives, and the report right after a gap must
//! be the first report of a snapshot: a diff says what changed since a
//! scan the collector never got, and the collector counts a gap as
//! `max(gap, dropped_reports)` of the report after it. So a drop extends
//! forward over the diffs that follow, up to the next snapshot in the
//! spool; if there is none, the state records the count and the scan being
//! spooled (or the next one, after a crash) becomes a snapshot whose first
//! report carries it in `dropped_reports`. A single scan larger than the
//! whole bound is still kept whole: a snapshot cut short would make the
//! collector resolve deviations that still exist.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use driftwatch_proto::pb::v1 as pb;
use prost::Message as _;
use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use tokio::sync::watch;
use tracing::{error, warn};

use super::changes::DeviationSet;

const LOCK_FILE: &str = "lock";
const STATE_FILE: &str = "state";
const SPOOL_DIR: &str = "spool";
const TMP_PREFIX: &str = ".tmp.";
const REPORT_SUFFIX: &str = ".report";

const STATE_MAGIC: [u8; 8] = *b"\x89DWST\r\n\x1a";
const REPORT_MAGIC: [u8; 8] = *b"\x89DWSR\r\n\x1a";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 32;

/// Larger report files are not ours (a report holds about 1 MiB at most);
/// refusing them bounds what a planted file can make the agent allocate.
const MAX_REPORT_FILE: u64 = 64 * 1024 * 1024;
/// The state holds the whole deviation set of a scan, which can be large
/// on a host that drifted a lot, but not this large.
const MAX_STATE_FILE: u64 = 4 * 1024 * 1024 * 1024;

/// Why the spool could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("state directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("state directory {0} is a symlink; give the real directory")]
    DirIsSymlink(PathBuf),
    #[error("state directory {path} belongs to uid {owner}, not to this agent's uid {me}")]
    DirNotOwned { path: PathBuf, owner: u32, me: u32 },
    #[error("another driftwatch agent is already using the state directory {0}")]
    Locked(PathBuf),
    #[error("the collector says it applied report {0}, beyond any sequence this agent can use")]
    ImplausibleWelcome(u64),
    #[error("{path}/{name}: {source}")]
    File {
        path: PathBuf,
        name: String,
        source: io::Error,
    },
}

/// What the state file holds besides the deviation set. Field numbers are
/// append-only: a new field gets a new number, old ones keep theirs.
#[derive(Clone, PartialEq, prost::Message)]
struct StateRecord {
    /// The local seq the next report gets.
    #[prost(uint64, tag = "1")]
    next_seq: u64,
    /// The last local seq of the last committed scan.
    #[prost(uint64, tag = "2")]
    committed_seq: u64,
    /// Added to local seqs on the wire.
    #[prost(uint64, tag = "3")]
    seq_offset: u64,
    /// Whether a collector has welcomed this state directory yet.
    #[prost(bool, tag = "4")]
    synced: bool,
    /// The next scan must be a snapshot.
    #[prost(bool, tag = "5")]
    snapshot_needed: bool,
    /// Reports dropped since the last snapshot, for its `dropped_reports`.
    #[prost(uint64, tag = "6")]
    pending_dropped: u64,
    /// The last committed scan's deviations.
    #[prost(message, repeated, tag = "7")]
    baseline: Vec<pb::Deviation>,
    /// Chosen at random when the state began; sent in Hello so the
    /// collector knows a new state (and sequence) from an old one.
    #[prost(uint64, tag = "8")]
    state_epoch: u64,
}

/// The counters of the state file, kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    next_seq: u64,
    committed_seq: u64,
    seq_offset: u64,
    synced: bool,
    snapshot_needed: bool,
    pending_dropped: u64,
    state_epoch: u64,
}

impl State {
    /// A state directory that never ran: seqs start at 1 (the collector's
    /// "nothing applied" is 0) and the first scan is a snapshot.
    fn fresh() -> State {
        State {
            next_seq: 1,
            committed_seq: 0,
            seq_offset: 0,
            synced: false,
            snapshot_needed: true,
            pending_dropped: 0,
            state_epoch: fastrand::u64(1..),
        }
    }
}

/// What the spool knows about one stored report.
#[derive(Debug, Clone, Copy)]
struct Stored {
    bytes: u64,
    changes: u64,
    /// Its `dropped_reports`: dropping it loses that count too, which then
    /// passes to the next snapshot.
    carried: u64,
    /// The first report of a snapshot: a gap may end here.
    snapshot_start: bool,
}

impl Stored {
    fn of(report: &pb::Report, bytes: u64, snapshot_start: bool) -> Stored {
        Stored {
            bytes,
            changes: report.changes.len() as u64,
            carried: report.dropped_reports,
            snapshot_start,
        }
    }
}

/// What opening the spool found, for the startup log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// No state file: a new agent (or a wiped state directory).
    pub fresh: bool,
    /// Why the state file could not be used, if it could not.
    pub state_unusable: Option<String>,
    /// Reports of a scan that was being spooled when the agent stopped.
    pub discarded_uncommitted: u64,
    /// Spool files that could not be read back; dropped and counted.
    pub corrupt: u64,
    pub pending_reports: usize,
    pub pending_bytes: u64,
}

/// Reports dropped to keep the spool within its bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub reports: u64,
    pub changes: u64,
    /// What the dropped reports themselves said was dropped before them.
    pub carried: u64,
}

/// A scan's reports, now durable and visible to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Wire seqs.
    pub first_seq: u64,
    pub last_seq: u64,
    pub reports: usize,
}

/// What the collector's Welcome meant for the spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Welcomed {
    /// Spooled reports the collector already had.
    pub removed: usize,
    /// How far the spool's seqs moved up because the collector had applied
    /// seqs this state directory never assigned.
    pub shifted_by: u64,
    /// The collector has less than it acknowledged before (it lost data):
    /// the next scan is a snapshot.
    pub collector_regressed: bool,
}

/// The spool as the rest of the agent sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStatus {
    /// Reports on disk, not yet acknowledged.
    pub pending_reports: usize,
    pub pending_bytes: u64,
    /// The wire seq of the last committed report; 0 before the first.
    pub committed_seq: u64,
}

/// The spool in a state directory, held open (and locked) while the agent
/// runs.
#[derive(Debug)]
pub struct Spool {
    /// For messages only: files are reached through the descriptors.
    path: PathBuf,
    dir: OwnedFd,
    reports: OwnedFd,
    /// Holding it holds the flock.
    _lock: OwnedFd,
    max_bytes: u64,
    state: State,
    /// The last committed scan's deviations: the next scan is diffed
    /// against it.
    baseline: DeviationSet,
    /// Committed, unacknowledged reports by local seq.
    index: BTreeMap<u64, Stored>,
    /// Their total size in bytes.
    bytes: u64,
    /// The highest wire seq the collector acknowledged while this agent
    /// ran: a later Welcome below it means the collector lost data.
    acked: u64,
}

impl Spool {
    /// Opens (creating if needed) the spool in `path` and recovers from
    /// whatever a previous run left: stale temporary files, reports of a
    /// scan that never committed, corrupt files.
    pub fn open(path: &Path, max_bytes: u64) -> Result<(Spool, Recovered), SpoolError> {
        let dir = open_state_dir(path)?;
        let lock = lock_state_dir(path, &dir)?;
        let reports = open_subdir(path, &dir, SPOOL_DIR)?;
        let file_err = |name: &str, source: io::Error| SpoolError::File {
            path: path.to_path_buf(),
            name: name.to_string(),
            source,
        };
        remove_temporaries(&dir).map_err(|e| file_err(".", e))?;
        remove_temporaries(&reports).map_err(|e| file_err(SPOOL_DIR, e))?;

        let mut recovered = Recovered::default();
        let (mut state, baseline) = match read_framed(&dir, STATE_FILE, STATE_MAGIC, MAX_STATE_FILE)
        {
            Ok(Some(body)) => match StateRecord::decode(&body[..]) {
                Ok(record) => (
                    State {
                        next_seq: record.next_seq.max(1),
                        committed_seq: record.committed_seq,
                        seq_offset: record.seq_offset,
                        synced: record.synced,
                        snapshot_needed: record.snapshot_needed,
                        pending_dropped: record.pending_dropped,
                        // A state from before epochs gets one now.
                        state_epoch: if record.state_epoch == 0 {
                            fastrand::u64(1..)
                        } else {
                            record.state_epoch
                        },
                    },
                    DeviationSet::from_wire(record.baseline),
                ),
                Err(e) => {
                    recovered.state_unusable = Some(format!("cannot decode: {e}"));
                    (State::fresh(), DeviationSet::default())
                }
            },
            Ok(None) => {
                recovered.fresh = true;
                (State::fresh(), DeviationSet::default())
            }
            Err(e) => {
                recovered.state_unusable = Some(e.to_string());
                (State::fresh(), DeviationSet::default())
            }
        };

        let files = list_reports(&reports).map_err(|e| file_err(SPOOL_DIR, e))?;
        if recovered.state_unusable.is_some() {
            // Which reports were committed is unknown: keep them all (the
            // snapshot that follows makes the collector consistent again)
            // and never reuse any of their seqs.
            let highest = files.keys().next_back().copied().unwrap_or(0);
            state.committed_seq = highest;
            state.next_seq = highest + 1;
        }
        state.next_seq = state.next_seq.max(state.committed_seq + 1);

        let mut readable = BTreeMap::new();
        let mut corrupt = Vec::new();
        for (seq, name) in files {
            if seq > state.committed_seq {
                // A scan interrupted while spooling: never sent, and the
                // next scan regenerates it.
                unlink(&reports, &name);
                recovered.discarded_uncommitted += 1;
                continue;
            }
            match read_report(&reports, &name, seq) {
                Ok((report, len)) => {
                    readable.insert(seq, (report, len));
                }
                Err(e) => {
                    error!(
                        file = %path.join(SPOOL_DIR).join(&name).display(),
                        error = %e,
                        "corrupt spool file: dropping it"
                    );
                    unlink(&reports, &name);
                    corrupt.push(seq);
                }
            }
        }
        recovered.corrupt = corrupt.len() as u64;
        // A scan's snapshot flag is in its last report; its first report
        // (seq == scan_id) is where a gap may end.
        let snapshot_scans: std::collections::HashSet<u64> = readable
            .values()
            .filter(|(r, _)| r.scan_end.is_some_and(|e| e.snapshot))
            .map(|(r, _)| r.scan_id)
            .collect();
        let mut index = BTreeMap::new();
        let mut bytes = 0u64;
        for (seq, (report, len)) in readable {
            let start = report.scan_id == seq && snapshot_scans.contains(&seq);
            index.insert(seq, Stored::of(&report, len, start));
            bytes += len;
        }
        if recovered.state_unusable.is_some() {
            state.snapshot_needed = true;
        }
        let mut spool = Spool {
            path: path.to_path_buf(),
            dir,
            reports,
            _lock: lock,
            max_bytes,
            state,
            baseline,
            index,
            bytes,
            acked: 0,
        };
        for seq in corrupt {
            // Its file is gone already; the diffs after it go too.
            let victims = spool.dependents_after(seq);
            let after = victims.last().copied().unwrap_or(seq);
            spool.account_drop(&victims, 1, after);
            for victim in victims {
                spool.forget(victim);
            }
        }
        // Persist what recovery decided, and a new state's epoch before any
        // Hello carries it.
        spool.write_state(&spool.state, &spool.baseline)?;
        recovered.pending_reports = spool.index.len();
        recovered.pending_bytes = spool.bytes;
        Ok((spool, recovered))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state's random epoch, for Hello: a new one tells the collector
    /// this host's sequence starts over.
    pub fn state_epoch(&self) -> u64 {
        self.state.state_epoch
    }

    /// Whether the next scan must be sent as a snapshot.
    pub fn snapshot_needed(&self) -> bool {
        self.state.snapshot_needed
    }

    /// Reports dropped since the last snapshot.
    pub fn pending_dropped(&self) -> u64 {
        self.state.pending_dropped
    }

    /// The last committed scan's deviations.
    pub fn baseline(&self) -> &DeviationSet {
        &self.baseline
    }

    pub fn status(&self) -> SpoolStatus {
        SpoolStatus {
            pending_reports: self.index.len(),
            pending_bytes: self.bytes,
            committed_seq: if self.state.committed_seq == 0 {
                0
            } else {
                self.wire(self.state.committed_seq)
            },
        }
    }

    fn wire(&self, local: u64) -> u64 {
        local + self.state.seq_offset
    }

    fn local(&self, wire: u64) -> u64 {
        wire.saturating_sub(self.state.seq_offset)
    }

    /// Gives a scan's reports their (local) seqs, in order, and the scan
    /// id: the seq of its first report, unique per host without another
    /// counter.
    pub fn number(&self, reports: &mut [pb::Report]) {
        let first = self.state.next_seq;
        for (i, report) in reports.iter_mut().enumerate() {
            report.seq = first + i as u64;
            report.scan_id = first;
        }
    }

    /// The bytes `reports` will take on disk.
    pub fn stored_len(reports: &[pb::Report]) -> u64 {
        reports
            .iter()
            .map(|r| (HEADER_LEN + r.encoded_len()) as u64)
            .sum()
    }

    /// Drops the oldest reports until `incoming` more bytes fit within the
    /// bound. The state records the drop first, so even a crash right
    /// after makes the next scan a snapshot.
    pub fn make_room(&mut self, incoming: u64) -> Result<Dropped, SpoolError> {
        let mut victims = Vec::new();
        let mut bytes = self.bytes;
        for (&seq, stored) in &self.index {
            if bytes.saturating_add(incoming) <= self.max_bytes {
                break;
            }
            victims.push(seq);
            bytes -= stored.bytes;
        }
        let Some(&last) = victims.last() else {
            return Ok(Dropped::default());
        };
        victims.extend(self.dependents_after(last));
        let after = *victims.last().expect("not empty");
        let mut next = self.state;
        let dropped = Self::count_drop(&self.index, &victims, 0, after, &mut next);
        self.write_state(&next, &self.baseline)?;
        self.state = next;
        for seq in victims {
            self.forget(seq);
        }
        Ok(dropped)
    }

    /// The reports after `seq` that are diffs against what is dropped with
    /// it: every one up to the next snapshot start.
    fn dependents_after(&self, seq: u64) -> Vec<u64> {
        self.index
            .range(seq + 1..)
            .take_while(|(_, stored)| !stored.snapshot_start)
            .map(|(&s, _)| s)
            .collect()
    }

    /// Counts dropping `victims` (in the index, ascending) and `unindexed`
    /// reports whose files are already gone, the highest seq of them all
    /// being `after`; records in `next` what the collector must be told.
    /// If a snapshot in the spool follows the gap, it marks the gap and
    /// nothing more is needed; otherwise the next scan is a snapshot that
    /// counts it.
    fn count_drop(
        index: &BTreeMap<u64, Stored>,
        victims: &[u64],
        unindexed: u64,
        after: u64,
        next: &mut State,
    ) -> Dropped {
        let mut dropped = Dropped {
            reports: victims.len() as u64 + unindexed,
            ..Dropped::default()
        };
        for seq in victims {
            let stored = index[seq];
            dropped.changes += stored.changes;
            dropped.carried += stored.carried;
        }
        if index.range(after + 1..).next().is_none() {
            next.snapshot_needed = true;
            next.pending_dropped += dropped.reports + dropped.carried;
        }
        dropped
    }

    /// [`Spool::count_drop`] on the spool's own state, for paths that have
    /// no caller to report a failed state write to: memory has it, and the
    /// next state write persists it.
    fn account_drop(&mut self, victims: &[u64], unindexed: u64, after: u64) -> Dropped {
        let mut next = self.state;
        let dropped = Self::count_drop(&self.index, victims, unindexed, after, &mut next);
        if next != self.state {
            self.state = next;
            if let Err(e) = self.write_state(&self.state, &self.baseline) {
                error!(error = %e, "cannot record dropped reports in the state file");
            }
        }
        dropped
    }

    /// Makes a scan's reports (numbered by [`Spool::number`]) durable and
    /// visible to the sender, and records `now` as the baseline for the
    /// next scan, all or nothing. `snapshot` says the reports are a
    /// snapshot that carries `dropped_included` in `dropped_reports`.
    pub fn commit_scan(
        &mut self,
        reports: &[pb::Report],
        now: DeviationSet,
        snapshot: bool,
        dropped_included: u64,
    ) -> Result<Committed, SpoolError> {
        let first = self.state.next_seq;
        let mut written: Vec<(u64, String, Stored)> = Vec::with_capacity(reports.len());
        for (i, report) in reports.iter().enumerate() {
            debug_assert_eq!(report.seq, first + i as u64, "reports not numbered");
            let name = report_name(report.seq);
            let body = frame(REPORT_MAGIC, &report.encode_to_vec());
            if let Err(source) = write_atomically(&self.reports, &name, &body) {
                self.discard(&written);
                return Err(self.file_error(&format!("{SPOOL_DIR}/{name}"), source));
            }
            let stored = Stored::of(report, body.len() as u64, snapshot && i == 0);
            written.push((report.seq, name, stored));
        }
        if let Err(source) = rustix::fs::fsync(&self.reports) {
            self.discard(&written);
            return Err(self.file_error(SPOOL_DIR, source.into()));
        }
        let last = first + reports.len().saturating_sub(1) as u64;
        let mut next = self.state;
        next.next_seq = last + 1;
        next.committed_seq = last;
        if snapshot {
            next.snapshot_needed = false;
            next.pending_dropped = next.pending_dropped.saturating_sub(dropped_included);
        }
        if let Err(e) = self.write_state(&next, &now) {
            self.discard(&written);
            return Err(e);
        }
        self.state = next;
        self.baseline = now;
        for (seq, _, stored) in written {
            self.index.insert(seq, stored);
            self.bytes += stored.bytes;
        }
        Ok(Committed {
            first_seq: self.wire(first),
            last_seq: self.wire(last),
            reports: reports.len(),
        })
    }

    /// The first committed report after wire seq `cursor`, with its wire
    /// seq. A file that cannot be read back is dropped, logged and counted
    /// (the next scan is a snapshot), and the one after it is returned.
    pub fn read_after(&mut self, cursor: u64) -> Option<pb::Report> {
        loop {
            let after = self.local(cursor);
            let (&seq, _) = self.index.range(after + 1..).next()?;
            let name = report_name(seq);
            match read_report(&self.reports, &name, seq) {
                Ok((mut report, _)) => {
                    report.seq = self.wire(report.seq);
                    report.scan_id = self.wire(report.scan_id);
                    return Some(report);
                }
                Err(e) => {
                    let mut victims = vec![seq];
                    victims.extend(self.dependents_after(seq));
                    let after = *victims.last().expect("not empty");
                    let dropped = self.account_drop(&victims, 0, after);
                    error!(
                        file = %self.path.join(SPOOL_DIR).join(&name).display(),
                        error = %e,
                        dropped_reports = dropped.reports,
                        dropped_changes = dropped.changes,
                        "corrupt spool file: dropped it and the diffs that depend on it"
                    );
                    for victim in victims {
                        self.forget(victim);
                    }
                }
            }
        }
    }

    /// The collector has durably applied every report up to wire seq
    /// `seq`: they leave the spool. Returns how many did.
    pub fn ack(&mut self, seq: u64) -> usize {
        self.acked = self.acked.max(seq);
        self.remove_through(seq)
    }

    fn remove_through(&mut self, wire_seq: u64) -> usize {
        if wire_seq < self.state.seq_offset {
            return 0;
        }
        let through = self.local(wire_seq);
        let done: Vec<u64> = self.index.range(..=through).map(|(&s, _)| s).collect();
        for &seq in &done {
            self.forget(seq);
        }
        done.len()
    }

    /// The collector's Welcome: it has applied every report of this host up
    /// to wire seq `last_applied`.
    pub fn welcome(&mut self, last_applied: u64) -> Result<Welcomed, SpoolError> {
        // The collector stores seqs as signed 64-bit numbers; anything above
        // that is not a real answer, and the offset arithmetic below must
        // not wrap on it.
        if last_applied > i64::MAX as u64 {
            return Err(SpoolError::ImplausibleWelcome(last_applied));
        }
        let mut outcome = Welcomed::default();
        let mut next = self.state;
        let next_wire = self.wire(self.state.next_seq);
        let ahead = last_applied >= next_wire;
        if !self.state.synced || ahead {
            // The collector's seqs up to `last_applied` are not ours: a wiped
            // state directory, or another agent with this host id. Move the
            // spool above them so nothing of ours looks already applied.
            let first_unacked = self
                .index
                .keys()
                .next()
                .copied()
                .unwrap_or(self.state.next_seq);
            let first_wire = self.wire(first_unacked);
            if last_applied >= first_wire {
                outcome.shifted_by = last_applied + 1 - first_wire;
                next.seq_offset = next
                    .seq_offset
                    .checked_add(outcome.shifted_by)
                    .ok_or(SpoolError::ImplausibleWelcome(last_applied))?;
            }
            if self.state.synced {
                // Whatever it holds came from someone else.
                next.snapshot_needed = true;
            }
        } else if last_applied < self.acked {
            outcome.collector_regressed = true;
            next.snapshot_needed = true;
        }
        next.synced = true;
        if next != self.state {
            self.write_state(&next, &self.baseline)?;
            self.state = next;
        }
        self.acked = last_applied;
        outcome.removed = self.remove_through(last_applied);
        Ok(outcome)
    }

    /// Removes a report from the index and the disk. A file that cannot be
    /// unlinked is sent again after a restart, which the collector
    /// tolerates.
    fn forget(&mut self, seq: u64) {
        if let Some(stored) = self.index.remove(&seq) {
            self.bytes -= stored.bytes;
            unlink(&self.reports, &report_name(seq));
        }
    }

    /// Removes the files of a scan that failed to commit.
    fn discard(&self, written: &[(u64, String, Stored)]) {
        for (_, name, _) in written {
            unlink(&self.reports, name);
        }
    }

    fn write_state(&self, state: &State, baseline: &DeviationSet) -> Result<(), SpoolError> {
        let record = StateRecord {
            next_seq: state.next_seq,
            committed_seq: state.committed_seq,
            seq_offset: state.seq_offset,
            synced: state.synced,
            snapshot_needed: state.snapshot_needed,
            pending_dropped: state.pending_dropped,
            baseline: Vec::new(),
            state_epoch: state.state_epoch,
        };
        let mut body = record.encode_to_vec();
        // Appended field by field, which protobuf decodes as one repeated
        // field, so the set is never copied.
        for d in baseline.iter() {
            prost::encoding::message::encode(7, d, &mut body);
        }
        write_atomically(&self.dir, STATE_FILE, &frame(STATE_MAGIC, &body))
            .map_err(|source| self.file_error(STATE_FILE, source))?;
        if let Err(e) = rustix::fs::fsync(&self.dir) {
            // The rename happened: the new state is the one every reader
            // sees. Only its durability across a power cut is in doubt, and
            // recovery handles either version.
            warn!(dir = %self.path.display(), error = %io::Error::from(e), "cannot fsync the state directory");
        }
        Ok(())
    }

    fn file_error(&self, name: &str, source: io::Error) -> SpoolError {
        SpoolError::File {
            path: self.path.clone(),
            name: name.to_string(),
            source,
        }
    }
}

fn report_name(seq: u64) -> String {
    format!("{seq:020}{REPORT_SUFFIX}")
}

fn parse_report_name(name: &[u8]) -> Option<u64> {
    let digits = name.strip_suffix(REPORT_SUFFIX.as_bytes())?;
    if digits.len() != 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Creates the state directory (0700) if needed and opens it, never
/// through a symlink. An existing one must be ours; it is tightened to
/// 0700 since spooled reports describe the host's weaknesses.
fn open_state_dir(path: &Path) -> Result<OwnedFd, SpoolError> {
    let dir_err = |source: io::Error| SpoolError::Dir {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(dir_err)?;
    }
    match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(dir_err(e.into())),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(dir) => dir,
        // With O_DIRECTORY, a symlink fails as "not a directory".
        Err(Errno::LOOP | Errno::NOTDIR)
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            return Err(SpoolError::DirIsSymlink(path.to_path_buf()));
        }
        Err(e) => return Err(dir_err(e.into())),
    };
    let st = rustix::fs::fstat(&dir).map_err(|e| dir_err(e.into()))?;
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(SpoolError::DirNotOwned {
            path: path.to_path_buf(),
            owner: st.st_uid,
            me,
        });
    }
    if st.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o700)).map_err(|e| dir_err(e.into()))?;
    }
    Ok(dir)
}

/// Takes the state directory's lock: two agents sharing a spool would hand
/// out the same seqs.
fn lock_state_dir(path: &Path, dir: &OwnedFd) -> Result<OwnedFd, SpoolError> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let lock =
        rustix::fs::openat(dir, LOCK_FILE, flags, Mode::from_raw_mode(0o600)).map_err(|e| {
            SpoolError::File {
                path: path.to_path_buf(),
                name: LOCK_FILE.into(),
                source: e.into(),
            }
        })?;
    match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(lock),
        Err(Errno::WOULDBLOCK) => Err(SpoolError::Locked(path.to_path_buf())),
        Err(e) => Err(SpoolError::File {
            path: path.to_path_buf(),
            name: LOCK_FILE.into(),
            source: e.into(),
        }),
    }
}

fn open_subdir(path: &Path, dir: &OwnedFd, name: &str) -> Result<OwnedFd, SpoolError> {
    let err = |source: io::Error| SpoolError::File {
        path: path.to_path_buf(),
        name: name.to_string(),
        source,
    };
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => rustix::fs::fsync(dir).map_err(|e| err(e.into()))?,
        Err(Errno::EXIST) => {}
        Err(e) => return Err(err(e.into())),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => err(io::Error::other(
            "not a directory (a symlink is never followed here)",
        )),
        e => err(e.into()),
    })
}

fn names_in(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Temporary files are only ever half-written leftovers of a crash.
fn remove_temporaries(dir: &OwnedFd) -> io::Result<()> {
    for name in names_in(dir)? {
        if name.starts_with(TMP_PREFIX.as_bytes()) {
            let _ = rustix::fs::unlinkat(dir, name.as_slice(), AtFlags::empty());
        }
    }
    Ok(())
}

/// The spool's report files by seq; other names are left alone.
fn list_reports(dir: &OwnedFd) -> io::Result<BTreeMap<u64, String>> {
    Ok(names_in(dir)?
        .into_iter()
        .filter_map(|name| {
            let seq = parse_report_name(&name)?;
            Some((seq, String::from_utf8(name).ok()?))
        })
        .collect())
}

fn unlink(dir: &OwnedFd, name: &str) {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => warn!(file = name, error = %io::Error::from(e), "cannot delete spool file"),
    }
}

/// Writes `name` in `dir` so that a crash leaves the old file or the new
/// one: a temporary file (created `O_EXCL`, so nothing planted there is
/// followed or reused), fsynced, then renamed over `name` (which replaces
/// a symlink there rather than following it). The caller fsyncs `dir`.
fn write_atomically(dir: &OwnedFd, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = format!("{TMP_PREFIX}{name}");
    match rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let result = (|| {
        let fd = rustix::fs::openat(dir, tmp.as_str(), flags, Mode::from_raw_mode(0o600))?;
        let mut file = File::from(fd);
        file.write_all(bytes)?;
        file.sync_all()?;
        rustix::fs::renameat(dir, tmp.as_str(), dir, name)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
    result
}

fn frame(magic: [u8; 8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Why a spool file could not be used.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a regular file (a symlink is never followed here)")]
    NotRegular,
    #[error("{0} bytes, more than any file driftwatch writes")]
    TooLarge(u64),
    #[error("truncated or not a driftwatch spool file")]
    BadMagic,
    #[error("format version {0}, newer than this agent's {FORMAT_VERSION}")]
    Version(u32),
    #[error("checksum mismatch (corrupted on disk)")]
    Checksum,
    #[error("cannot decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("holds seq {inside}, but its name says {named}")]
    SeqMismatch { named: u64, inside: u64 },
}

/// Reads a framed file's body; `None` when there is no such file.
fn read_framed(
    dir: &OwnedFd,
    name: &str,
    magic: [u8; 8],
    max: u64,
) -> Result<Option<Vec<u8>>, Unreadable> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => return Err(Unreadable::NotRegular),
        Err(e) => return Err(Unreadable::Io(e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Unreadable::NotRegular);
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size > max {
        return Err(Unreadable::TooLarge(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    File::from(fd).take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() < HEADER_LEN || bytes[..8] != magic {
        return Err(Unreadable::BadMagic);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(Unreadable::Version(version));
    }
    let body = bytes.split_off(HEADER_LEN);
    if blake3::hash(&body).as_bytes()[..] != bytes[12..HEADER_LEN] {
        return Err(Unreadable::Checksum);
    }
    Ok(Some(body))
}

/// Reads a spooled report and its size on disk.
fn read_report(dir: &OwnedFd, name: &str, seq: u64) -> Result<(pb::Report, u64), Unreadable> {
    let body = read_framed(dir, name, REPORT_MAGIC, MAX_REPORT_FILE)?
        .ok_or_else(|| Unreadable::Io(io::ErrorKind::NotFound.into()))?;
    let report = pb::Report::decode(&body[..])?;
    if report.seq != seq {
        return Err(Unreadable::SeqMismatch {
            named: seq,
            inside: report.seq,
        });
    }
    Ok((report, (HEADER_LEN + body.len()) as u64))
}

/// The spool shared by the scan loop and the session: every operation
/// runs on a blocking thread (they fsync) under one lock, so a scan's
/// commit is never seen half done, and each publishes the spool's new
/// [`SpoolStatus`] for whoever waits on it.
#[derive(Debug, Clone)]
pub struct SharedSpool {
    spool: Arc<Mutex<Spool>>,
    status: watch::Sender<SpoolStatus>,
}

impl SharedSpool {
    pub fn new(spool: Spool) -> SharedSpool {
        let (status, _) = watch::channel(spool.status());
        SharedSpool {
            spool: Arc::new(Mutex::new(spool)),
            status,
        }
    }

    /// Runs `f` on the spool on a blocking thread.
    pub async fn with<T, F>(&self, f: F) -> T
    where
        F: FnOnce(&mut Spool) -> T + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut spool = this.spool.lock().unwrap_or_else(PoisonError::into_inner);
            let out = f(&mut spool);
            this.status.send_replace(spool.status());
            out
        });
        match task.await {
            Ok(out) => out,
            // A bug: let it surface as the panic it was.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime is already shutting down, which drops
            // this caller too.
            Err(e) => panic!("spool operation did not run: {e}"),
        }
    }

    /// Closes the spool (releasing the state directory's lock) once no
    /// operation holds it any more, waiting at most `grace` for the last
    /// ones (a blocking operation cannot be interrupted).
    pub async fn close(self, grace: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let mut spool = self.spool;
        loop {
            match Arc::try_unwrap(spool) {
                Ok(last) => {
                    drop(last);
                    return;
                }
                Err(shared) if tokio::time::Instant::now() < deadline => {
                    spool = shared;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(_) => return,
            }
        }
    }

    /// Follows the spool's status: committed seq and what is pending.
    pub fn subscribe(&self) -> watch::Receiver<SpoolStatus> {
        self.status.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::deviation_change::Change;

    fn dev(path: &str) -> pb::Deviation {
        pb::Deviation {
            kind: "added".into(),
            subject: Some(pb::deviation::Subject::Path(path.as_bytes().to_vec())),
            expected: None,
            actual: Some(pb::Attrs {
                size: Some(1),
                ..Default::default()
            }),
        }
    }

    fn scan_reports(spool: &Spool, changes: usize, per_report: usize) -> Vec<pb::Report> {
        let mut reports: Vec<pb::Report> = (0..changes)
            .collect::<Vec<_>>()
            .chunks(per_report)
            .map(|chunk| pb::Report {
                changes: chunk
                    .iter()
                    .map(|i| pb::DeviationChange {
                        change: Change::New as i32,
                        deviation: Some(dev(&format!("f{i}"))),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        if reports.is_empty() {
            reports.push(pb::Report::default());
        }
        reports.last_mut().unwrap().scan_end = Some(pb::ScanEnd::default());
        spool.number(&mut reports);
        reports
    }

    fn commit(spool: &mut Spool, changes: usize, per_report: usize) -> Committed {
        let mut reports = scan_reports(spool, changes, per_report);
        let snapshot = spool.snapshot_needed();
        let dropped = if snapshot { spool.pending_dropped() } else { 0 };
        reports[0].dropped_reports = dropped;
        spool
            .commit_scan(
                &reports,
                DeviationSet::from_wire([dev("baseline")]),
                snapshot,
                dropped,
            )
            .unwrap()
    }

    fn drain(spool: &mut Spool) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut cursor = 0;
        while let Some(report) = spool.read_after(cursor) {
            cursor = report.seq;
            seqs.push(report.seq);
        }
        seqs
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(SPOOL_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn reports_are_numbered_in_order_survive_restarts_and_leave_on_ack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        {
            let (mut spool, recovered) = Spool::open(&path, u64::MAX).unwrap();
            assert!(recovered.fresh);
            assert!(spool.snapshot_needed());
            let first = commit(&mut spool, 2500, 1000);
            assert_eq!((first.first_seq, first.last_seq), (1, 3));
            // The first scan was a snapshot; the next is a diff.
            assert!(!spool.snapshot_needed());
            let second = commit(&mut spool, 0, 1000);
            assert_eq!((second.first_seq, second.last_seq), (4, 4));
            assert_eq!(drain(&mut spool), [1, 2, 3, 4]);
            let report = spool.read_after(3).unwrap();
            assert_eq!((report.seq, report.scan_id), (4, 4));
            assert_eq!(spool.read_after(1).unwrap().scan_id, 1);
        }
        let mode = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
        let (mut spool, recovered) = Spool::open(&path, u64::MAX).unwrap();
        assert!(!recovered.fresh);
        assert_eq!(recovered.pending_reports, 4);
        assert_eq!(spool.baseline().len(), 1);
        assert_eq!(spool.ack(2), 2);
        assert_eq!(drain(&mut spool), [3, 4]);
        assert_eq!(
            files(&path),
            ["00000000000000000003.report", "00000000000000000004.report"]
        );
        // Seqs keep increasing after a restart.
        drop(spool);
        let (mut spool, _) = Spool::open(&path, u64::MAX).unwrap();
        assert_eq!(commit(&mut spool, 1, 1000).first_seq, 5);
    }

    #[test]
    fn one_agent_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Spool::open(dir.path(), u64::MAX).unwrap();
        assert!(matches!(
            Spool::open(dir.path(), u64::MAX),
            Err(SpoolError::Locked(_))
        ));
    }

    #[test]
    fn a_scan_interrupted_while_spooling_is_discarded_and_its_seqs_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        {
            let (mut spool, _) = Spool::open(path, u64::MAX).unwrap();
            commit(&mut spool, 1, 1000);
            // A crash in the middle of the next scan: two of its reports
            // reached the disk, a third was half written, the state was not
            // updated.
            let reports = scan_reports(&spool, 3000, 1000);
            for report in &reports[..2] {
                let body = frame(REPORT_MAGIC, &report.encode_to_vec());
                write_atomically(&spool.reports, &report_name(report.seq), &body).unwrap();
            }
            std::fs::write(
                path.join(SPOOL_DIR)
                    .join(".tmp.00000000000000000004.report"),
                b"half",
            )
            .unwrap();
        }
        let (mut spool, recovered) = Spool::open(path, u64::MAX).unwrap();
        assert_eq!(recovered.discarded_uncommitted, 2);
        assert_eq!(recovered.corrupt, 0);
        assert_eq!(recovered.pending_reports, 1);
        assert_eq!(files(path), ["00000000000000000001.report"]);
        // No snapshot is needed: nothing uncommitted was ever sent.
        assert!(!spool.snapshot_needed());
        assert_eq!(drain(&mut spool), [1]);
        // The regenerated scan takes the same seqs.
        let again = commit(&mut spool, 3000, 1000);
        assert_eq!((again.first_seq, again.last_seq), (2, 4));
        assert_eq!(drain(&mut spool), [1, 2, 3, 4]);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_asks_for_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), u64::MAX).unwrap();
        // A snapshot (the first scan), then diffs against it.
        for _ in 0..5 {
            commit(&mut spool, 10, 1000);
        }
        let one = spool.bytes / 5;
        spool.max_bytes = one * 5 + one / 2;
        let incoming = Spool::stored_len(&scan_reports(&spool, 10, 1000));
        let dropped = spool.make_room(incoming * 2).unwrap();
        // Two would have made room, but the diffs after them describe
        // changes since scans the collector will never see: they go too.
        assert_eq!(
            dropped,
            Dropped {
                reports: 5,
                changes: 50,
                carried: 0,
            }
        );
        assert!(spool.snapshot_needed());
        assert_eq!(spool.pending_dropped(), 5);
        assert_eq!(drain(&mut spool), Vec::<u64>::new());
        // Recorded before the files went: a restart still knows.
        drop(spool);
        let (mut spool, _) = Spool::open(dir.path(), one * 5 + one / 2).unwrap();
        assert!(spool.snapshot_needed());
        assert_eq!(spool.pending_dropped(), 5);
        // The snapshot that carries the count clears it.
        assert_eq!(commit(&mut spool, 10, 1000).first_seq, 6);
        assert!(!spool.snapshot_needed());
        assert_eq!(spool.pending_dropped(), 0);
        assert_eq!(spool.read_after(0).unwrap().dropped_reports, 5);
        commit(&mut spool, 10, 1000);
        commit(&mut spool, 10, 1000);
        // A second snapshot in the spool (as after a collector that lost
        // data), and a diff after it.
        spool.state.snapshot_needed = true;
        commit(&mut spool, 10, 1000);
        commit(&mut spool, 10, 1000);
        assert_eq!(drain(&mut spool), [6, 7, 8, 9, 10]);
        // Dropping the oldest stops at that snapshot, which the collector
        // gets right after the gap: no new snapshot is needed.
        spool.max_bytes = spool.bytes;
        let dropped = spool.make_room(1).unwrap();
        assert_eq!((dropped.reports, dropped.carried), (3, 5));
        assert!(!spool.snapshot_needed());
        assert_eq!(drain(&mut spool), [9, 10]);
        // Dropping everything: the next snapshot counts what went.
        spool.max_bytes = 1;
        assert_eq!(spool.make_room(10).unwrap().reports, 2);
        assert!(spool.snapshot_needed());
        assert_eq!(spool.pending_dropped(), 2);
        // Nothing left to drop: a scan larger than the bound is kept whole.
        assert_eq!(spool.make_room(10).unwrap(), Dropped::default());
    }

    #[test]
    fn corrupt_files_are_dropped_counted_and_never_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        {
            let (mut spool, _) = Spool::open(path, u64::MAX).unwrap();
            for _ in 0..4 {
                commit(&mut spool, 3, 1000);
            }
        }
        let spool_dir = path.join(SPOOL_DIR);
        // A flipped byte, a truncation, a symlink where a report was.
        let second = spool_dir.join(report_name(2));
        let mut bytes = std::fs::read(&second).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&second, bytes).unwrap();
        let third = spool_dir.join(report_name(3));
        let len = std::fs::metadata(&third).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&third)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        std::fs::remove_file(spool_dir.join(report_name(4))).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", spool_dir.join(report_name(4))).unwrap();
        let (mut spool, recovered) = Spool::open(path, u64::MAX).unwrap();
        assert_eq!(recovered.corrupt, 3);
        assert!(spool.snapshot_needed());
        assert_eq!(spool.pending_dropped(), 3);
        assert_eq!(drain(&mut spool), [1]);
        assert!(std::fs::read_to_string("/etc/passwd").is_ok());

        // Corrupted after opening: found when it is read for sending. The
        // diff after it depends on it and goes too; the next snapshot
        // counts the whole gap after seq 1.
        commit(&mut spool, 1, 1000);
        commit(&mut spool, 1, 1000);
        std::fs::write(spool_dir.join(report_name(5)), b"garbage").unwrap();
        assert_eq!(drain(&mut spool), [1]);
        assert!(spool.snapshot_needed());
        assert_eq!(spool.pending_dropped(), 5);
        assert_eq!(commit(&mut spool, 1, 1000).first_seq, 7);
        assert_eq!(spool.read_after(1).unwrap().dropped_reports, 5);
    }

    #[test]
    fn a_corrupt_state_file_keeps_every_report_and_reuses_no_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        {
            let (mut spool, _) = Spool::open(path, u64::MAX).unwrap();
            commit(&mut spool, 1, 1000);
            commit(&mut spool, 1, 1000);
        }
        std::fs::write(path.join(STATE_FILE), b"\x89DWST\r\n\x1a garbage").unwrap();
        let (mut spool, recovered) = Spool::open(path, u64::MAX).unwrap();
        assert!(recovered.state_unusable.is_some());
        assert!(spool.snapshot_needed());
        assert_eq!(drain(&mut spool), [1, 2]);
        assert_eq!(commit(&mut spool, 1, 1000).first_seq, 3);
    }

    #[test]
    fn symlinks_in_the_state_directory_are_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        {
            let (mut spool, _) = Spool::open(&path, u64::MAX).unwrap();
            commit(&mut spool, 1, 1000);
        }
        std::fs::remove_file(path.join(STATE_FILE)).unwrap();
        std::os::unix::fs::symlink(&victim, path.join(STATE_FILE)).unwrap();
        std::os::unix::fs::symlink(&victim, path.join(SPOOL_DIR).join(".tmp.state")).unwrap();
        std::os::unix::fs::symlink(&victim, path.join(SPOOL_DIR).join(report_name(2))).unwrap();
        let (mut spool, recovered) = Spool::open(&path, u64::MAX).unwrap();
        assert!(recovered.state_unusable.is_some());
        commit(&mut spool, 1, 1000);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(
            !std::fs::symlink_metadata(path.join(STATE_FILE))
                .unwrap()
                .file_type()
                .is_symlink()
        );

        // The state directory itself as a symlink is refused.
        drop(spool);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let refused = Spool::open(&link, u64::MAX);
        assert!(
            matches!(refused, Err(SpoolError::DirIsSymlink(_))),
            "{refused:?}"
        );
    }

    #[test]
    fn an_implausible_welcome_is_refused_without_touching_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), u64::MAX).unwrap();
        commit(&mut spool, 1, 1000);
        assert!(matches!(
            spool.welcome(u64::MAX),
            Err(SpoolError::ImplausibleWelcome(u64::MAX))
        ));
        // A real collector afterwards: our report is still ours to send.
        let w = spool.welcome(0).unwrap();
        assert_eq!((w.shifted_by, w.removed), (0, 0));
    }

    #[test]
    fn welcome_drops_what_the_collector_has_and_moves_above_foreign_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), u64::MAX).unwrap();
        commit(&mut spool, 1, 1000);
        commit(&mut spool, 1, 1000);
        // A fresh state directory meets a collector that knows this host
        // up to seq 500: our 1 and 2 become 501 and 502.
        let w = spool.welcome(500).unwrap();
        assert_eq!(w.shifted_by, 500);
        assert_eq!(w.removed, 0);
        assert_eq!(drain(&mut spool), [501, 502]);
        assert_eq!(spool.read_after(501).unwrap().scan_id, 502);
        assert_eq!(commit(&mut spool, 1, 1000).first_seq, 503);
        // Acks are in wire seqs.
        assert_eq!(spool.ack(501), 1);
        // A reconnect: the collector applied 502 but its ack was lost.
        let w = spool.welcome(502).unwrap();
        assert_eq!(
            (w.shifted_by, w.removed, w.collector_regressed),
            (0, 1, false)
        );
        assert_eq!(drain(&mut spool), [503]);
        // The offset is durable.
        drop(spool);
        let (mut spool, _) = Spool::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(drain(&mut spool), [503]);
        assert!(!spool.snapshot_needed());
        // A collector that lost what it acknowledged: snapshot next.
        spool.ack(503);
        let w = spool.welcome(400).unwrap();
        assert!(w.collector_regressed);
        assert!(spool.snapshot_needed());
    }

    #[test]
    fn a_new_host_keeps_its_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), u64::MAX).unwrap();
        commit(&mut spool, 1, 1000);
        let w = spool.welcome(0).unwrap();
        assert_eq!(w, Welcomed::default());
        assert_eq!(drain(&mut spool), [1]);
    }
}
