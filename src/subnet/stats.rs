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
    pub connected: AtomicBool,
    pub events_added: AtomicU64,
    pub events_removed: AtomicU64,
    pub snapshots: AtomicU64,
    pub renewals: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    bad_records: Mutex<BTreeMap<&'static str, u64>>,
    last_event: Mutex<Option<SystemTime>>,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`StoreStats`] for display.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStatsSnapshot {
    pub connected: bool,
    pub events_added: u64,
    pub events_removed: u64,
    pub snapshots: u64,
    pub renewals: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub bad_records: BTreeMap<&'static str, u64>,
    /// Seconds since the Unix epoch.
    pub last_event: Option<u64>,
    pub last_error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StoreStats {
    pub fn error(&self, error: &StoreError) {
        *lock(&self.errors).entry(error.kind()).or_default() += 1;
        *lock(&self.last_error) = Some(error.to_string());
    }

    pub fn bad_record(&self, error: &LeaseError) {
        self.bad_record_kind(error.kind());
    }

    /// Counts a skipped record under `kind` (stores whose records are not lease JSON).
    pub fn bad_record_kind(&self, kind: &'static str) {
        *lock(&self.bad_records).entry(kind).or_default() += 1;
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Relaxed);
        if connected {
            *lock(&self.last_error) = None;
        }
    }

    pub fn event(&self, now: SystemTime) {
        *lock(&self.last_event) = Some(now);
    }

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
