//! The embedded lease store: one directory shared by every agent on a
//! machine (a netns lab, a single-host test bed).
//!
//! Each lease is a file named like flannel's etcd key (`10.244.3.0-24`)
//! holding flannel's lease JSON with one more member, `"Expiration"` (RFC
//! 3339), so the file still reads as a flannel lease. Writers take an
//! exclusive `flock` on `<dir>/.lock` to claim or renew, and write through a
//! temporary file and `rename`, so readers never see half a lease and two
//! agents never claim the same subnet. Agents watch the directory with
//! inotify and read it again as soon as a lease file is written, renamed into
//! place or removed (an operator deleting a file too), so a change reaches
//! the dataplane within milliseconds, as with etcd's watch; they also read it
//! every 200 ms, which catches expiries, and is all they do where inotify is
//! not available. A scan that differs from the last one is handed to the
//! agent as a snapshot, and the agent's lease watcher works out what changed.

use super::contract::{
    AcquireRequest, OwnAddress, RenewPolicy, StoreUpdate, UpdateSender, renew_at,
};
use super::error::StoreError;
use super::stats::StoreStats;
use crate::core::allocate::{self, Held};
use crate::core::config::NetConfig;
use crate::core::lease::{
    Lease, LeaseAttrs, LeaseError, MAX_RECORD_BYTES, SubnetKey, parse_subnet_key, subnet_key,
};
use crate::core::log_budget::LogBudget;
use crate::dataplane::sys::{InotifyFd, register};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;

/// How often the directory is read for changes without being told of one.
const POLL: Duration = Duration::from_millis(200);
/// flannel's lease lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The directory store.
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    net_config_path: PathBuf,
    ttl: Duration,
    stats: Arc<StoreStats>,
}

/// The valid leases in the directory, and the records that are not.
#[derive(Debug, Default)]
struct Scan {
    leases: BTreeMap<String, Lease>,
    bad: Vec<(String, LeaseError)>,
}

impl LocalStore {
    /// Opens (creating) the store directory.
    pub fn open(
        dir: &Path,
        net_config_path: &Path,
        ttl: Duration,
        stats: Arc<StoreStats>,
    ) -> Result<LocalStore, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            what: format!("cannot create the lease directory {}", dir.display()),
            source,
        })?;
        Ok(LocalStore {
            dir: dir.to_owned(),
            net_config_path: net_config_path.to_owned(),
            ttl,
            stats,
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads and checks `net-conf.json`.
    pub async fn network_config(&self) -> Result<NetConfig, StoreError> {
        let path = self.net_config_path.clone();
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|source| StoreError::Io {
                what: format!("failed to read net conf {}", path.display()),
                source,
            })?;
        NetConfig::parse_and_check(&text).map_err(|error| StoreError::ConfigInvalid {
            source_name: path.display().to_string(),
            error,
        })
    }

    /// The lease this public IP held before, if it is still in the store.
    pub async fn find_own(
        &self,
        own: OwnAddress,
        now: SystemTime,
    ) -> Result<Option<Lease>, StoreError> {
        let dir = self.dir.clone();
        let scan = blocking(move || scan(&dir, now)).await?;
        Ok(scan.leases.into_values().find(|l| own.owns(l)))
    }

    /// Acquires a lease with flannel's rules ([`allocate::plan`]), under the
    /// directory lock, so a claimed subnet is never claimed twice.
    pub async fn acquire(
        &self,
        config: &NetConfig,
        req: &AcquireRequest,
        now: SystemTime,
    ) -> Result<Lease, StoreError> {
        req.check(config)?;
        let dir = self.dir.clone();
        let config = config.clone();
        let req = req.clone();
        let ttl = self.ttl;
        blocking(move || {
            let _lock = DirLock::take(&dir)?;
            let scan = scan(&dir, now)?;
            let held: Vec<Held> = scan
                .leases
                .values()
                .map(|l| Held::of(l, l.expiration.is_none()))
                .collect();
            let unusable: Vec<SubnetKey> = scan
                .bad
                .iter()
                .filter_map(|(name, _)| SubnetKey::parse(name).ok())
                .collect();
            let plan = allocate::plan(&config, &held, &unusable, &req.request(), &mut rand::rng())?;
            if let Some(old) = plan.delete {
                remove_record(&dir, &old.to_string())?;
            }
            // Under the lock a free subnet stays free: a claim cannot conflict.
            // The directory store's own leases always expire (a reused
            // reservation gets a TTL, as it always has here).
            let key = plan.claim.key();
            let lease = Lease {
                subnet: key.subnet,
                ipv6_subnet: key.ipv6_subnet,
                attrs: req.attrs.clone(),
                expiration: Some(now + ttl),
            };
            write_record(&dir, &lease)?;
            Ok(lease)
        })
        .await
    }

    /// Renews `lease` for another TTL; `Ok(None)` if its file is gone (revoked).
    pub async fn renew(&self, lease: &Lease, now: SystemTime) -> Result<Option<Lease>, StoreError> {
        let dir = self.dir.clone();
        let mut lease = lease.clone();
        let ttl = self.ttl;
        blocking(move || {
            let _lock = DirLock::take(&dir)?;
            let path = dir.join(lease.key());
            if !path.exists() {
                return Ok(None);
            }
            lease.expiration = Some(now + ttl);
            write_record(&dir, &lease)?;
            Ok(Some(lease))
        })
        .await
    }

    /// Watches the directory and renews `own`, sending updates until the receiver goes away.
    pub fn spawn(
        self: Arc<Self>,
        own: Lease,
        renew: RenewPolicy,
        tx: UpdateSender,
    ) -> JoinHandle<()> {
        tokio::spawn(async move { self.run(own, renew, tx).await })
    }

    async fn run(&self, mut own: Lease, renew: RenewPolicy, tx: UpdateSender) {
        let mut known: Option<BTreeMap<String, Lease>> = None;
        let mut reported_bad: BTreeSet<(String, String)> = BTreeSet::new();
        let mut bad_log = LogBudget::new(BAD_RECORDS_LOGGED, BAD_RECORD_LOG_WINDOW);
        let mut next_renewal = renew_at(own.expiration, renew.margin, SystemTime::now());
        let mut ticker = tokio::time::interval(POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changes = DirWatch::open(&self.dir);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = changes.changed() => {}
            }
            let now = SystemTime::now();
            if now >= next_renewal {
                match self.renew(&own, now).await {
                    Ok(Some(renewed)) => {
                        own = renewed;
                        self.stats
                            .renewals
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        next_renewal = renew_at(own.expiration, renew.margin, now);
                        if tx.send(StoreUpdate::Renewed(own.clone())).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "failed to renew the lease; retrying in {:?}", renew.retry);
                        self.stats.error(&e);
                        next_renewal = now + renew.retry;
                    }
                }
            }
            let dir = self.dir.clone();
            let scan = match blocking(move || scan(&dir, now)).await {
                Ok(scan) => {
                    self.stats.set_connected(true);
                    scan
                }
                Err(e) => {
                    self.stats.set_connected(false);
                    self.stats.error(&e);
                    tracing::warn!(error = %e, "cannot read the lease directory; keeping the last known leases");
                    continue;
                }
            };
            for (key, error) in &scan.bad {
                if reported_bad.insert((key.clone(), error.to_string())) {
                    self.stats.bad_record(error);
                    if bad_log.admit(std::time::Instant::now()) {
                        tracing::warn!(key = %key, error = %error, "skipping a bad lease record");
                    }
                }
            }
            if let Some(more) = bad_log.summary(std::time::Instant::now()) {
                tracing::warn!(
                    more,
                    "skipped more bad lease records than are logged one by one; see store_stats.bad_records in weftd status"
                );
            }
            // A set, not a scan per key: a directory of 100 000 junk files
            // must not make this quadratic.
            let bad_now: BTreeSet<&str> = scan.bad.iter().map(|(k, _)| k.as_str()).collect();
            reported_bad.retain(|(key, _)| bad_now.contains(key.as_str()));
            if !scan.leases.contains_key(&own.key()) {
                let why = format!(
                    "lease {} is gone from {} (deleted or expired)",
                    own.key(),
                    self.dir.display()
                );
                let _ = tx.send(StoreUpdate::OwnLeaseRevoked(why)).await;
                return;
            }
            match &known {
                None => {
                    self.stats
                        .snapshots
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Some(previous) if same_leases(previous, &scan.leases) => continue,
                Some(_) => {}
            }
            let update = StoreUpdate::Snapshot(scan.leases.values().cloned().collect());
            known = Some(scan.leases);
            self.stats.event(now);
            if tx.send(update).await.is_err() {
                return;
            }
        }
    }
}

/// New bad records logged one by one per [`BAD_RECORD_LOG_WINDOW`]; the rest
/// are counted and summed up in one line per window.
const BAD_RECORDS_LOGGED: usize = 10;
/// See [`BAD_RECORDS_LOGGED`].
const BAD_RECORD_LOG_WINDOW: Duration = Duration::from_secs(60);

/// Tells when a lease file in the directory was written, renamed or removed.
///
/// Not a lease store of its own: the caller reads the whole directory again
/// when told. Without inotify (no instances left, an old kernel) it never
/// tells, and the caller's poll is all there is.
struct DirWatch {
    inotify: Option<tokio::io::unix::AsyncFd<InotifyFd>>,
}

impl DirWatch {
    fn open(dir: &Path) -> DirWatch {
        use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify};
        // Complete writes, renames in and out, removals: not IN_CREATE or
        // IN_MODIFY, which would show a file before its content is there.
        let mask = F::IN_CLOSE_WRITE
            | F::IN_MOVED_TO
            | F::IN_MOVED_FROM
            | F::IN_DELETE
            | F::IN_DELETE_SELF
            | F::IN_MOVE_SELF;
        let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|inotify| inotify.add_watch(dir, mask).map(|_| inotify))
            .map_err(std::io::Error::from)
            .and_then(|inotify| register(InotifyFd(inotify)));
        match watch {
            Ok(fd) => DirWatch { inotify: Some(fd) },
            Err(e) => {
                tracing::info!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot watch the lease directory with inotify; reading it every {} ms instead (changes take up to that long)",
                    POLL.as_millis()
                );
                DirWatch { inotify: None }
            }
        }
    }

    /// Waits until a lease file changed (never returns without inotify).
    async fn changed(&mut self) {
        let Some(fd) = &self.inotify else {
            return std::future::pending().await;
        };
        loop {
            let Ok(mut guard) = fd.readable().await else {
                self.inotify = None;
                return std::future::pending().await;
            };
            // Drain everything queued before the caller reads the directory,
            // so that a change made while it reads wakes it again.
            let mut relevant = false;
            loop {
                match guard.get_inner().0.read_events() {
                    Ok(events) => {
                        relevant |= events.iter().any(|e| names_a_lease_file(e.name.as_deref()))
                    }
                    Err(nix::errno::Errno::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        tracing::info!(error = %e, "stopped watching the lease directory with inotify; reading it every {} ms instead", POLL.as_millis());
                        self.inotify = None;
                        return std::future::pending().await;
                    }
                }
            }
            if relevant {
                return;
            }
        }
    }
}

/// Whether an inotify event is about anything but temporary files and the
/// lock (their names start with a dot). An event without a name is about the
/// directory itself, or a queue overflow: relevant.
fn names_a_lease_file(name: Option<&std::ffi::OsStr>) -> bool {
    use std::os::unix::ffi::OsStrExt;
    name.is_none_or(|n| n.as_bytes().first() != Some(&b'.'))
}

/// Whether two scans hold the same leases with the same attributes (a
/// renewal, which only moves an expiration, is no change to report).
fn same_leases(before: &BTreeMap<String, Lease>, after: &BTreeMap<String, Lease>) -> bool {
    before.len() == after.len()
        && before
            .iter()
            .zip(after)
            .all(|((k1, l1), (k2, l2))| k1 == k2 && l1.attrs == l2.attrs)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(StoreError::TaskFailed)?
}

/// An exclusive `flock` on `<dir>/.lock`, released on drop.
struct DirLock(File);

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock, StoreError> {
        let path = dir.join(".lock");
        let io = |what: &str, source| StoreError::Io {
            what: format!("{what} {}", path.display()),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io("cannot open", e))?;
        file.lock().map_err(|e| io("cannot lock", e))?;
        Ok(DirLock(file))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// The file content for a lease: flannel's JSON plus `"Expiration"`.
pub fn render_record(lease: &Lease) -> String {
    let mut json = lease.attrs.to_json();
    if let Some(exp) = lease.expiration {
        let ts = jiff::Timestamp::try_from(exp)
            .map(|t| t.to_string())
            .unwrap_or_default();
        json.pop();
        json.push_str(&format!(",\"Expiration\":\"{ts}\"}}"));
    }
    json
}

/// Reads one record; expiration `None` means it never expires.
pub fn parse_record(key: &str, text: &str) -> Result<Lease, LeaseError> {
    let mut lease = Lease::from_record(key, text, None)?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| LeaseError::InvalidJson(e.to_string()))?;
    let expiration = value
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("expiration")))
        .and_then(|(_, v)| v.as_str())
        .map(|s| {
            s.parse::<jiff::Timestamp>()
                .map(SystemTime::from)
                .map_err(|e| LeaseError::InvalidJson(format!("Expiration {s:?}: {e}")))
        })
        .transpose()?;
    lease.expiration = expiration;
    Ok(lease)
}

fn scan(dir: &Path, now: SystemTime) -> Result<Scan, StoreError> {
    let entries = fs::read_dir(dir).map_err(|source| StoreError::Io {
        what: format!("cannot read the lease directory {}", dir.display()),
        source,
    })?;
    let mut out = Scan::default();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if let Err(e) = parse_subnet_key(&name) {
            out.bad.push((name, e));
            continue;
        }
        if let Ok(meta) = entry.metadata()
            && meta.len() > MAX_RECORD_BYTES
        {
            out.bad.push((name, LeaseError::TooLarge(meta.len())));
            continue;
        }
        let text = match fs::read_to_string(entry.path()) {
            Ok(text) => text,
            // Removed between listing and reading: it is simply gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.bad.push((name, LeaseError::InvalidJson(e.to_string())));
                continue;
            }
        };
        match parse_record(&name, &text) {
            Ok(lease) if lease.expiration.is_some_and(|exp| exp <= now) => {}
            Ok(lease) => {
                out.leases.insert(name, lease);
            }
            Err(e) => out.bad.push((name, e)),
        }
    }
    Ok(out)
}

fn write_record(dir: &Path, lease: &Lease) -> Result<(), StoreError> {
    let key = subnet_key(lease.subnet, lease.ipv6_subnet);
    let io = |what: String, source| StoreError::Io { what, source };
    let tmp = dir.join(format!(".tmp-{key}-{}", std::process::id()));
    let mut file =
        File::create(&tmp).map_err(|e| io(format!("cannot write {}", tmp.display()), e))?;
    file.write_all(render_record(lease).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io(format!("cannot write {}", tmp.display()), e))?;
    fs::rename(&tmp, dir.join(&key)).map_err(|e| io(format!("cannot install lease {key}"), e))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn remove_record(dir: &Path, key: &str) -> Result<(), StoreError> {
    match fs::remove_file(dir.join(key)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io {
            what: format!("cannot remove lease {key}"),
            source,
        }),
    }
}

/// A lease record for `attrs` on `key` (an IPv4 subnet, or a dual-stack
/// [`SubnetKey`]), for tests and tools.
pub fn record_for(
    key: impl Into<SubnetKey>,
    attrs: LeaseAttrs,
    expiration: Option<SystemTime>,
) -> String {
    let key = key.into();
    render_record(&Lease {
        subnet: key.subnet,
        ipv6_subnet: key.ipv6_subnet,
        attrs,
        expiration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lease::VxlanBackendData;
    use crate::core::mac::MacAddr;
    use std::net::Ipv4Addr;

    fn attrs(last: u8) -> LeaseAttrs {
        LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 168, 0, last),
            &VxlanBackendData {
                vni: 1,
                vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, last]),
            },
        )
    }

    fn config(text: &str) -> NetConfig {
        NetConfig::parse_and_check(text).unwrap()
    }

    fn store(dir: &Path) -> LocalStore {
        LocalStore::open(dir, &dir.join("net-conf.json"), DEFAULT_TTL, Arc::default()).unwrap()
    }

    #[test]
    fn record_is_flannel_json_plus_expiration() {
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let text = record_for(
            "10.244.3.0/24".parse::<ipnet::Ipv4Net>().unwrap(),
            attrs(3),
            Some(exp),
        );
        assert_eq!(
            text,
            r#"{"PublicIP":"192.168.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"},"Expiration":"2027-01-15T08:00:00Z"}"#
        );
        let lease = parse_record("10.244.3.0-24", &text).unwrap();
        assert_eq!(lease.expiration, Some(exp));
        assert_eq!(lease.attrs, attrs(3));
        assert!(
            parse_record(
                "10.244.3.0-24",
                r#"{"PublicIP":"1.2.3.4","Expiration":"yesterday"}"#
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn acquire_reuses_own_then_previous_then_random_and_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let c = config(r#"{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}"#);
        let now = SystemTime::now();
        let req = |last, previous| AcquireRequest {
            attrs: attrs(last),
            previous_subnet: previous,
            previous_ipv6_subnet: None,
        };
        let a = s
            .acquire(&c, &req(1, Some("10.0.0.8/30".parse().unwrap())), now)
            .await
            .unwrap();
        assert_eq!(
            a.subnet.to_string(),
            "10.0.0.8/30",
            "previous subnet is reused when free"
        );
        let again = s.acquire(&c, &req(1, None), now).await.unwrap();
        assert_eq!(again.subnet, a.subnet, "own lease is reused");
        let b = s.acquire(&c, &req(2, Some(a.subnet)), now).await.unwrap();
        assert_ne!(b.subnet, a.subnet, "a taken previous subnet is not reused");
        let c3 = s.acquire(&c, &req(3, None), now).await.unwrap();
        assert!(![a.subnet, b.subnet].contains(&c3.subnet));
        let err = s.acquire(&c, &req(4, None), now).await.unwrap_err();
        assert_eq!(err.to_string(), "out of subnets");
        // An expired lease frees its subnet.
        let later = now + DEFAULT_TTL + Duration::from_secs(1);
        let d = s.acquire(&c, &req(4, None), later).await.unwrap();
        assert!(c.fits(d.subnet));
    }

    #[tokio::test]
    async fn own_lease_outside_a_new_config_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let now = SystemTime::now();
        let req = AcquireRequest {
            attrs: attrs(1),
            previous_subnet: None,
            previous_ipv6_subnet: None,
        };
        let a = s
            .acquire(
                &config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#),
                &req,
                now,
            )
            .await
            .unwrap();
        let b = s
            .acquire(
                &config(r#"{"Network":"10.2.0.0/16","Backend":{"Type":"vxlan"}}"#),
                &req,
                now,
            )
            .await
            .unwrap();
        assert!(b.subnet.to_string().starts_with("10.2."));
        assert!(!dir.path().join(a.key()).exists());
    }

    /// Node `last`'s dual-stack attributes: a public IPv6 and `BackendV6Data`.
    fn dual_attrs(last: u8) -> LeaseAttrs {
        let mut a = attrs(last);
        a.public_ipv6 = Some(std::net::Ipv6Addr::new(
            0xfd00,
            0,
            0,
            0,
            0,
            0,
            0,
            u16::from(last),
        ));
        a.backend_v6_data = Some(
            VxlanBackendData {
                vni: 1,
                vtep_mac: MacAddr([0x0e, 6, 0, 0, 0, last]),
            }
            .to_json(),
        );
        a
    }

    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/56","Backend":{"Type":"vxlan"}}"#;

    #[tokio::test]
    async fn dual_stack_acquire_writes_flannels_key_and_json_renews_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let c = config(DUAL);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let req = |last, previous: Option<&Lease>| AcquireRequest {
            attrs: dual_attrs(last),
            previous_subnet: previous.map(|l| l.subnet),
            previous_ipv6_subnet: previous.and_then(|l| l.ipv6_subnet),
        };
        let a = s.acquire(&c, &req(1, None), now).await.unwrap();
        let v6 = a.ipv6_subnet.expect("a dual-stack lease");
        assert!(allocate::fits(&c, a.subnet_key()), "{}", a.key());
        assert_eq!(v6.prefix_len(), 64);
        assert_eq!(a.key(), format!("{}-24&{}-64", a.subnet.addr(), v6.addr()));
        // On disk: flannel's key as the file name, flannel's JSON (+ Expiration).
        let text = fs::read_to_string(dir.path().join(a.key())).unwrap();
        assert_eq!(
            text,
            r#"{"PublicIP":"192.168.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:06:00:00:00:01"},"Expiration":"2027-01-16T08:00:00Z"}"#
        );
        assert_eq!(parse_record(&a.key(), &text).unwrap(), a);
        // Renewal keeps the v6 part, in the same file.
        let later = now + Duration::from_secs(3600);
        let renewed = s.renew(&a, later).await.unwrap().expect("still there");
        assert_eq!(renewed.subnet_key(), a.subnet_key());
        assert_eq!(renewed.attrs, a.attrs);
        assert_eq!(renewed.expiration, Some(later + DEFAULT_TTL));
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(names, [a.key()]);
        // A restart finds and reuses the whole pair.
        assert_eq!(
            s.find_own(OwnAddress::Ipv4(Ipv4Addr::new(192, 168, 0, 1)), later)
                .await
                .unwrap()
                .map(|l| l.subnet_key()),
            Some(a.subnet_key())
        );
        let again = s.acquire(&c, &req(1, None), later).await.unwrap();
        assert_eq!(again.subnet_key(), a.subnet_key());
        // Another node never gets an overlapping v6 subnet.
        let b = s.acquire(&c, &req(2, None), later).await.unwrap();
        assert_ne!(b.subnet, a.subnet);
        assert_ne!(b.ipv6_subnet, a.ipv6_subnet);
        // After its lease expired, node 1 gets its subnet.env pair back.
        let expired = later + DEFAULT_TTL + Duration::from_secs(1);
        let mut moved = req(1, Some(&a));
        moved.attrs.public_ip = Ipv4Addr::new(192, 168, 0, 101);
        let back = s.acquire(&c, &moved, expired).await.unwrap();
        assert_eq!(back.subnet_key(), a.subnet_key());
    }

    #[tokio::test]
    async fn turning_ipv6_on_replaces_a_v4_only_lease_and_off_again_replaces_the_dual_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let now = SystemTime::now();
        let v4 = s
            .acquire(
                &config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#),
                &AcquireRequest {
                    attrs: attrs(1),
                    previous_subnet: None,
                    previous_ipv6_subnet: None,
                },
                now,
            )
            .await
            .unwrap();
        let dual_req = AcquireRequest {
            attrs: dual_attrs(1),
            previous_subnet: Some(v4.subnet),
            previous_ipv6_subnet: None,
        };
        let dual = s.acquire(&config(DUAL), &dual_req, now).await.unwrap();
        assert!(dual.ipv6_subnet.is_some());
        assert!(
            !dir.path().join(v4.key()).exists(),
            "the v4-only lease is deleted"
        );
        assert!(dir.path().join(dual.key()).exists());
        let back = s
            .acquire(
                &config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#),
                &AcquireRequest {
                    attrs: attrs(1),
                    previous_subnet: None,
                    previous_ipv6_subnet: None,
                },
                now,
            )
            .await
            .unwrap();
        assert_eq!(back.ipv6_subnet, None);
        assert!(
            !dir.path().join(dual.key()).exists(),
            "the dual lease is deleted"
        );
        // IPv6 on without a public IPv6: refused before anything is written.
        let err = s
            .acquire(
                &config(DUAL),
                &AcquireRequest {
                    attrs: attrs(1),
                    previous_subnet: None,
                    previous_ipv6_subnet: None,
                },
                now,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no public IPv6"), "{err}");
        assert!(dir.path().join(back.key()).exists());
    }

    #[tokio::test]
    async fn the_watch_carries_dual_stack_leases() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(store(dir.path()));
        let c = config(DUAL);
        let own = s
            .acquire(
                &c,
                &AcquireRequest {
                    attrs: dual_attrs(1),
                    previous_subnet: None,
                    previous_ipv6_subnet: None,
                },
                SystemTime::now(),
            )
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let task = s.clone().spawn(own.clone(), RenewPolicy::default(), tx);
        match rx.recv().await.unwrap() {
            StoreUpdate::Snapshot(leases) => assert_eq!(leases, vec![own.clone()]),
            other => panic!("{other:?}"),
        }
        let peer = SubnetKey {
            subnet: if own.subnet.to_string() == "10.244.9.0/24" {
                "10.244.10.0/24".parse().unwrap()
            } else {
                "10.244.9.0/24".parse().unwrap()
            },
            ipv6_subnet: Some(
                if own.ipv6_subnet.unwrap().to_string() == "fd10:0:0:9::/64" {
                    "fd10:0:0:a::/64".parse().unwrap()
                } else {
                    "fd10:0:0:9::/64".parse().unwrap()
                },
            ),
        };
        fs::write(
            dir.path().join(peer.to_string()),
            record_for(peer, dual_attrs(9), None),
        )
        .unwrap();
        match rx.recv().await.unwrap() {
            StoreUpdate::Snapshot(leases) => {
                let got = leases.iter().find(|l| l.subnet == peer.subnet).unwrap();
                assert_eq!(got.ipv6_subnet, peer.ipv6_subnet);
                assert_eq!(got.attrs, dual_attrs(9));
                assert_eq!(
                    got.attrs.vxlan_v6_data().unwrap().vtep_mac,
                    MacAddr([0x0e, 6, 0, 0, 0, 9])
                );
            }
            other => panic!("{other:?}"),
        }
        drop(rx);
        task.abort();
    }

    /// Node `last`'s IPv6-only attributes, as the agent sends them:
    /// PublicIP 0.0.0.0, no BackendData.
    fn v6_only_attrs(last: u8) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            backend_data: None,
            ..dual_attrs(last)
        }
    }

    const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10::/56","Backend":{"Type":"vxlan"}}"#;

    #[tokio::test]
    async fn ipv6_only_acquire_writes_flannels_key_and_json_renews_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let c = config(V6_ONLY);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let req = |last, previous: Option<ipnet::Ipv6Net>| AcquireRequest {
            attrs: v6_only_attrs(last),
            previous_subnet: None,
            previous_ipv6_subnet: previous,
        };
        let a = s.acquire(&c, &req(1, None), now).await.unwrap();
        assert!(!a.has_ipv4());
        assert_eq!(a.subnet, crate::core::lease::NO_IPV4_SUBNET);
        let v6 = a.ipv6_subnet.expect("an IPv6 subnet");
        assert!(allocate::fits(&c, a.subnet_key()), "{}", a.key());
        assert_eq!(a.key(), format!("0.0.0.0-0&{}-64", v6.addr()));
        // On disk: flannel's key as the file name, flannel's JSON (+ Expiration).
        let text = fs::read_to_string(dir.path().join(a.key())).unwrap();
        assert_eq!(
            text,
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:06:00:00:00:01"},"Expiration":"2027-01-16T08:00:00Z"}"#
        );
        assert_eq!(parse_record(&a.key(), &text).unwrap(), a);
        // Renewal: the same file, a new expiration.
        let later = now + Duration::from_secs(3600);
        let renewed = s.renew(&a, later).await.unwrap().expect("still there");
        assert_eq!(renewed.subnet_key(), a.subnet_key());
        assert_eq!(renewed.expiration, Some(later + DEFAULT_TTL));
        // A restart finds it by PublicIPv6 (not by PublicIP 0.0.0.0) and reuses it.
        let ip6 =
            |last: u16| OwnAddress::Ipv6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last));
        assert_eq!(
            s.find_own(ip6(1), later)
                .await
                .unwrap()
                .map(|l| l.subnet_key()),
            Some(a.subnet_key())
        );
        assert_eq!(s.find_own(ip6(2), later).await.unwrap(), None);
        assert_eq!(
            s.find_own(OwnAddress::Ipv4(Ipv4Addr::UNSPECIFIED), later)
                .await
                .unwrap(),
            None
        );
        let again = s.acquire(&c, &req(1, None), later).await.unwrap();
        assert_eq!(again.subnet_key(), a.subnet_key());
        // Other nodes, all with PublicIP 0.0.0.0, get subnets of their own.
        let b = s.acquire(&c, &req(2, None), later).await.unwrap();
        let d = s.acquire(&c, &req(3, a.ipv6_subnet), later).await.unwrap();
        let mut v6s: Vec<_> = [&a, &b, &d]
            .iter()
            .map(|l| l.ipv6_subnet.unwrap())
            .collect();
        v6s.sort();
        v6s.dedup();
        assert_eq!(v6s.len(), 3, "{v6s:?}");
        // After its lease expired, node 1 gets its FLANNEL_IPV6_SUBNET back.
        let expired = later + DEFAULT_TTL + Duration::from_secs(1);
        let first = a.ipv6_subnet.map(|n| {
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(u128::from(n.network()) + 1), 64).unwrap()
        });
        let back = s.acquire(&c, &req(1, first), expired).await.unwrap();
        assert_eq!(back.subnet_key(), a.subnet_key());
    }

    #[tokio::test]
    async fn ipv6_only_replaces_the_dual_stack_lease_of_an_earlier_config() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let now = SystemTime::now();
        let dual = s
            .acquire(
                &config(DUAL),
                &AcquireRequest {
                    attrs: dual_attrs(1),
                    previous_subnet: None,
                    previous_ipv6_subnet: None,
                },
                now,
            )
            .await
            .unwrap();
        let v6 = s
            .acquire(
                &config(V6_ONLY),
                &AcquireRequest {
                    attrs: v6_only_attrs(1),
                    previous_subnet: Some(dual.subnet),
                    previous_ipv6_subnet: dual.ipv6_subnet,
                },
                now,
            )
            .await
            .unwrap();
        assert!(
            !dir.path().join(dual.key()).exists(),
            "the dual lease is deleted"
        );
        assert_eq!(
            v6.subnet_key(),
            SubnetKey::v6_only(dual.ipv6_subnet.unwrap())
        );
        // An IPv6-only request without BackendV6Data is refused before anything is written.
        let mut bare = v6_only_attrs(2);
        bare.backend_v6_data = None;
        let err = s
            .acquire(
                &config(V6_ONLY),
                &AcquireRequest {
                    attrs: bare,
                    previous_subnet: None,
                    previous_ipv6_subnet: None,
                },
                now,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("BackendV6Data"), "{err}");
    }

    #[tokio::test]
    async fn the_watch_carries_ipv6_only_leases_and_sees_the_own_one_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(store(dir.path()));
        let c = config(V6_ONLY);
        let own = s
            .acquire(
                &c,
                &AcquireRequest {
                    attrs: v6_only_attrs(1),
                    previous_subnet: None,
                    previous_ipv6_subnet: None,
                },
                SystemTime::now(),
            )
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let task = s.clone().spawn(own.clone(), RenewPolicy::default(), tx);
        match rx.recv().await.unwrap() {
            StoreUpdate::Snapshot(leases) => assert_eq!(leases, vec![own.clone()]),
            other => panic!("{other:?}"),
        }
        let peer = SubnetKey::v6_only(
            if own.ipv6_subnet.unwrap().to_string() == "fd10:0:0:9::/64" {
                "fd10:0:0:a::/64".parse().unwrap()
            } else {
                "fd10:0:0:9::/64".parse().unwrap()
            },
        );
        fs::write(
            dir.path().join(peer.to_string()),
            record_for(peer, v6_only_attrs(9), None),
        )
        .unwrap();
        match rx.recv().await.unwrap() {
            StoreUpdate::Snapshot(leases) => {
                assert_eq!(leases.len(), 2);
                let got = leases.iter().find(|l| l.subnet_key() == peer).unwrap();
                assert_eq!(got.attrs, v6_only_attrs(9));
                assert_eq!(
                    got.id(),
                    crate::core::lease::LeaseId::V6(peer.ipv6_subnet.unwrap())
                );
            }
            other => panic!("{other:?}"),
        }
        // The peer's file removed: the next snapshot has only the own lease.
        fs::remove_file(dir.path().join(peer.to_string())).unwrap();
        match rx.recv().await.unwrap() {
            StoreUpdate::Snapshot(leases) => assert_eq!(leases, vec![own.clone()]),
            other => panic!("{other:?}"),
        }
        // The own file removed: revoked, naming the IPv6-only key.
        fs::remove_file(dir.path().join(own.key())).unwrap();
        match rx.recv().await.unwrap() {
            StoreUpdate::OwnLeaseRevoked(why) => assert!(why.contains(&own.key()), "{why}"),
            other => panic!("{other:?}"),
        }
        task.await.unwrap();
    }

    #[test]
    fn concurrent_claims_get_distinct_subnets() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(r#"{"Network":"10.0.0.0/24","SubnetLen":28,"Backend":{"Type":"vxlan"}}"#);
        let threads: Vec<_> = (1..=12u8)
            .map(|i| {
                let path = dir.path().to_owned();
                let c = c.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        store(&path)
                            .acquire(
                                &c,
                                &AcquireRequest {
                                    attrs: attrs(i),
                                    previous_subnet: None,
                                    previous_ipv6_subnet: None,
                                },
                                SystemTime::now(),
                            )
                            .await
                            .unwrap()
                            .subnet
                    })
                })
            })
            .collect();
        let subnets: BTreeSet<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(subnets.len(), 12);
    }

    #[test]
    fn inotify_events_for_dot_files_alone_are_not_changes() {
        use std::ffi::OsStr;
        assert!(!names_a_lease_file(Some(OsStr::new(".lock"))));
        assert!(!names_a_lease_file(Some(OsStr::new(
            ".tmp-10.244.3.0-24-7"
        ))));
        assert!(names_a_lease_file(Some(OsStr::new("10.244.3.0-24"))));
        assert!(
            names_a_lease_file(None),
            "the directory itself, or an overflow"
        );
    }

    #[tokio::test]
    async fn the_directory_watch_wakes_for_lease_files_and_not_for_dot_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = DirWatch::open(dir.path());
        assert!(watch.inotify.is_some());
        let quiet = std::time::Duration::from_millis(200);
        std::fs::write(dir.path().join(".tmp-x"), "x").unwrap();
        assert!(
            tokio::time::timeout(quiet, watch.changed()).await.is_err(),
            "a dot file woke the watch"
        );
        std::fs::rename(dir.path().join(".tmp-x"), dir.path().join("10.244.3.0-24")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.changed())
            .await
            .expect("a lease file renamed into place wakes the watch");
        std::fs::remove_file(dir.path().join("10.244.3.0-24")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.changed())
            .await
            .expect("a lease file removed wakes the watch");
    }

    #[tokio::test]
    async fn watch_sends_snapshot_then_changes_and_skips_bad_records() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(StoreStats::default());
        let s = Arc::new(
            LocalStore::open(
                dir.path(),
                &dir.path().join("n"),
                DEFAULT_TTL,
                stats.clone(),
            )
            .unwrap(),
        );
        let c = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let now = SystemTime::now();
        let own = s
            .acquire(
                &c,
                &AcquireRequest {
                    attrs: attrs(1),
                    previous_subnet: None,
                    previous_ipv6_subnet: None,
                },
                now,
            )
            .await
            .unwrap();
        // Our subnet was picked at random: the peer and the garbage record go
        // elsewhere (writing over our own lease file would revoke it).
        let [garbage, peer]: [ipnet::Ipv4Net; 2] = ["10.244.77.0/24", "10.244.9.0/24"]
            .map(|net| net.parse().unwrap())
            .map(|net: ipnet::Ipv4Net| {
                if net == own.subnet {
                    "10.244.78.0/24".parse().unwrap()
                } else {
                    net
                }
            });
        let key = |net| subnet_key(net, None);
        fs::write(dir.path().join("not-a-key"), "x").unwrap();
        fs::write(dir.path().join(key(garbage)), "{garbage").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let task = s.clone().spawn(own.clone(), RenewPolicy::default(), tx);
        match rx.recv().await.unwrap() {
            StoreUpdate::Snapshot(leases) => assert_eq!(leases, vec![own.clone()]),
            other => panic!("{other:?}"),
        }
        fs::write(dir.path().join(key(peer)), record_for(peer, attrs(9), None)).unwrap();
        match rx.recv().await.unwrap() {
            StoreUpdate::Snapshot(leases) => {
                let mut subnets: Vec<_> = leases.iter().map(|l| l.subnet).collect();
                subnets.sort();
                let mut want = vec![own.subnet, peer];
                want.sort();
                assert_eq!(subnets, want);
            }
            other => panic!("{other:?}"),
        }
        fs::remove_file(dir.path().join(key(peer))).unwrap();
        match rx.recv().await.unwrap() {
            StoreUpdate::Snapshot(leases) => assert_eq!(leases, vec![own.clone()]),
            other => panic!("{other:?}"),
        }
        let bad = stats.snapshot().bad_records;
        assert_eq!(bad.get("bad_key"), Some(&1));
        assert_eq!(bad.get("invalid_json"), Some(&1));
        fs::remove_file(dir.path().join(own.key())).unwrap();
        assert!(matches!(
            rx.recv().await.unwrap(),
            StoreUpdate::OwnLeaseRevoked(_)
        ));
        task.await.unwrap();
    }
}
