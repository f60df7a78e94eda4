//! The etcd lease store: flannel's etcd v3 subnet manager, key for key and
//! byte for byte, so weft nodes and flannel nodes share one etcd.
//!
//! Layout under `--etcd-prefix` (default `/coreos.com/network`):
//! `<prefix>/config` holds flannel's net-conf JSON; `<prefix>/subnets/10.244.3.0-24`
//! holds one node's lease as flannel's `LeaseAttrs` JSON, attached to an etcd
//! lease of 24 h. A subnet key without an etcd lease is a reservation
//! (flannel's `Documentation/reservations.md`): it never expires.
//!
//! What the store does, as flannel does:
//! - **acquire**: list the leases; reuse the one this public IP holds if it still
//!   fits the config (else delete it); else the subnet of the previous
//!   `subnet.env` if free; else one at random among the first 100 free subnets.
//!   A new key is claimed with a transaction `If(Version(key) == 0)`, retried
//!   (10 times) when another node won the race.
//! - **renew** at expiry − margin by putting the value again with a fresh etcd
//!   lease; a failure is retried every minute.
//! - **watch** `<prefix>/subnets/` from the listing's revision + 1. A broken
//!   stream reconnects from the last applied revision with backoff (100 ms
//!   doubling to 5 s); a compacted revision relists and sends a snapshot,
//!   which the agent applies with reset semantics.
//!
//! Error policy: after startup every etcd failure is logged, counted and
//! retried; the dataplane keeps the last known leases meanwhile. Bad records
//! are skipped, logged with their key and counted once per change. The only
//! fatal outcome is this node's own key vanishing (deleted or expired): the
//! agent exits so its supervisor restarts it, as flanneld does.
//!
//! Deliberate differences from flannel, none visible in etcd: a reservation
//! stays a reservation when reused (flannel turns it into a 24 h lease), a
//! subnet key holding a bad record counts as taken when allocating, renewal
//! never recreates a key someone deleted, and peers' expirations are not
//! fetched (etcd expires them itself; nothing here reads them).
//!
//! The decisions (keys, record parsing, the acquisition plan, the watch state)
//! are plain functions and types, tested without a server; [`EtcdStore`] is the
//! thin shell that talks to etcd.

use super::contract::{
    AcquireRequest, OwnAddress, RenewPolicy, StoreUpdate, UpdateSender, renew_at,
};
use super::error::StoreError;
use super::stats::StoreStats;
use crate::core::allocate::{self, Claim, Held};
use crate::core::config::NetConfig;
use crate::core::lease::{Lease, LeaseAttrs, LeaseError, LeaseEvent, SubnetKey};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

/// flanneld's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// flannel's lease lifetime (`subnetTTL`).
pub const SUBNET_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often a claim is retried when another node takes the subnet first (`raceRetries`).
const RACE_RETRIES: usize = 10;
/// The longest any single etcd request may take before it counts as failed.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Watch reconnection backoff: flannel's 100 ms doubling to 5 s.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive while a stream (the watch) is open, so a silently dead
/// connection (a partition) breaks the watch. etcd answers pings more often
/// than every 5 s (`--grpc-keepalive-min-time`), or pings without an open
/// stream, with GOAWAY "too_many_pings".
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest pause between two renewals, whatever the lease and margin say.
const MIN_RENEW_PAUSE: Duration = Duration::from_secs(1);
/// flannel's message for a missing `<prefix>/config`.
pub const CONFIG_NOT_FOUND: &str =
    "flannel config not found in etcd store. Did you create your config using etcdv3 API?";

/// The store's settings, from `--etcd-*`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `--etcd-endpoints`.
    pub endpoints: Vec<String>,
    /// `--etcd-prefix`.
    pub prefix: String,
    /// `--etcd-cafile`.
    pub ca_file: Option<PathBuf>,
    /// `--etcd-certfile`.
    pub cert_file: Option<PathBuf>,
    /// `--etcd-keyfile`.
    pub key_file: Option<PathBuf>,
    /// `--etcd-username`.
    pub username: Option<String>,
    /// `--etcd-password`.
    pub password: Option<String>,
    /// Lifetime of the etcd lease attached to this node's key ([`SUBNET_TTL`]).
    pub lease_ttl: Duration,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

/// How the endpoints are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl EtcdOptions {
    /// Checks what can be checked without etcd; `renew_margin_minutes` is
    /// `--subnet-lease-renew-margin`. The message names the flags to fix.
    pub fn check(&self, renew_margin_minutes: u32) -> Result<(), String> {
        if self.lease_ttl.is_zero() {
            return Err("--etcd-lease-ttl must be at least 1 second".into());
        }
        let margin = Duration::from_secs(u64::from(renew_margin_minutes) * 60);
        if margin >= self.lease_ttl {
            return Err(format!(
                "--subnet-lease-renew-margin ({renew_margin_minutes} min) must be shorter than the etcd lease ({} s)",
                self.lease_ttl.as_secs()
            ));
        }
        self.scheme().map(|_| ())
    }

    /// Endpoints with their scheme spelled out (a bare `host:port` is http, or
    /// https when TLS files are given).
    fn normalized_endpoints(&self) -> Vec<String> {
        let tls_files = self.ca_file.is_some() || self.cert_file.is_some();
        self.endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else if tls_files {
                    format!("https://{e}")
                } else {
                    format!("http://{e}")
                }
            })
            .collect()
    }

    fn scheme(&self) -> Result<Scheme, String> {
        if self.endpoints.is_empty() {
            return Err("--etcd-endpoints is empty".into());
        }
        let mut schemes = BTreeSet::new();
        for e in self.normalized_endpoints() {
            match e.split_once("://").map(|(s, _)| s) {
                Some("http") => schemes.insert("http"),
                Some("https") => schemes.insert("https"),
                _ => {
                    return Err(format!(
                        "--etcd-endpoints: {e:?} is not an http:// or https:// URL"
                    ));
                }
            };
        }
        if schemes.len() > 1 {
            return Err(
                "--etcd-endpoints mixes http:// and https://; use one scheme for all endpoints"
                    .into(),
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(
                "--etcd-certfile and --etcd-keyfile go together: give both or neither".into(),
            );
        }
        if self.password.is_some() && self.username.is_none() {
            return Err("--etcd-password is set but --etcd-username is not".into());
        }
        let https = schemes.contains("https");
        if !https && (self.ca_file.is_some() || self.cert_file.is_some()) {
            return Err(
                "--etcd-cafile/--etcd-certfile/--etcd-keyfile need https:// endpoints".into(),
            );
        }
        Ok(if https { Scheme::Https } else { Scheme::Http })
    }

    /// The client's connection settings; reads the TLS files.
    fn connect_options(&self) -> Result<ConnectOptions, StoreError> {
        let scheme = self
            .scheme()
            .map_err(|reason| StoreError::EtcdOptions { reason })?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(RPC_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        if let Some(user) = &self.username {
            options = options
                .with_user(user, self.password.clone().unwrap_or_default())
                .with_auto_token_refresh(true);
        }
        if scheme == Scheme::Https {
            let read = |path: &PathBuf, what: &str| {
                std::fs::read(path).map_err(|source| StoreError::Io {
                    what: format!("cannot read the etcd {what} {}", path.display()),
                    source,
                })
            };
            let mut tls = TlsOptions::new();
            tls = match &self.ca_file {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "CA file")?)),
                None => tls.with_native_roots(),
            };
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read(cert, "certificate")?,
                    read(key, "key")?,
                ));
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }
}

/// The keys of one flannel network in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `<prefix>/config`.
    pub config: String,
    /// `<prefix>/subnets/` (with the slash: the watched and listed range).
    pub subnets: String,
}

impl Keys {
    /// The keys under `prefix`, joined as Go's `path.Join` joins them
    /// (repeated and trailing slashes and `.` dropped, `..` applied).
    pub fn new(prefix: &str) -> Keys {
        let absolute = prefix.starts_with('/');
        let mut parts: Vec<&str> = Vec::new();
        for part in prefix.split('/') {
            match part {
                "" | "." => {}
                ".." if parts.last().is_some_and(|p| *p != "..") => {
                    parts.pop();
                }
                ".." if absolute => {} // nothing above the root
                name => parts.push(name),
            }
        }
        let mut base = parts.join("/");
        if absolute {
            base.insert(0, '/');
        }
        let join = |name: &str| match base.as_str() {
            "" => name.to_owned(),
            "/" => format!("/{name}"),
            b => format!("{b}/{name}"),
        };
        Keys {
            config: join("config"),
            subnets: format!("{}/", join("subnets")),
        }
    }

    /// The key of a lease: `<prefix>/subnets/10.244.3.0-24`.
    pub fn lease(&self, lease: &Lease) -> String {
        format!("{}{}", self.subnets, lease.key())
    }

    /// The key of a lease by its subnets: `<prefix>/subnets/10.244.3.0-24`.
    pub fn subnet(&self, key: SubnetKey) -> String {
        format!("{}{}", self.subnets, key)
    }
}

/// One key/value as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The etcd lease the key is attached to; 0 for none (a reservation).
    pub lease: i64,
    /// The revision it was last written at.
    pub mod_revision: i64,
}

impl From<&KeyValue> for Kv {
    fn from(kv: &KeyValue) -> Kv {
        Kv {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            lease: kv.lease(),
            mod_revision: kv.mod_revision(),
        }
    }
}

impl Kv {
    fn key_text(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

/// Reads a lease record under `keys.subnets`.
pub fn parse_kv(keys: &Keys, kv: &Kv) -> Result<Lease, LeaseError> {
    let key = kv.key_text();
    let name = key
        .strip_prefix(&keys.subnets)
        .ok_or_else(|| LeaseError::BadKey(key.clone()))?;
    let value = std::str::from_utf8(&kv.value)
        .map_err(|e| LeaseError::InvalidJson(format!("the value is not UTF-8 text: {e}")))?;
    Lease::from_record(name, value, None)
}

/// The subnets a key names, if it names them (also for a record with a bad value).
fn subnet_of(keys: &Keys, key: &str) -> Option<SubnetKey> {
    key.strip_prefix(&keys.subnets)
        .and_then(|name| SubnetKey::parse(name).ok())
}

/// A lease record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its etcd key.
    pub key: String,
    /// The lease it holds.
    pub lease: Lease,
    /// The etcd lease the key is attached to; 0 for a reservation.
    pub lease_id: i64,
}

/// A record that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Its etcd key.
    pub key: String,
    /// Why it is unusable.
    pub error: LeaseError,
}

/// Everything under `<prefix>/subnets/` at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The revision listed at.
    pub revision: i64,
    /// The usable leases.
    pub leases: Vec<Stored>,
    /// The records that are not.
    pub bad: Vec<BadRecord>,
    /// Subnets named by the keys of bad records: taken, though unusable.
    pub bad_subnets: Vec<SubnetKey>,
}

impl Listing {
    /// Sorts what a list returned into leases and bad records.
    pub fn new(keys: &Keys, revision: i64, kvs: impl IntoIterator<Item = Kv>) -> Listing {
        let mut listing = Listing {
            revision,
            ..Listing::default()
        };
        for kv in kvs {
            let key = kv.key_text();
            match parse_kv(keys, &kv) {
                Ok(lease) => listing.leases.push(Stored {
                    key,
                    lease: Lease {
                        expiration: None,
                        ..lease
                    },
                    lease_id: kv.lease,
                }),
                Err(error) => {
                    if let Some(subnets) = subnet_of(keys, &key) {
                        listing.bad_subnets.push(subnets);
                    }
                    listing.bad.push(BadRecord { key, error });
                }
            }
        }
        listing
    }

    /// The leases as allocation sees them (a key without an etcd lease is a reservation).
    pub fn held(&self) -> Vec<Held> {
        self.leases
            .iter()
            .map(|s| Held::of(&s.lease, s.lease_id == 0))
            .collect()
    }

    /// Whether a key is present (as a lease or as a bad record).
    fn contains(&self, key: &str) -> bool {
        self.leases.iter().any(|s| s.key == key) || self.bad.iter().any(|b| b.key == key)
    }
}

/// A change under `<prefix>/subnets/`, as a watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// A delete (else a put).
    pub deleted: bool,
    /// The key and value (a delete has only the key).
    pub kv: Kv,
}

/// What one list or one batch of changes means for the agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// What to send the agent, if anything.
    pub update: Option<StoreUpdate>,
    /// Records newly found bad (or bad in a new way): to log and count.
    pub new_bad: Vec<BadRecord>,
}

/// The watch's memory between etcd responses: the revision applied so far,
/// the keys delivered as leases and the keys skipped as bad.
#[derive(Debug, Clone)]
pub struct WatchState {
    keys: Keys,
    own_key: String,
    good: BTreeSet<String>,
    bad: BTreeMap<String, LeaseError>,
    /// Every change up to this revision has been applied.
    pub revision: i64,
}

impl WatchState {
    /// A watch for the keys under `keys` of a node that holds `own_key`.
    pub fn new(keys: Keys, own_key: String) -> WatchState {
        WatchState {
            keys,
            own_key,
            good: BTreeSet::new(),
            bad: BTreeMap::new(),
            revision: 0,
        }
    }

    fn revoked(&self, how: &str) -> StoreUpdate {
        StoreUpdate::OwnLeaseRevoked(format!("etcd key {} {how}", self.own_key))
    }

    /// A (re)list: the whole set, to apply with reset semantics.
    pub fn reset(&mut self, listing: Listing) -> Applied {
        self.revision = listing.revision;
        let own_present = listing.contains(&self.own_key);
        let new_bad = listing
            .bad
            .iter()
            .filter(|b| self.bad.get(&b.key) != Some(&b.error))
            .cloned()
            .collect();
        self.bad = listing.bad.into_iter().map(|b| (b.key, b.error)).collect();
        self.good = listing.leases.iter().map(|s| s.key.clone()).collect();
        let update = if own_present {
            StoreUpdate::Snapshot(listing.leases.into_iter().map(|s| s.lease).collect())
        } else {
            self.revoked("is gone (deleted or expired)")
        };
        Applied {
            update: Some(update),
            new_bad,
        }
    }

    /// Changes from the watch, in revision order.
    pub fn apply(&mut self, changes: Vec<Change>) -> Applied {
        let mut events = Vec::new();
        let mut new_bad = Vec::new();
        for change in changes {
            self.revision = self.revision.max(change.kv.mod_revision);
            let key = change.kv.key_text();
            if change.deleted {
                self.bad.remove(&key);
                if key == self.own_key {
                    return Applied {
                        update: Some(self.revoked("was deleted")),
                        new_bad,
                    };
                }
                if self.good.remove(&key)
                    && let Some(subnets) = subnet_of(&self.keys, &key)
                {
                    events.push(LeaseEvent::Removed(subnets));
                }
                continue;
            }
            match parse_kv(&self.keys, &change.kv) {
                Ok(lease) => {
                    self.bad.remove(&key);
                    self.good.insert(key);
                    events.push(LeaseEvent::Added(lease));
                }
                Err(error) => {
                    if self.bad.get(&key) != Some(&error) {
                        new_bad.push(BadRecord {
                            key: key.clone(),
                            error: error.clone(),
                        });
                    }
                    // A lease overwritten with a bad value is gone, as a relist would find.
                    if self.good.remove(&key)
                        && let Some(subnets) = subnet_of(&self.keys, &key)
                    {
                        events.push(LeaseEvent::Removed(subnets));
                    }
                    self.bad.insert(key, error);
                }
            }
        }
        Applied {
            update: (!events.is_empty()).then_some(StoreUpdate::Events(events)),
            new_bad,
        }
    }
}

/// When to try renewing next: `margin` before expiry after a success (never
/// sooner than [`MIN_RENEW_PAUSE`]), `retry` after a failure.
pub fn next_renewal(
    renewed: Option<&Lease>,
    renew: &RenewPolicy,
    now: SystemTime,
) -> Option<SystemTime> {
    match renewed {
        None => Some(now + renew.retry),
        Some(lease) => {
            let exp = lease.expiration?;
            Some(renew_at(Some(exp), renew.margin, now).max(now + MIN_RENEW_PAUSE))
        }
    }
}

/// The etcd store.
pub struct EtcdStore {
    options: EtcdOptions,
    endpoints: Vec<String>,
    keys: Keys,
    connect: ConnectOptions,
    /// Connected on first use, so weftd starts (and retries) while etcd is down.
    client: tokio::sync::OnceCell<Client>,
    stats: Arc<StoreStats>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("options", &self.options)
            .field("keys", &self.keys)
            .field("connected", &self.client.initialized())
            .finish()
    }
}

/// What ended one watch stream.
#[derive(Debug)]
enum WatchEnd {
    /// The start revision is compacted away: relist.
    Compacted,
    /// The stream broke or etcd cancelled it: reconnect from the last revision.
    Broken(StoreError),
    /// The agent is gone, or this node's lease was revoked.
    Stop,
}

impl EtcdStore {
    /// Checks the options and reads the TLS files; connects on first use.
    pub fn open(options: EtcdOptions, stats: Arc<StoreStats>) -> Result<EtcdStore, StoreError> {
        let connect = options.connect_options()?;
        let endpoints = options.normalized_endpoints();
        if endpoints.iter().all(|e| e.starts_with("http://")) {
            warn!("no certificate provided: connecting to etcd with http. This is insecure");
        }
        Ok(EtcdStore {
            keys: Keys::new(&options.prefix),
            endpoints,
            options,
            connect,
            client: tokio::sync::OnceCell::new(),
            stats,
        })
    }

    /// `endpoints (prefix …)`, for status and logs.
    pub fn describe(&self) -> String {
        format!(
            "{} (prefix {})",
            self.endpoints.join(","),
            self.options.prefix
        )
    }

    /// The keys of this network.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn client(&self) -> Result<Client, StoreError> {
        self.client
            .get_or_try_init(|| async {
                let connect = Client::connect(&self.endpoints, Some(self.connect.clone()));
                match tokio::time::timeout(RPC_TIMEOUT, connect).await {
                    Ok(Ok(client)) => Ok(client),
                    Ok(Err(e)) => Err(self.failure("connect", e)),
                    Err(_) => Err(self.timeout("connect")),
                }
            })
            .await
            .cloned()
    }

    fn timeout(&self, what: &str) -> StoreError {
        StoreError::EtcdTimeout {
            doing: what.to_owned(),
            endpoints: self.endpoints.join(","),
            seconds: RPC_TIMEOUT.as_secs(),
        }
    }

    /// Classifies a client error: refused credentials are the operator's to
    /// fix; anything else may pass (etcd down, no leader, a dropped connection).
    fn failure(&self, what: &str, e: etcd_client::Error) -> StoreError {
        let endpoints = self.endpoints.join(",");
        if let etcd_client::Error::GRpcStatus(status) = &e
            && is_refused_credentials(status.code(), status.message())
        {
            return StoreError::EtcdCredentials {
                doing: what.to_owned(),
                endpoints,
                message: status.message().to_owned(),
            };
        }
        StoreError::EtcdFailed {
            doing: what.to_owned(),
            endpoints,
            source: e,
        }
    }

    /// Runs one request with the request timeout; records connectivity.
    async fn rpc<T>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(RPC_TIMEOUT, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failure(what, e)),
            Err(_) => Err(self.timeout(what)),
        };
        match &result {
            Ok(_) => self.stats.set_connected(true),
            Err(_) => self.stats.set_connected(false),
        }
        result
    }

    /// Reads and checks `<prefix>/config`.
    pub async fn network_config(&self) -> Result<NetConfig, StoreError> {
        let mut kv = self.client().await?.kv_client();
        let key = self.keys.config.clone();
        let resp = self
            .rpc("read the network config", kv.get(key.clone(), None))
            .await?;
        let Some(found) = resp.kvs().first() else {
            return Err(StoreError::ConfigMissing {
                key,
                endpoints: self.endpoints.join(","),
            });
        };
        let text = std::str::from_utf8(found.value())
            .map_err(|_| StoreError::ConfigNotText { key: key.clone() })?;
        NetConfig::parse_and_check(text).map_err(|error| StoreError::ConfigInvalid {
            source_name: format!("etcd key {key}"),
            error,
        })
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let mut kv = self.client().await?.kv_client();
        let resp = self
            .rpc(
                "list the leases",
                kv.get(
                    self.keys.subnets.clone(),
                    Some(GetOptions::new().with_prefix()),
                ),
            )
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Listing::new(
            &self.keys,
            revision,
            resp.kvs().iter().map(Kv::from),
        ))
    }

    /// The lease this public IP holds, if any (to keep its VtepMAC).
    pub async fn find_own(&self, own: OwnAddress) -> Result<Option<Lease>, StoreError> {
        Ok(self
            .list()
            .await?
            .leases
            .into_iter()
            .map(|s| s.lease)
            .find(|l| own.owns(l)))
    }

    /// Grants an etcd lease of the configured TTL: (id, granted TTL).
    async fn grant(&self) -> Result<(i64, Duration), StoreError> {
        let mut leases = self.client().await?.lease_client();
        let ttl = i64::try_from(self.options.lease_ttl.as_secs()).unwrap_or(i64::MAX);
        let resp = self
            .rpc("grant an etcd lease", leases.grant(ttl, None))
            .await?;
        let granted = u64::try_from(resp.ttl()).unwrap_or(0);
        Ok((resp.id(), Duration::from_secs(granted)))
    }

    /// Revokes a lease this store granted but did not use (best effort: unused, it expires anyway).
    async fn revoke(&self, id: i64) {
        if let Ok(client) = self.client().await {
            let mut leases = client.lease_client();
            if let Err(e) = self
                .rpc("revoke an unused etcd lease", leases.revoke(id))
                .await
            {
                debug!(lease = id, error = %e, "could not revoke an unused etcd lease; it will expire");
            }
        }
    }

    /// Acquires a lease with flannel's rules (see the module docs).
    pub async fn acquire(
        &self,
        config: &NetConfig,
        req: &AcquireRequest,
    ) -> Result<Lease, StoreError> {
        req.check(config)?;
        for _ in 0..RACE_RETRIES {
            let listing = self.list().await?;
            let plan = allocate::plan(
                config,
                &listing.held(),
                &listing.bad_subnets,
                &req.request(),
                &mut rand::rng(),
            )?;
            if let Some(old) = plan.delete {
                info!(key = %old, public_ip = %req.attrs.public_ip, public_ipv6 = ?req.attrs.public_ipv6, "found a lease for this public IP that does not fit the current config; deleting it");
                let mut kv = self.client().await?.kv_client();
                self.rpc(
                    "delete the old lease",
                    kv.delete(self.keys.subnet(old), None),
                )
                .await?;
            }
            match plan.claim {
                Claim::Reuse { key, reservation } => {
                    info!(key = %key, public_ip = %req.attrs.public_ip, public_ipv6 = ?req.attrs.public_ipv6, reservation, "found the lease of this public IP; reusing it");
                    return self.put_existing(key, &req.attrs, reservation).await;
                }
                Claim::Create { key, previous } => {
                    if let Some(lease) = self.create(key, &req.attrs).await? {
                        if previous {
                            info!(key = %key, "reusing the previous subnet from the subnet file");
                        } else {
                            info!(key = %key, public_ip = %req.attrs.public_ip, public_ipv6 = ?req.attrs.public_ipv6, "allocated a new lease");
                        }
                        return Ok(lease);
                    }
                    info!(key = %key, "another node claimed the subnet first; trying again");
                }
            }
        }
        Err(StoreError::TooManyConflicts)
    }

    /// flannel's `updateSubnet`: put the value on the key again with a fresh
    /// etcd lease (a reservation stays without one).
    async fn put_existing(
        &self,
        subnets: SubnetKey,
        attrs: &LeaseAttrs,
        reservation: bool,
    ) -> Result<Lease, StoreError> {
        let key = self.keys.subnet(subnets);
        let (options, expiration) = if reservation {
            (None, None)
        } else {
            let (id, ttl) = self.grant().await?;
            (
                Some(PutOptions::new().with_lease(id)),
                Some(SystemTime::now() + ttl),
            )
        };
        let mut kv = self.client().await?.kv_client();
        self.rpc("write the lease", kv.put(key, attrs.to_json(), options))
            .await?;
        Ok(Lease {
            subnet: subnets.subnet,
            ipv6_subnet: subnets.ipv6_subnet,
            attrs: attrs.clone(),
            expiration,
        })
    }

    /// flannel's `createSubnet`: claim the key only if it does not exist. `None`: taken.
    async fn create(
        &self,
        subnets: SubnetKey,
        attrs: &LeaseAttrs,
    ) -> Result<Option<Lease>, StoreError> {
        let key = self.keys.subnet(subnets);
        let (id, ttl) = self.grant().await?;
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                attrs.to_json(),
                Some(PutOptions::new().with_lease(id)),
            )]);
        let mut kv = self.client().await?.kv_client();
        // On an error the outcome is unknown (etcd may have committed): the new
        // etcd lease is left to expire rather than revoked, since revoking it
        // could delete a claim that did succeed. A retry then finds the key held
        // by this public IP and reuses it.
        let claimed = self.rpc("claim the subnet", kv.txn(txn)).await?.succeeded();
        if !claimed {
            self.revoke(id).await;
            return Ok(None);
        }
        Ok(Some(Lease {
            subnet: subnets.subnet,
            ipv6_subnet: subnets.ipv6_subnet,
            attrs: attrs.clone(),
            expiration: Some(SystemTime::now() + ttl),
        }))
    }

    /// Renews `own`: the same value with a fresh etcd lease, only while the key
    /// exists. `Ok(None)`: the key is gone.
    async fn renew(&self, own: &Lease) -> Result<Option<Lease>, StoreError> {
        let key = self.keys.lease(own);
        let (id, ttl) = self.grant().await?;
        // Only while the key still holds this node's value: a key deleted (and
        // perhaps re-created by another node) in between is not taken over.
        let value = own.attrs.to_json();
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, value.clone())])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(id)),
            )]);
        let mut kv = self.client().await?.kv_client();
        // An error leaves the outcome unknown: the new etcd lease is left to
        // expire, not revoked (revoking could delete a renewal that succeeded).
        let renewed = self.rpc("renew the lease", kv.txn(txn)).await?.succeeded();
        if !renewed {
            self.revoke(id).await;
            return Ok(None);
        }
        Ok(Some(Lease {
            expiration: Some(SystemTime::now() + ttl),
            ..own.clone()
        }))
    }

    /// Runs the watch and the renewal until the agent goes away or the lease is revoked.
    pub fn spawn(
        self: Arc<Self>,
        own: Lease,
        renew: RenewPolicy,
        tx: UpdateSender,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let own_key = self.keys.lease(&own);
            tokio::select! {
                () = self.watch_loop(own_key, &tx) => {}
                () = self.renew_loop(own, renew, &tx) => {}
            }
        })
    }

    /// Counts a failure and logs it — loudly at the start of an outage and
    /// once a minute after, quietly otherwise; the caller backs off and retries.
    fn trouble(&self, reconnect: &mut Reconnect, e: &StoreError, doing: &str) {
        self.stats.set_connected(false);
        self.stats.error(e);
        if reconnect.failed(std::time::Instant::now()) {
            warn!(error = %e, "{doing}; keeping the last known leases and retrying (reported again in a minute if it persists)");
        } else {
            debug!(error = %e, "{doing}; retrying");
        }
    }

    fn reachable_again(&self, reconnect: &mut Reconnect, revision: i64) {
        self.stats.set_connected(true);
        if let Some((outage, failures)) = reconnect.connected(std::time::Instant::now()) {
            info!(
                revision,
                failed_attempts = failures,
                "etcd is reachable again after {:.1} s",
                outage.as_secs_f64()
            );
        }
    }

    fn report_bad(&self, bad: &[BadRecord]) {
        for b in bad {
            self.stats.bad_record(&b.error);
            warn!(key = %b.key, kind = b.error.kind(), error = %b.error, "skipping a bad lease record in etcd");
        }
    }

    /// Sends an update; false when the loop should stop (agent gone, or revoked).
    async fn send(&self, tx: &UpdateSender, applied: Applied) -> bool {
        self.report_bad(&applied.new_bad);
        let Some(update) = applied.update else {
            return true;
        };
        let last = matches!(update, StoreUpdate::OwnLeaseRevoked(_));
        if let StoreUpdate::OwnLeaseRevoked(why) = &update {
            error!("Lease has been revoked. Shutting down daemon. ({why})");
        }
        self.stats.event(SystemTime::now());
        tx.send(update).await.is_ok() && !last
    }

    async fn watch_loop(&self, own_key: String, tx: &UpdateSender) {
        let mut state = WatchState::new(self.keys.clone(), own_key);
        let mut reconnect = Reconnect::default();
        let mut relist = true;
        while !tx.is_closed() {
            if relist {
                match self.list().await {
                    Ok(listing) => {
                        relist = false;
                        self.reachable_again(&mut reconnect, listing.revision);
                        self.stats.snapshots.fetch_add(1, Relaxed);
                        info!(
                            revision = listing.revision,
                            leases = listing.leases.len(),
                            "listed the leases in etcd"
                        );
                        if !self.send(tx, state.reset(listing)).await {
                            return;
                        }
                    }
                    Err(e) => {
                        self.trouble(&mut reconnect, &e, "cannot list the leases in etcd");
                        tokio::time::sleep(reconnect.next_delay()).await;
                        continue;
                    }
                }
            }
            match self.watch_once(&mut state, tx, &mut reconnect).await {
                WatchEnd::Stop => return,
                WatchEnd::Compacted => relist = true,
                WatchEnd::Broken(e) => {
                    let doing = format!(
                        "the etcd watch broke; reconnecting from revision {}",
                        state.revision + 1
                    );
                    self.trouble(&mut reconnect, &e, &doing);
                    tokio::time::sleep(reconnect.next_delay()).await;
                }
            }
        }
    }

    /// Opens one watch from `state.revision + 1` and applies what it reports until it ends.
    async fn watch_once(
        &self,
        state: &mut WatchState,
        tx: &UpdateSender,
        reconnect: &mut Reconnect,
    ) -> WatchEnd {
        let from = state.revision + 1;
        let client = match self.client().await {
            Ok(client) => client,
            Err(e) => return WatchEnd::Broken(e),
        };
        let mut watch = client.watch_client();
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut stream = match self
            .rpc(
                "watch the leases",
                watch.watch(self.keys.subnets.clone(), Some(options)),
            )
            .await
        {
            Ok(stream) => stream,
            Err(e) => return WatchEnd::Broken(e),
        };
        debug!(revision = from, "watching the leases in etcd");
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    return WatchEnd::Broken(StoreError::WatchEnded {
                        how: "closed the watch stream".into(),
                    });
                }
                Err(e) if is_compacted_error(&e) => {
                    warn!(revision = from, error = %e, "etcd watch fell behind compaction; re-listing the leases");
                    return WatchEnd::Compacted;
                }
                Err(e) => return WatchEnd::Broken(self.failure("watch the leases", e)),
            };
            if resp.compact_revision() != 0 {
                warn!(
                    revision = from,
                    compacted = resp.compact_revision(),
                    "etcd watch fell behind compaction; re-listing the leases"
                );
                return WatchEnd::Compacted;
            }
            if resp.canceled() {
                return WatchEnd::Broken(StoreError::WatchEnded {
                    how: format!("cancelled the watch: {}", resp.cancel_reason()),
                });
            }
            if resp.created() {
                self.reachable_again(reconnect, state.revision);
            }
            let changes: Vec<Change> = resp
                .events()
                .iter()
                .filter_map(|event| {
                    event.kv().map(|kv| Change {
                        deleted: event.event_type() == EventType::Delete,
                        kv: Kv::from(kv),
                    })
                })
                .collect();
            if changes.is_empty() {
                continue;
            }
            if !self.send(tx, state.apply(changes)).await {
                return WatchEnd::Stop;
            }
        }
    }

    async fn renew_loop(&self, mut own: Lease, renew: RenewPolicy, tx: &UpdateSender) {
        let Some(mut at) = next_renewal(Some(&own), &renew, SystemTime::now()) else {
            info!(key = %own.key(), "the lease is a reservation (no etcd lease); it is never renewed");
            return std::future::pending().await;
        };
        loop {
            let wait = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            match self.renew(&own).await {
                Ok(Some(renewed)) => {
                    own = renewed;
                    self.stats.renewals.fetch_add(1, Relaxed);
                    let expires = own
                        .expiration
                        .and_then(|t| jiff::Timestamp::try_from(t).ok())
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    info!(key = %own.key(), "Lease renewed, new expiration: {expires}");
                    if tx.send(StoreUpdate::Renewed(own.clone())).await.is_err() {
                        return;
                    }
                    at = next_renewal(Some(&own), &renew, SystemTime::now())
                        .unwrap_or_else(|| SystemTime::now() + renew.retry);
                }
                Ok(None) => {
                    let why = format!(
                        "etcd key {} is gone (deleted or expired) and was not renewed",
                        self.keys.lease(&own)
                    );
                    let _ = self
                        .send(
                            tx,
                            Applied {
                                update: Some(StoreUpdate::OwnLeaseRevoked(why)),
                                new_bad: Vec::new(),
                            },
                        )
                        .await;
                    return;
                }
                Err(e) => {
                    self.stats.error(&e);
                    error!(error = %e, "Error renewing lease (trying again in {} s)", renew.retry.as_secs());
                    at = next_renewal(None, &renew, SystemTime::now())
                        .unwrap_or_else(|| SystemTime::now() + renew.retry);
                }
            }
        }
    }
}

/// The watch's reconnection state: the backoff (100 ms doubling to 5 s), and
/// the current outage, so it is reported when it starts, once a minute while
/// it lasts and when it ends rather than at every attempt.
#[derive(Debug)]
struct Reconnect {
    backoff: Duration,
    since: Option<std::time::Instant>,
    failures: u64,
    last_warned: Option<std::time::Instant>,
}

/// How often a lasting outage is reported.
const OUTAGE_REPORT_EVERY: Duration = Duration::from_secs(60);

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            backoff: BACKOFF_MIN,
            since: None,
            failures: 0,
            last_warned: None,
        }
    }
}

impl Reconnect {
    /// A failed attempt; true when it deserves a warning.
    fn failed(&mut self, now: std::time::Instant) -> bool {
        self.since.get_or_insert(now);
        self.failures += 1;
        let warn = self
            .last_warned
            .is_none_or(|t| now.duration_since(t) >= OUTAGE_REPORT_EVERY);
        if warn {
            self.last_warned = Some(now);
        }
        warn
    }

    /// Connected: resets the backoff; the outage's length and failed attempts, if there was one.
    fn connected(&mut self, now: std::time::Instant) -> Option<(Duration, u64)> {
        self.backoff = BACKOFF_MIN;
        self.last_warned = None;
        let since = self.since.take()?;
        Some((
            now.duration_since(since),
            std::mem::take(&mut self.failures),
        ))
    }

    /// The pause before the next attempt (and doubles the one after).
    fn next_delay(&mut self) -> Duration {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        delay
    }
}

/// Whether etcd refused who we are (wrong password, no permission), as
/// opposed to being unreachable: `ErrGRPCAuthFailed` is `InvalidArgument`.
fn is_refused_credentials(code: tonic::Code, message: &str) -> bool {
    match code {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => true,
        tonic::Code::InvalidArgument => message.contains("authentication failed"),
        _ => false,
    }
}

/// etcd's `ErrCompacted` as a gRPC error ("mvcc: required revision has been compacted").
fn is_compacted_error(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::OutOfRange && status.message().contains("compacted")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lease::VxlanBackendData;
    use crate::core::mac::MacAddr;
    use ipnet::Ipv4Net;
    use std::net::Ipv4Addr;

    const DOC: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    fn keys() -> Keys {
        Keys::new(DEFAULT_PREFIX)
    }

    fn attrs(last: u8) -> LeaseAttrs {
        LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 168, 0, last),
            &VxlanBackendData {
                vni: 1,
                vtep_mac: MacAddr([0x0e, 0, 0, 0, 0, last]),
            },
        )
    }

    fn kv(name: &str, value: &str, lease: i64, rev: i64) -> Kv {
        Kv {
            key: format!("/coreos.com/network/subnets/{name}").into_bytes(),
            value: value.as_bytes().to_vec(),
            lease,
            mod_revision: rev,
        }
    }

    fn lease_kv(third: u8, last: u8, lease: i64, rev: i64) -> Kv {
        kv(
            &format!("10.244.{third}.0-24"),
            &attrs(last).to_json(),
            lease,
            rev,
        )
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn keys_are_joined_like_go_path_join() {
        let k = keys();
        assert_eq!(k.config, "/coreos.com/network/config");
        assert_eq!(k.subnets, "/coreos.com/network/subnets/");
        assert_eq!(Keys::new("/coreos.com/network/"), k);
        assert_eq!(Keys::new("//coreos.com//network//"), k);
        assert_eq!(Keys::new("/").config, "/config");
        assert_eq!(Keys::new("").config, "config");
        assert_eq!(Keys::new("weft").subnets, "weft/subnets/");
        // Found by the etcd fuzz target (a path.Clean model): `..` is applied,
        // as flannel's path.Join applies it.
        assert_eq!(Keys::new("/coreos.com/x/../network/."), k);
        assert_eq!(Keys::new("/../a").config, "/a/config");
        assert_eq!(Keys::new("a/../..").config, "../config");
        assert_eq!(Keys::new("a/..").subnets, "subnets/");
        let lease = Lease::from_record("10.5.34.0-24", DOC, None).unwrap();
        assert_eq!(k.lease(&lease), "/coreos.com/network/subnets/10.5.34.0-24");
        assert_eq!(
            k.subnet(SubnetKey::v4(net("10.5.34.0/24"))),
            k.lease(&lease)
        );
    }

    #[test]
    fn flannels_record_is_read_and_written_byte_for_byte() {
        let lease = parse_kv(&keys(), &kv("10.5.34.0-24", DOC, 7, 1)).unwrap();
        assert_eq!(lease.subnet, net("10.5.34.0/24"));
        assert_eq!(lease.attrs.to_json(), DOC);
    }

    #[test]
    fn bad_records_are_classified_by_kind() {
        let k = keys();
        let kind = |kv: Kv| parse_kv(&k, &kv).unwrap_err().kind();
        assert_eq!(kind(kv("garbage", DOC, 0, 1)), "bad_key");
        assert_eq!(kind(kv("10.5.34.0-24/extra", DOC, 0, 1)), "bad_key");
        assert_eq!(kind(kv("10.5.34.0-24", "{not json", 0, 1)), "invalid_json");
        let mut not_utf8 = kv("10.5.34.0-24", "", 0, 1);
        not_utf8.value = vec![0xff, 0xfe];
        assert_eq!(kind(not_utf8), "invalid_json");
        assert_eq!(
            kind(kv(
                "10.5.34.0-24",
                r#"{"PublicIP":"999.1.2.3","BackendType":"vxlan"}"#,
                0,
                1
            )),
            "bad_public_ip"
        );
        // Another backend is a valid record; the vxlan backend skips it (and counts it).
        let other = parse_kv(
            &k,
            &kv(
                "10.5.34.0-24",
                r#"{"PublicIP":"10.0.0.1","BackendType":"bogus"}"#,
                0,
                1,
            ),
        )
        .unwrap();
        assert_eq!(
            other.attrs.vxlan_data().unwrap_err().kind(),
            "foreign_backend"
        );
    }

    #[test]
    fn listing_separates_good_and_bad_and_keeps_bad_subnets_taken() {
        let listing = Listing::new(
            &keys(),
            42,
            vec![
                lease_kv(1, 1, 5, 3),
                kv("10.244.2.0-24", "{oops", 5, 4),
                kv("garbage", DOC, 0, 5),
            ],
        );
        assert_eq!(listing.revision, 42);
        assert_eq!(listing.leases.len(), 1);
        assert_eq!(listing.leases[0].lease_id, 5);
        assert_eq!(listing.bad.len(), 2);
        assert_eq!(
            listing.bad_subnets,
            vec![SubnetKey::v4(net("10.244.2.0/24"))]
        );
    }

    #[test]
    fn a_listing_is_what_allocation_sees() {
        let listing = Listing::new(
            &keys(),
            9,
            vec![
                lease_kv(3, 1, 77, 2),
                lease_kv(4, 2, 0, 3),
                kv("10.244.5.0-24", "{bad", 1, 3),
            ],
        );
        let held = listing.held();
        assert_eq!(
            held.iter()
                .map(|h| (h.key.subnet, h.reservation))
                .collect::<Vec<_>>(),
            [(net("10.244.3.0/24"), false), (net("10.244.4.0/24"), true)]
        );
        assert_eq!(listing.bad_subnets, [SubnetKey::v4(net("10.244.5.0/24"))]);
    }

    /// An IPv6-only lease on fd10:0:0:`n`::/64 of node fd00::`n`.
    fn v6_only_kv(n: u8, lease: i64, rev: i64) -> Kv {
        let attrs = LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some(format!("fd00::{n}").parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: Some(
                VxlanBackendData {
                    vni: 1,
                    vtep_mac: MacAddr([0x0e, 6, 0, 0, 0, n]),
                }
                .to_json(),
            ),
        };
        kv(
            &format!("0.0.0.0-0&fd10:0:0:{n}::-64"),
            &attrs.to_json(),
            lease,
            rev,
        )
    }

    #[test]
    fn ipv6_only_records_are_held_by_public_ipv6_and_their_v6_vtep_mac() {
        let listing = Listing::new(&keys(), 9, vec![v6_only_kv(1, 7, 2), v6_only_kv(2, 0, 3)]);
        assert!(listing.bad.is_empty(), "{:?}", listing.bad);
        let held = listing.held();
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].key.to_string(), "0.0.0.0-0&fd10:0:0:1::-64");
        assert_eq!(held[0].public_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(held[0].public_ipv6, Some("fd00::1".parse().unwrap()));
        assert_eq!(held[0].vtep_mac, Some(MacAddr([0x0e, 6, 0, 0, 0, 1])));
        assert!(!held[0].reservation && held[1].reservation);
        assert_eq!(
            keys().lease(&listing.leases[0].lease),
            "/coreos.com/network/subnets/0.0.0.0-0&fd10:0:0:1::-64"
        );
    }

    #[test]
    fn an_ipv6_only_own_key_is_watched_and_its_deletion_revokes() {
        let own = "/coreos.com/network/subnets/0.0.0.0-0&fd10:0:0:1::-64";
        let mut s = WatchState::new(keys(), own.into());
        match s
            .reset(Listing::new(&keys(), 10, vec![v6_only_kv(1, 1, 2)]))
            .update
        {
            Some(StoreUpdate::Snapshot(leases)) => assert_eq!(leases.len(), 1),
            other => panic!("{other:?}"),
        }
        // Peers: added, then removed by their whole IPv6-only key.
        match s.apply(vec![put(v6_only_kv(2, 1, 11))]).update {
            Some(StoreUpdate::Events(e)) => assert!(
                matches!(&e[..], [LeaseEvent::Added(l)] if !l.has_ipv4() && l.attrs.public_ipv6 == Some("fd00::2".parse().unwrap()))
            ),
            other => panic!("{other:?}"),
        }
        match s.apply(vec![del("0.0.0.0-0&fd10:0:0:2::-64", 12)]).update {
            Some(StoreUpdate::Events(e)) => assert_eq!(
                e,
                [LeaseEvent::Removed(SubnetKey::v6_only(
                    "fd10:0:0:2::/64".parse().unwrap()
                ))]
            ),
            other => panic!("{other:?}"),
        }
        // Another node's IPv6-only key deleted is no revocation (all share 0.0.0.0-0).
        s.apply(vec![put(v6_only_kv(3, 1, 13))]);
        assert!(matches!(
            s.apply(vec![del("0.0.0.0-0&fd10:0:0:3::-64", 14)]).update,
            Some(StoreUpdate::Events(_))
        ));
        let applied = s.apply(vec![del("0.0.0.0-0&fd10:0:0:1::-64", 15)]);
        assert!(
            matches!(applied.update, Some(StoreUpdate::OwnLeaseRevoked(why)) if why.contains("0.0.0.0-0&fd10:0:0:1::-64"))
        );
        // A relist without it: revoked too.
        let mut s = WatchState::new(keys(), own.into());
        assert!(matches!(
            s.reset(Listing::new(&keys(), 20, vec![v6_only_kv(2, 1, 3)]))
                .update,
            Some(StoreUpdate::OwnLeaseRevoked(_))
        ));
    }

    fn state() -> WatchState {
        WatchState::new(keys(), "/coreos.com/network/subnets/10.244.1.0-24".into())
    }

    fn put(k: Kv) -> Change {
        Change {
            deleted: false,
            kv: k,
        }
    }

    fn del(name: &str, rev: i64) -> Change {
        Change {
            deleted: true,
            kv: kv(name, "", 0, rev),
        }
    }

    #[test]
    fn a_listing_is_a_snapshot_unless_the_own_key_is_gone() {
        let mut s = state();
        let applied = s.reset(Listing::new(
            &keys(),
            10,
            vec![
                lease_kv(1, 1, 1, 2),
                lease_kv(2, 2, 1, 3),
                kv("x", "{", 0, 4),
            ],
        ));
        match applied.update {
            Some(StoreUpdate::Snapshot(leases)) => assert_eq!(leases.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(applied.new_bad.len(), 1);
        assert_eq!(s.revision, 10);
        // The same bad record in the next listing is not reported again.
        let applied = s.reset(Listing::new(
            &keys(),
            11,
            vec![lease_kv(1, 1, 1, 2), kv("x", "{", 0, 4)],
        ));
        assert!(applied.new_bad.is_empty());
        let applied = s.reset(Listing::new(&keys(), 12, vec![lease_kv(2, 2, 1, 3)]));
        assert!(matches!(
            applied.update,
            Some(StoreUpdate::OwnLeaseRevoked(_))
        ));
    }

    #[test]
    fn changes_become_events_and_track_the_revision() {
        let mut s = state();
        s.reset(Listing::new(&keys(), 10, vec![lease_kv(1, 1, 1, 2)]));
        let applied = s.apply(vec![put(lease_kv(2, 2, 1, 11)), put(lease_kv(3, 3, 1, 12))]);
        match applied.update {
            Some(StoreUpdate::Events(events)) => {
                assert_eq!(events.len(), 2);
                assert!(
                    matches!(&events[0], LeaseEvent::Added(l) if l.subnet == net("10.244.2.0/24"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.revision, 12);
        let applied = s.apply(vec![del("10.244.2.0-24", 13)]);
        match applied.update {
            Some(StoreUpdate::Events(events)) => {
                assert!(
                    matches!(&events[..], [LeaseEvent::Removed(l)] if l.subnet == net("10.244.2.0/24"))
                );
            }
            other => panic!("{other:?}"),
        }
        // Deleting a key that never was a lease says nothing.
        assert_eq!(s.apply(vec![del("10.244.99.0-24", 14)]).update, None);
        assert_eq!(s.revision, 14);
        // The own key deleted: revoked.
        let applied = s.apply(vec![del("10.244.1.0-24", 15)]);
        assert!(
            matches!(applied.update, Some(StoreUpdate::OwnLeaseRevoked(why)) if why.contains("10.244.1.0-24"))
        );
    }

    #[test]
    fn bad_changes_are_reported_once_and_remove_a_lease_they_overwrite() {
        let mut s = state();
        s.reset(Listing::new(
            &keys(),
            10,
            vec![lease_kv(1, 1, 1, 2), lease_kv(2, 2, 1, 3)],
        ));
        let applied = s.apply(vec![put(kv("garbage", DOC, 0, 11))]);
        assert_eq!(applied.update, None);
        assert_eq!(applied.new_bad[0].error.kind(), "bad_key");
        assert!(
            s.apply(vec![put(kv("garbage", DOC, 0, 12))])
                .new_bad
                .is_empty()
        );
        // A good lease overwritten with garbage is removed, as a relist would do.
        let applied = s.apply(vec![put(kv("10.244.2.0-24", "{", 0, 13))]);
        assert_eq!(applied.new_bad.len(), 1);
        assert!(matches!(
            applied.update,
            Some(StoreUpdate::Events(ref e)) if matches!(&e[..], [LeaseEvent::Removed(l)] if l.subnet == net("10.244.2.0/24"))
        ));
        // Fixed again: added, and a later breakage is reported afresh.
        assert!(matches!(
            s.apply(vec![put(lease_kv(2, 2, 1, 14))]).update,
            Some(StoreUpdate::Events(_))
        ));
        assert_eq!(
            s.apply(vec![put(kv("10.244.2.0-24", "{", 0, 15))])
                .new_bad
                .len(),
            1
        );
    }

    #[test]
    fn refused_credentials_are_told_apart_from_outages() {
        use tonic::Code;
        let auth_failed = "etcdserver: authentication failed, invalid user ID or password";
        assert!(is_refused_credentials(Code::InvalidArgument, auth_failed));
        assert!(is_refused_credentials(
            Code::PermissionDenied,
            "etcdserver: permission denied"
        ));
        assert!(is_refused_credentials(
            Code::Unauthenticated,
            "etcdserver: invalid auth token"
        ));
        assert!(!is_refused_credentials(
            Code::InvalidArgument,
            "etcdserver: key is not provided"
        ));
        assert!(!is_refused_credentials(
            Code::Unavailable,
            "etcdserver: no leader"
        ));
    }

    #[test]
    fn outages_back_off_and_are_reported_at_start_each_minute_and_end() {
        let t0 = std::time::Instant::now();
        let mut r = Reconnect::default();
        assert_eq!(r.connected(t0), None, "no outage, nothing to report");
        let delays: Vec<u64> = (0..8).map(|_| r.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert!(r.failed(t0), "the first failure is reported");
        assert!(!r.failed(t0 + Duration::from_secs(5)));
        assert!(!r.failed(t0 + Duration::from_secs(59)));
        assert!(r.failed(t0 + Duration::from_secs(61)), "then once a minute");
        assert_eq!(
            r.connected(t0 + Duration::from_secs(70)),
            Some((Duration::from_secs(70), 4))
        );
        assert_eq!(r.next_delay(), BACKOFF_MIN, "backoff reset");
        assert!(
            r.failed(t0 + Duration::from_secs(71)),
            "a new outage is reported at once"
        );
    }

    #[test]
    fn renewal_schedule() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let renew = RenewPolicy {
            margin: Duration::from_secs(3600),
            retry: Duration::from_secs(60),
        };
        let lease = |exp: Option<SystemTime>| Lease {
            expiration: exp,
            ..Lease::from_record("10.5.34.0-24", DOC, None).unwrap()
        };
        assert_eq!(
            next_renewal(Some(&lease(Some(now + SUBNET_TTL))), &renew, now),
            Some(now + SUBNET_TTL - Duration::from_secs(3600))
        );
        assert_eq!(next_renewal(None, &renew, now), Some(now + renew.retry));
        assert_eq!(next_renewal(Some(&lease(None)), &renew, now), None);
        // Never back to back, whatever the lease says.
        assert_eq!(
            next_renewal(Some(&lease(Some(now))), &renew, now),
            Some(now + MIN_RENEW_PAUSE)
        );
    }

    fn options(endpoints: &[&str]) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            prefix: DEFAULT_PREFIX.into(),
            lease_ttl: SUBNET_TTL,
            ..EtcdOptions::default()
        }
    }

    #[test]
    fn options_are_checked_with_messages_naming_the_flags() {
        options(&["http://127.0.0.1:2379", "127.0.0.2:2379"])
            .check(60)
            .unwrap();
        let err = |o: EtcdOptions| o.check(60).unwrap_err();
        assert!(err(options(&["http://a:2379", "https://b:2379"])).contains("mixes"));
        assert!(err(options(&["unix:///run/etcd.sock"])).contains("not an http"));
        let mut o = options(&["https://a:2379"]);
        o.cert_file = Some("/c.pem".into());
        assert!(err(o.clone()).contains("--etcd-keyfile"));
        o.key_file = Some("/k.pem".into());
        o.check(60).unwrap();
        o.endpoints = vec!["http://a:2379".into()];
        assert!(err(o).contains("need https://"));
        let mut o = options(&["http://a:2379"]);
        o.password = Some("secret".into());
        assert!(err(o.clone()).contains("--etcd-username"));
        assert!(!format!("{o:?}").contains("secret"), "password redacted");
        let mut o = options(&["a:2379"]);
        o.ca_file = Some("/ca.pem".into());
        assert_eq!(o.normalized_endpoints(), vec!["https://a:2379"]);
        assert!(options(&[]).check(60).is_err());
    }

    #[test]
    fn a_missing_tls_file_is_a_clear_error() {
        let mut o = options(&["https://a:2379"]);
        o.ca_file = Some("/nonexistent/ca.pem".into());
        let err = EtcdStore::open(o, Arc::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot read the etcd CA file /nonexistent/ca.pem"),
            "{err}"
        );
        EtcdStore::open(options(&["http://127.0.0.1:1"]), Arc::default()).unwrap();
    }
}
