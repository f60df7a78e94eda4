//! The counters and state every store keeps for metrics and `weftd status`.

use super::error::StoreError;
use crate::core::lease::LeaseError;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

/// Counters and state every store keeps for metrics and `weftd status`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// The store answered last time it was asked.
    pub connected: AtomicBool,
    /// Lease additions and changes applied.
    pub events_added: AtomicU64,
    /// Lease removals applied.
    pub events_removed: AtomicU64,
    /// Complete lists received.
    pub snapshots: AtomicU64,
    /// Own lease renewals.
    pub renewals: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    bad_records: Mutex<BTreeMap<&'static str, u64>>,
    last_event: Mutex<Option<SystemTime>>,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`StoreStats`] for display.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStatsSnapshot {
    /// The store answered last time it was asked.
    pub connected: bool,
    /// Lease additions and changes applied.
    pub events_added: u64,
    /// Lease removals applied.
    pub events_removed: u64,
    /// Complete lists received.
    pub snapshots: u64,
    /// Own lease renewals.
    pub renewals: u64,
    /// Errors by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Records skipped, by kind.
    pub bad_records: BTreeMap<&'static str, u64>,
    /// Seconds since the Unix epoch.
    pub last_event: Option<u64>,
    /// The last error, until the store answers again.
    pub last_error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StoreStats {
    /// Counts an error and keeps its message.
    pub fn error(&self, error: &StoreError) {
        *lock(&self.errors).entry(error.kind()).or_default() += 1;
        *lock(&self.last_error) = Some(error.to_string());
    }

    /// Counts a record skipped.
    pub fn bad_record(&self, error: &LeaseError) {
        self.bad_record_kind(error.kind());
    }

    /// Counts a skipped record under `kind` (stores whose records are not lease JSON).
    pub fn bad_record_kind(&self, kind: &'static str) {
        *lock(&self.bad_records).entry(kind).or_default() += 1;
    }

    /// Records whether the store answers (and forgets the last error when it does).
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Relaxed);
        if connected {
            *lock(&self.last_error) = None;
        }
    }

    /// Records when the last change arrived.
    pub fn event(&self, now: SystemTime) {
        *lock(&self.last_event) = Some(now);
    }

    /// A copy for display.
    pub fn snapshot(&self) -> StoreStatsSnapshot {
        StoreStatsSnapshot {
            connected: self.connected.load(Relaxed),
            events_added: self.events_added.load(Relaxed),
            events_removed: self.events_removed.load(Relaxed),
            snapshots: self.snapshots.load(Relaxed),
            renewals: self.renewals.load(Relaxed),
            errors: lock(&self.errors).clone(),
            bad_records: lock(&self.bad_records).clone(),
            last_event: lock(&self.last_event)
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            last_error: lock(&self.last_error).clone(),
        }
    }
}
