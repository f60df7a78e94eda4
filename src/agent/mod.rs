//! The node agent: wires the lease store, the kernel state and the dataplane
//! together in flannel's startup order — interface → store → lease → VTEP
//! device → current leases programmed → `subnet.env` written last (that is
//! readiness) → watch — and then keeps them in step.
//!
//! Error policy of the control loop: a store that becomes unreachable is
//! logged and shown as unhealthy while the dataplane keeps the last known
//! leases; a route that cannot be programmed is retried every resync; a
//! revoked lease or a failed dataplane ends the process with a non-zero status
//! so its supervisor restarts it — except a VTEP device someone deleted, which
//! is recreated in place (flannel issue #869: same VtepMAC, address, MTU, and
//! every peer's route replayed), noticed by an `RTM_DELLINK` watch, the
//! workers' TAP errors, or the resync. The same link watch brings the device
//! back up when someone sets it down (the kernel drops its routes then: they
//! are put back), and follows the underlay interface: a new MTU is applied to
//! the device and `subnet.env` in place; the loss of the address the lease
//! announces, replaced by another, ends the process (the supervisor restarts
//! weftd, which takes its lease over under the new address, keeping the subnet
//! and VtepMAC). SIGTERM/SIGINT stop cleanly and keep the device, its routes
//! and the lease for a seamless restart.

pub mod blackhole;
pub mod cli;
pub mod dual;
pub mod iface;
pub mod masq;
pub mod metrics;
pub mod routes;
pub mod state;
pub mod status;
pub mod tunables;
pub mod underlay;

use crate::core::config::NetConfig;
use crate::core::lease::{
    Lease, LeaseAttrs, LeaseEvent, LeaseId, NO_IPV4_SUBNET, VxlanBackendData,
};
use crate::core::log_budget::LogBudget;
use crate::core::mac::MacAddr;
use crate::core::router::{LocalVtep, Peer, Router, Tables};
use crate::core::subnet_env::SubnetEnv;
use crate::core::watcher::{LeaseWatcher, PeerChange, Peers};
use crate::dataplane::tap::Tap;
use crate::dataplane::{Dataplane, DataplaneConfig, DataplaneError};
use crate::netlink::{LinkEvent, LinkInfo, Netlink};
use crate::subnet::local::LocalStore;
use crate::subnet::{AcquireRequest, RenewPolicy, Store, StoreStats, StoreUpdate};
use cli::RunArgs;
use ipnet::Ipv4Net;
use routes::RouteKind;
use state::{AgentState, DeviceInfo, NodeInfo, OwnLease, PeerStatus, unix_secs};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use tunables::Tunables;
use underlay::UnderlayAddress;

/// Why the agent stopped. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Flags that do not fit together.
    #[error("{reason}")]
    Usage {
        /// Which flags, and what to change.
        reason: String,
    },
    /// The `--tunables` file cannot be used.
    #[error("{reason}")]
    Tunables {
        /// The file and what is wrong in it.
        reason: String,
    },
    /// The network config cannot be read (or is not flannel's).
    #[error("{0}")]
    NetworkConfig(#[source] crate::subnet::StoreError),
    /// The network config selects another backend, or a bad vxlan section.
    #[error("{0}")]
    NotVxlan(#[source] crate::core::config::ConfigError),
    /// The network config enables neither family usably.
    #[error(
        "the config enables no usable network: set Network (EnableIPv4 is on by default), or \"EnableIPv4\": false with \"EnableIPv6\": true and an IPv6Network for an IPv6-only network"
    )]
    NoNetwork,
    /// The store handed out a lease without the IPv6 subnet asked for.
    #[error(
        "EnableIPv6 is set but the lease {key} has no IPv6 subnet; check the store's IPv6Network (or the node's podCIDRs in kube mode) and restart weftd"
    )]
    NoIpv6Subnet {
        /// The lease.
        key: String,
    },
    /// The store handed out a lease of the other kind: IPv6-only for a
    /// network with IPv4, or with IPv4 for an IPv6-only one.
    #[error(
        "the store handed out the lease {key}, but the net-conf has EnableIPv4 {enable_ipv4}: a lease with an IPv4 subnet is for networks with IPv4, one keyed 0.0.0.0-0&... for IPv6-only ones; check that every node reads the same net-conf (or the node's podCIDRs in kube mode) and restart weftd"
    )]
    LeaseFamily {
        /// The lease.
        key: String,
        /// The config's `EnableIPv4`.
        enable_ipv4: bool,
    },
    /// No interface fits `--iface`, `--iface-regex`, `--iface-can-reach`, `--public-ip`.
    #[error("choosing the external interface: {reason}")]
    Interface {
        /// What was looked for and not found.
        reason: String,
    },
    /// The lease store failed.
    #[error(transparent)]
    Store(#[from] crate::subnet::StoreError),
    /// No lease could be acquired.
    #[error("failed to acquire lease: {0}")]
    Lease(#[source] crate::subnet::StoreError),
    /// The TAP device disappeared between its creation and its configuration.
    #[error("{name} vanished right after it was created")]
    TapVanished {
        /// The device.
        name: String,
    },
    /// Programming the kernel failed.
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    /// The masquerade and forward rules could not be installed.
    #[error("failed to set up the masquerade rules: {0}")]
    Masquerade(#[source] masq::MasqError),
    /// The dataplane failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// A file or socket the agent needs failed.
    #[error("{what}: {source}")]
    Io {
        /// What the agent tried.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Someone deleted this node's lease (flannel's message).
    #[error("Lease has been revoked. Shutting down daemon. ({why})")]
    Revoked {
        /// How the store saw it go.
        why: String,
    },
    /// The status socket could not be claimed (another agent holds it, or a file is in the way).
    #[error(transparent)]
    StatusSocket(#[from] status::ServeError),
    /// The store's task ended without a reason.
    #[error("the lease store task stopped unexpectedly")]
    StoreStopped,
    /// The underlay address the lease announces was replaced by another.
    #[error(
        "the address of {iface} changed from {old} to {new}: peers send to {old}, which this node no longer has; exiting so that weftd restarts on {new} (its subnet and VtepMAC are kept, the lease is rewritten with the new address)"
    )]
    UnderlayAddressChanged {
        /// The external interface.
        iface: String,
        /// The address weftd listened on.
        old: std::net::IpAddr,
        /// The address the interface has now.
        new: std::net::IpAddr,
    },
    /// Kube mode: the first list of nodes did not arrive in time.
    #[error(
        "error waiting for nodeController to sync state: timed out after {seconds} s (set CONT_WHEN_CACHE_NOT_READY=true to start anyway)"
    )]
    CacheNotReady {
        /// The wait (tunable `agent.kube_sync_timeout_seconds`).
        seconds: u64,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// Runs the agent until a signal (Ok) or a fatal error.
pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    args.validate()
        .map_err(|reason| AgentError::Usage { reason })?;
    // Kube mode's EVENT_QUEUE_DEPTH bounds the store→agent channel (flannel's check, fatal).
    let queue_depth = if args.kube_subnet_mgr {
        let value = std::env::var("EVENT_QUEUE_DEPTH").ok();
        crate::subnet::kube::env::event_queue_depth(value.as_deref())
            .map_err(|reason| AgentError::Usage { reason })?
    } else {
        256
    };
    let tunables = match &args.tunables {
        Some(path) => Tunables::load(path).map_err(|reason| AgentError::Tunables { reason })?,
        None => Tunables::default(),
    };
    let stats = Arc::new(StoreStats::default());
    let state = AgentState::new(stats.clone());
    // The status socket first: it is the claim that no other agent runs with
    // this socket, before anything on the node is touched.
    let _status = status::serve(args.status_socket.clone(), state.clone()).await?;
    let store = open_store(&args, &stats).await?;
    let (kind, endpoint) = store.describe();
    state.update(|i| {
        i.store.kind = kind.to_owned();
        i.store.endpoint = endpoint.clone();
    });
    info!(store = kind, endpoint = %endpoint, version = state.version, "weftd starting");

    let _http = start_http(&args, &state).await?;

    let config = network_config(&store, &stats).await?;
    // IPv6-only (`EnableIPv4: false`): no flannel.<VNI>, only the IPv6 half.
    let ipv4 = config.enable_ipv4;
    let network = match (ipv4, config.network) {
        (true, Some(network)) => network,
        (false, _) if config.enable_ipv6 && config.ipv6_network.is_some() => NO_IPV4_SUBNET,
        _ => return Err(AgentError::NoNetwork),
    };

    let nl = Netlink::connect().map_err(io_err("cannot open a netlink socket"))?;
    let selector = iface::Selector {
        iface: args.iface.clone(),
        iface_regex: args.iface_regex.clone(),
        can_reach: args.iface_can_reach,
        public_ip: store.stored_public_ip().await?.or(args.public_ip),
        ipv6_only: !ipv4,
    };
    let ext = iface::choose(&nl, &selector)
        .await
        .map_err(|reason| AgentError::Interface { reason })?;
    info!(interface = %ext.name, addr = %ext.addr, public_ip = %ext.public_ip, mtu = ext.mtu, "using interface");
    state.update(|i| {
        i.node = Some(NodeInfo {
            interface: ext.name.clone(),
            interface_addr: ext.addr,
            public_ip: ext.public_ip,
            interface_mtu: ext.mtu,
        })
    });

    let previous_env = std::fs::read_to_string(&args.subnet_file)
        .ok()
        .and_then(|text| SubnetEnv::parse(&text).ok());
    let previous_subnet = previous_env.as_ref().and_then(|env| env.subnet);
    let vni = config.vxlan.vni;
    let tap_name = format!("flannel.{vni}");
    let existing = match ipv4 {
        true => nl.link_by_name(&tap_name).await?,
        false => None,
    };
    // Dual stack: the IPv6 VTEP's addresses and VtepMAC go into the same lease.
    let tap6_name = dual::device_name(vni.get());
    let addrs6 = match config.enable_ipv6 {
        true => {
            let explicit = match args.public_ipv6 {
                Some(ip) => Some(ip),
                None => store.stored_public_ipv6().await?,
            };
            let addrs = nl.addresses_v6(Some(ext.index)).await?;
            let addrs = dual::choose_addresses(&ext.name, &addrs, &args.iface, explicit)
                .map_err(|reason| AgentError::Interface { reason })?;
            Some(addrs)
        }
        false => None,
    };
    let own_address = match (ipv4, addrs6) {
        (false, Some(addrs)) => crate::subnet::OwnAddress::Ipv6(addrs.public_ip),
        _ => crate::subnet::OwnAddress::Ipv4(ext.public_ip),
    };
    let previous_lease = store.find_own(own_address).await?;
    let mac = choose_mac(previous_lease.as_ref(), existing.as_ref());
    let mut attrs = LeaseAttrs::vxlan(
        ext.public_ip,
        &VxlanBackendData {
            vni: vni.get(),
            vtep_mac: mac,
        },
    );
    if !ipv4 {
        // An IPv6-only lease has no IPv4 half: PublicIP 0.0.0.0, no BackendData.
        attrs.public_ip = Ipv4Addr::UNSPECIFIED;
        attrs.backend_data = None;
    }
    let mut v6_plan = None;
    if let Some(addrs) = addrs6 {
        let existing6 = nl.link_by_name(&tap6_name).await?;
        let mac6 = dual::choose_mac(previous_lease.as_ref(), existing6.as_ref(), mac);
        attrs.public_ipv6 = Some(addrs.public_ip);
        attrs.backend_v6_data = Some(
            VxlanBackendData {
                vni: vni.get(),
                vtep_mac: mac6,
            }
            .to_json(),
        );
        info!(public_ipv6 = %addrs.public_ip, addr = %addrs.listen, vtep_mac_v6 = %mac6, "IPv6 enabled");
        v6_plan = Some((addrs, mac6, existing6.is_none()));
    }
    let lease = store
        .acquire(
            &config,
            &AcquireRequest {
                attrs,
                previous_subnet,
                previous_ipv6_subnet: previous_env.as_ref().and_then(|e| e.ipv6_subnet),
            },
        )
        .await
        .map_err(AgentError::Lease)?;
    if ipv4 {
        info!(subnet = %lease.subnet, ipv6_subnet = ?lease.ipv6_subnet, vtep_mac = %mac, "acquired lease");
    } else {
        info!(ipv6_subnet = ?lease.ipv6_subnet, key = %lease.key(), "acquired lease (IPv6-only)");
    }
    if ipv4 != lease.has_ipv4() {
        return Err(AgentError::LeaseFamily {
            key: lease.key(),
            enable_ipv4: ipv4,
        });
    }
    let v6_spec = match v6_plan {
        None => None,
        Some((addrs, mac6, created6)) => {
            let (Some(subnet6), Some(network6)) = (lease.ipv6_subnet, config.ipv6_network) else {
                return Err(AgentError::NoIpv6Subnet { key: lease.key() });
            };
            let spec = dual::DeviceSpec {
                tap_name: tap6_name.clone(),
                tunables: tunables.clone(),
                config: config.clone(),
                addrs,
                underlay_mtu: ext.mtu,
                subnet: subnet6,
                network: network6,
                mac: mac6,
                mtu: dual::overlay_mtu(&config, ext.mtu),
            };
            Some((spec, created6))
        }
    };

    // From here on a failure removes the device if this run created it.
    let created = ipv4 && existing.is_none();
    let mtu = match &v6_spec {
        Some((spec, _)) if !ipv4 => spec.mtu,
        _ => config.overlay_mtu(ext.mtu),
    };
    let device = DeviceSpec {
        tap_name: tap_name.clone(),
        tunables: tunables.clone(),
        config: config.clone(),
        ext: ext.clone(),
        subnet: lease.subnet,
        mac,
        mtu,
    };
    let (dataplane, link, fatal_rx, gso_max_segs) = if ipv4 {
        match start_dataplane(&nl, &device, Tables::default()).await {
            Ok((dataplane, link, fatal_rx, segs)) => (Some(dataplane), link, fatal_rx, segs),
            Err(e) => {
                if created {
                    remove_device(&nl, &tap_name).await;
                }
                return Err(e);
            }
        }
    } else {
        // No IPv4 device: nothing reports on this channel, and the control
        // loop never looks at it without an IPv4 dataplane.
        (None, LinkInfo::absent(), mpsc::unbounded_channel().1, None)
    };
    // Removes what this run created when a later step of the start fails.
    let undo = |nl: Netlink| {
        let tap_name = tap_name.clone();
        let tap6 = v6_spec
            .as_ref()
            .filter(|(_, created6)| *created6)
            .map(|(spec, _)| spec.tap_name.clone());
        async move {
            if created {
                remove_device(&nl, &tap_name).await;
            }
            if let Some(name) = tap6 {
                remove_device(&nl, &name).await;
            }
        }
    };
    let (v6, fatal6_rx) = match &v6_spec {
        None => (None, None),
        Some((spec, _)) => match dual::start_dataplane(&nl, spec, Tables::default()).await {
            Ok((dp, link6, rx6, segs6)) => (
                Some(dual::V6Side::new(spec.clone(), (dp, link6, segs6))),
                Some(rx6),
            ),
            Err(e) => {
                drop(dataplane);
                undo(nl.clone()).await;
                return Err(e);
            }
        },
    };
    if let Some(v6) = &v6 {
        if let Some(dp) = &v6.dataplane {
            state.dataplane_v6.set(dp.shared().clone());
        }
        let status = v6.status(BTreeMap::new());
        state.update(|i| i.ipv6 = Some(status));
    }
    if !ipv4 {
        // IPv6-only: a flannel.<VNI> of an earlier config with IPv4 (weft's or
        // flannel's) goes, and its routes to peers with it.
        match nl.link_by_name(&tap_name).await {
            Ok(Some(old)) => match nl.delete_link(old.index).await {
                Ok(()) => {
                    info!(device = %tap_name, "removed {tap_name}, left from an earlier config with IPv4 (this network is IPv6-only)")
                }
                Err(e) => {
                    warn!(device = %tap_name, error = %e, "cannot remove {tap_name}, left from an earlier config with IPv4; its routes stay until it is deleted")
                }
            },
            Ok(None) => {}
            Err(e) => {
                warn!(device = %tap_name, error = %e, "cannot look for a {tap_name} left from an earlier config")
            }
        }
    }
    if let Some(dataplane) = &dataplane {
        state.dataplane.set(dataplane.shared().clone());
        state.update(|i| {
            i.lease = Some(own_lease(&lease, network, &config));
            i.device = Some(DeviceInfo {
                name: tap_name.clone(),
                index: link.index,
                mtu,
                gso_max_segs,
                recreated: 0,
                brought_up: 0,
            });
            i.source_ports = dataplane.source_ports().to_vec();
        });
    }

    // Masquerade and forward rules after the dataplane, before subnet.env (flannel's order).
    let masq_v6 = v6.as_ref().map(|v6| (v6.spec.network, v6.spec.subnet));
    let masq_task = match masq::start_from_flags_dual_stack(
        &args,
        &config,
        ipv4.then_some((network, lease.subnet)),
        masq_v6,
        previous_env.as_ref(),
    )
    .await
    {
        Ok(task) => task,
        Err(e) => {
            drop(dataplane);
            drop(v6);
            undo(nl.clone()).await;
            return Err(AgentError::Masquerade(e));
        }
    };

    let (tx, mut rx) = mpsc::channel(queue_depth);
    let renew = RenewPolicy {
        margin: Duration::from_secs(u64::from(args.subnet_lease_renew_margin) * 60),
        ..RenewPolicy::default()
    };
    let store_task = store.spawn(lease.clone(), renew, tx);
    let mut control = Control {
        nl,
        link,
        ipv4,
        network,
        own: lease.subnet,
        watcher: LeaseWatcher::new(Some(lease.id())),
        peers: match &v6 {
            Some(v6) if !ipv4 => {
                Peers::for_v6_node(v6.spec.subnet, v6.spec.addrs.public_ip, v6.spec.network)
            }
            Some(v6) => Peers::for_node(lease.subnet, lease.attrs.public_ip, network).with_v6(
                v6.spec.subnet,
                v6.spec.addrs.public_ip,
                v6.spec.network,
            ),
            None => Peers::for_node(lease.subnet, lease.attrs.public_ip, network),
        },
        router: match &dataplane {
            Some(dataplane) => dataplane.router(),
            // Never handed to a dataplane: the peers' tables are kept in it all the same.
            None => Arc::new(Router::new(
                LocalVtep {
                    vni,
                    mac,
                    public_ip: Ipv4Addr::UNSPECIFIED.into(),
                },
                crate::core::router::SourceCheck::default(),
                Tables::default(),
            )),
        },
        dataplane,
        state: state.clone(),
        stats,
        reported_conflicts: Vec::new(),
        direct_routing: config.vxlan.direct_routing,
        kinds: BTreeMap::new(),
        device,
        recreate: Recreate::default(),
        subnet_env: None,
        underlay: ipv4.then(|| UnderlayAddress::new(&ext.name, ext.addr.into())),
        underlay_v6: v6
            .as_ref()
            .map(|v6| UnderlayAddress::new(&ext.name, v6.spec.addrs.listen.into())),
        lease_log: LogBudget::new(LEASE_CHANGES_LOGGED, LEASE_LOG_WINDOW),
        v6,
    };

    // Program the current leases before announcing readiness.
    let first_snapshot = async {
        loop {
            match rx.recv().await {
                Some(StoreUpdate::Snapshot(leases)) => {
                    control.apply_snapshot(leases).await;
                    return Ok(());
                }
                Some(other) => control.apply_update(other).await?,
                None => return Err(AgentError::StoreStopped),
            }
        }
    };
    if args.kube_subnet_mgr {
        let seconds = tunables.agent.kube_sync_timeout_seconds;
        let cont = crate::subnet::kube::env::cont_when_cache_not_ready(
            std::env::var("CONT_WHEN_CACHE_NOT_READY").ok().as_deref(),
        );
        match tokio::time::timeout(Duration::from_secs(seconds), first_snapshot).await {
            Ok(result) => result?,
            Err(_) if cont => {
                warn!("Timed out waiting for node controller sync. Continuing anyway.")
            }
            Err(_) => return Err(AgentError::CacheNotReady { seconds }),
        }
    } else {
        first_snapshot.await?;
    }
    let env = SubnetEnv {
        network: ipv4.then_some(network),
        subnet: ipv4.then_some(lease.subnet),
        ipv6_network: control.v6.as_ref().map(|v6| v6.spec.network),
        ipv6_subnet: control.v6.as_ref().map(|v6| v6.spec.subnet),
        mtu,
        ip_masq: args.ip_masq,
    };
    crate::files::write_atomic(&args.subnet_file, &env.render(), 0o644).map_err(io_err(
        format!("cannot write {}", args.subnet_file.display()),
    ))?;
    control.subnet_env = Some((args.subnet_file.clone(), env));
    let blackhole_task = args.ip_blackhole_route.then(|| {
        let mut subnets: Vec<ipnet::IpNet> = Vec::new();
        if ipv4 {
            subnets.push(ipnet::IpNet::V4(lease.subnet));
        }
        if let Some(v6) = &control.v6 {
            subnets.push(ipnet::IpNet::V6(v6.spec.subnet));
        }
        // A socket of its own: the kernel refuses (EBUSY) a dump on a socket
        // while another dump on it runs, and the control loop dumps too.
        let nl = Netlink::connect().unwrap_or_else(|_| control.nl.clone());
        blackhole::start(nl, subnets, Duration::from_secs(args.iptables_resync))
    });
    state.ready.store(true, Relaxed);
    info!(subnet_file = %args.subnet_file.display(), peers = control.peers.len(), "weftd is ready");
    store.complete(&lease);

    let result = control_loop(&mut control, &mut rx, fatal_rx, fatal6_rx, &tunables).await;
    // Stop the workers before the tasks they report to.
    control.dataplane = None;
    if let Some(v6) = control.v6.as_mut() {
        v6.dataplane = None;
    }
    store_task.abort();
    if let Some(task) = masq_task {
        task.abort();
    }
    if let Some(task) = blackhole_task {
        task.abort();
    }
    result
}

/// The lease store the flags select: the embedded directory store unless another is chosen.
async fn open_store(args: &RunArgs, stats: &Arc<StoreStats>) -> Result<Store, AgentError> {
    if args.kube_subnet_mgr {
        let opts = crate::subnet::kube::KubeOptions {
            api_url: args.kube_api_url.clone(),
            kubeconfig: args.kubeconfig_file.clone(),
            annotation_prefix: args.kube_annotation_prefix.clone(),
            net_config_path: args.net_config_path.clone(),
            set_node_network_unavailable: args.set_node_network_unavailable,
            identity: crate::subnet::kube::NodeIdentity::from_env(),
            patience: crate::subnet::kube::Patience::default(),
        };
        let store = crate::subnet::kube::KubeStore::open(opts, stats.clone()).await?;
        return Ok(Store::Kube(Arc::new(store)));
    }
    if let Some(options) = args.etcd_options() {
        let store = crate::subnet::etcd::EtcdStore::open(options, stats.clone())?;
        return Ok(Store::Etcd(Arc::new(store)));
    }
    Ok(Store::Local(Arc::new(LocalStore::open(
        &args.local_store,
        &args.net_config_path,
        Duration::from_secs(args.local_lease_ttl),
        stats.clone(),
    )?)))
}

async fn network_config(store: &Store, stats: &StoreStats) -> Result<NetConfig, AgentError> {
    let config = loop {
        match store.network_config().await {
            Ok(config) => break config,
            Err(e) if store.retries_config() && e.is_transient() => {
                stats.error(&e);
                warn!(error = %e, "could not read the network config; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(AgentError::NetworkConfig(e)),
        }
    };
    config.require_vxlan().map_err(AgentError::NotVxlan)?;
    for w in &config.warnings {
        warn!("{w}");
    }
    Ok(config)
}

/// The VtepMAC: the one peers know from our previous lease, else the existing
/// device's, else a new random one.
fn choose_mac(previous: Option<&Lease>, device: Option<&LinkInfo>) -> MacAddr {
    if let Some(mac) = previous
        .and_then(|l| l.attrs.vxlan_data().ok())
        .map(|d| d.vtep_mac)
    {
        return mac;
    }
    if let Some(mac) = device.and_then(|d| d.mac).filter(|m| m.is_local_unicast()) {
        return mac;
    }
    MacAddr::random_local(&mut rand::rng())
}

fn own_lease(lease: &Lease, network: Ipv4Net, config: &NetConfig) -> OwnLease {
    OwnLease {
        subnet: lease.subnet,
        vtep_mac: lease
            .attrs
            .vxlan_data()
            .map(|d| d.vtep_mac)
            .unwrap_or_default(),
        vni: config.vxlan.vni.get(),
        port: config.vxlan.port,
        network,
        expires: lease.expiration.map(unix_secs),
    }
}

/// The dataplane, its device, where fatal errors arrive, and the device's
/// `gso_max_segs` if weftd set it.
pub(crate) type Started = (
    Dataplane,
    LinkInfo,
    mpsc::UnboundedReceiver<DataplaneError>,
    Option<u32>,
);

/// What the VTEP device is made from, kept to recreate it.
#[derive(Debug, Clone)]
struct DeviceSpec {
    tap_name: String,
    tunables: Tunables,
    config: NetConfig,
    ext: iface::ExternalInterface,
    /// The node's own subnet (the device's address is its `.0`).
    subnet: Ipv4Net,
    mac: MacAddr,
    mtu: u32,
}

/// Creates (or reuses) and configures the VTEP device and starts the
/// dataplane on it with `tables`.
async fn start_dataplane(
    nl: &Netlink,
    device: &DeviceSpec,
    tables: Tables,
) -> Result<Started, AgentError> {
    let DeviceSpec {
        tap_name,
        tunables,
        config,
        ext,
        subnet,
        mac,
        mtu,
    } = device;
    let (tap_name, mac, mtu) = (tap_name.as_str(), *mac, *mtu);
    let tap = Tap::open(tap_name, tunables.workers(), &tunables.offloads())?;
    let link = nl
        .link_by_name(tap_name)
        .await?
        .ok_or_else(|| AgentError::TapVanished {
            name: tap_name.to_owned(),
        })?;
    nl.configure_link(&link, mac, mtu).await?;
    quiet_ipv6(tap_name);
    nl.ensure_vtep_address(&link, subnet.network()).await?;
    let local = LocalVtep {
        vni: config.vxlan.vni,
        mac,
        public_ip: ext.public_ip.into(),
    };
    let router = Router::new(local, tunables.dataplane.source_check.into(), tables);
    let listen = SocketAddr::new(ext.addr.into(), config.vxlan.port);
    launch_dataplane(nl, tap, link, tunables, listen, ext.mtu, mtu, router).await
}

/// Starts the dataplane on a configured VTEP device (`flannel.<VNI>` or
/// `flannel-v6.<VNI>`): sockets on `listen`, frames over `underlay_mtu`
/// answered with a too-big error, TSO super-frames fitted to the device's `mtu`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn launch_dataplane(
    nl: &Netlink,
    tap: Tap,
    link: LinkInfo,
    tunables: &Tunables,
    listen: SocketAddr,
    underlay_mtu: u32,
    mtu: u32,
    router: Router,
) -> Result<Started, AgentError> {
    let dp_config = DataplaneConfig {
        listen,
        workers: tunables.workers(),
        source_ports: tunables.dataplane.source_ports,
        batch: tunables.dataplane.batch,
        socket_buffer: tunables.dataplane.socket_buffer_bytes,
        offloads: tunables.offloads(),
        underlay_mtu,
        verify_checksums: tunables.dataplane.verify_checksums,
        trust_outer_checksum: tunables.dataplane.trust_outer_checksum,
        split_directions: tunables.dataplane.split_directions,
        busy_poll: std::time::Duration::from_micros(tunables.dataplane.busy_poll_us),
    };
    let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
    let dataplane = Dataplane::start(tap, &dp_config, router, fatal_tx)?;
    log_offloads(&tunables.offloads(), &dataplane.offloads());
    let gso_max_segs = fit_tso_to_udp_gso(nl, &link, &dataplane.offloads(), mtu).await;
    Ok((dataplane, link, fatal_rx, gso_max_segs))
}

/// With TSO and UDP GSO both on, caps the TAP's super-frames at what one UDP
/// GSO send carries ([`tso_segments_per_send`]). Best effort: a kernel that
/// refuses keeps its default and each super-frame goes out in two sends.
pub(crate) async fn fit_tso_to_udp_gso(
    nl: &Netlink,
    link: &LinkInfo,
    offloads: &crate::dataplane::offload::ActiveOffloads,
    mtu: u32,
) -> Option<u32> {
    if !(offloads.tso && offloads.udp_gso) {
        return None;
    }
    let segs = crate::dataplane::tso_segments_per_send(mtu);
    match nl.set_gso_max_segs(link, segs).await {
        Ok(()) => Some(segs),
        Err(e) => {
            warn!(
                error = %e,
                "cannot cap TSO super-frames to one UDP GSO send; each goes out in two sends (slower, still correct)"
            );
            None
        }
    }
}

pub(crate) fn log_offloads(
    wanted: &crate::dataplane::offload::OffloadConfig,
    got: &crate::dataplane::offload::ActiveOffloads,
) {
    let pairs = [
        ("tap_vnet_hdr", wanted.tap_vnet_hdr, got.tap_vnet_hdr),
        ("tso", wanted.tso, got.tso),
        ("uso", wanted.uso, got.uso),
        ("udp_gso", wanted.udp_gso, got.udp_gso),
        ("udp_gro", wanted.udp_gro, got.udp_gro),
    ];
    for (name, want, have) in pairs {
        if want && !have {
            warn!(
                offload = name,
                "offload is off: the kernel refused it (the dataplane works without it, slower)"
            );
        }
    }
    let on: Vec<_> = got
        .list()
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect();
    info!(offloads = %on.join(","), "dataplane up");
}

/// No router solicitations or MLD from the VTEP: it carries IPv4 only.
fn quiet_ipv6(device: &str) {
    for (knob, value) in [("accept_ra", "0"), ("disable_ipv6", "1")] {
        let path = format!("/proc/sys/net/ipv6/conf/{device}/{knob}");
        let _ = std::fs::write(path, value);
    }
}

async fn remove_device(nl: &Netlink, name: &str) {
    if let Ok(Some(link)) = nl.link_by_name(name).await
        && let Err(e) = nl.delete_link(link.index).await
    {
        warn!(device = name, error = %e, "could not remove the device after a failed start");
    }
}

async fn start_http(
    args: &RunArgs,
    state: &Arc<AgentState>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, AgentError> {
    let registry = Arc::new(metrics::registry(state.clone()));
    let mut tasks = Vec::new();
    let bind = |port: u16, endpoints: metrics::Endpoints| {
        let addr = SocketAddr::from((args.healthz_ip, port));
        let state = state.clone();
        let registry = registry.clone();
        async move {
            metrics::serve(addr, endpoints, state, registry)
                .await
                .map_err(io_err(format!("cannot listen on {addr}")))
        }
    };
    if args.healthz_port != 0 {
        let metrics_here = args.metrics_port == 0 || args.metrics_port == args.healthz_port;
        tasks.push(
            bind(
                args.healthz_port,
                metrics::Endpoints {
                    health: true,
                    metrics: metrics_here,
                },
            )
            .await?,
        );
    }
    if args.metrics_port != 0 && args.metrics_port != args.healthz_port {
        tasks.push(
            bind(
                args.metrics_port,
                metrics::Endpoints {
                    health: false,
                    metrics: true,
                },
            )
            .await?,
        );
    }
    Ok(tasks)
}

/// The control plane after startup.
struct Control {
    nl: Netlink,
    /// The IPv4 VTEP device ([`LinkInfo::absent`] in an IPv6-only network).
    link: LinkInfo,
    /// Whether the network has an IPv4 half (`EnableIPv4`): without one
    /// there is no `flannel.<VNI>`, no IPv4 route, and `network`, `own` and
    /// `device.subnet` are [`NO_IPV4_SUBNET`].
    ipv4: bool,
    network: Ipv4Net,
    own: Ipv4Net,
    watcher: LeaseWatcher,
    peers: Peers,
    /// `None` while the device is being recreated.
    dataplane: Option<Dataplane>,
    /// The router last handed to the dataplane (kept across recreations).
    router: Arc<Router>,
    state: Arc<AgentState>,
    stats: Arc<StoreStats>,
    reported_conflicts: Vec<Vec<LeaseId>>,
    /// `Backend.DirectRouting`.
    direct_routing: bool,
    /// The kind of route installed for each peer subnet.
    kinds: BTreeMap<Ipv4Net, RouteKind>,
    /// What the VTEP device is made from.
    device: DeviceSpec,
    /// A pending recreation of the device after a failed attempt.
    recreate: Recreate,
    /// `subnet.env` as written at readiness (rewritten when the MTU changes).
    subnet_env: Option<(std::path::PathBuf, SubnetEnv)>,
    /// The IPv4 underlay address weftd listens on, watched (not in an
    /// IPv6-only network).
    underlay: Option<UnderlayAddress>,
    /// The IPv6 one, in dual stack.
    underlay_v6: Option<UnderlayAddress>,
    /// Lease changes logged one by one (the rest summed up: a churning store
    /// must not fill the node's disk with log lines).
    lease_log: LogBudget,
    /// The IPv6 half, in dual stack.
    v6: Option<dual::V6Side>,
}

/// Lease changes (added, changed, removed) logged one by one per
/// [`LEASE_LOG_WINDOW`]; more are applied as usual, counted, and summed up in
/// one line a window. A node joining or leaving is a few changes; only a
/// churning store reaches this.
const LEASE_CHANGES_LOGGED: usize = 100;
/// See [`LEASE_CHANGES_LOGGED`].
const LEASE_LOG_WINDOW: Duration = Duration::from_secs(60);

/// The backoff of device recreation (flannel's: 1 s doubling to 30 s).
#[derive(Debug, Default)]
struct Recreate {
    backoff: Duration,
    next: Option<tokio::time::Instant>,
}

async fn control_loop(
    control: &mut Control,
    rx: &mut mpsc::Receiver<StoreUpdate>,
    mut fatal_rx: mpsc::UnboundedReceiver<DataplaneError>,
    mut fatal6_rx: Option<mpsc::UnboundedReceiver<DataplaneError>>,
    tunables: &Tunables,
) -> Result<(), AgentError> {
    let mut term =
        signal(SignalKind::terminate()).map_err(io_err("cannot install a SIGTERM handler"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(io_err("cannot install a SIGINT handler"))?;
    let mut resync = tokio::time::interval(Duration::from_secs(tunables.agent.resync_seconds));
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let drop_every = Duration::from_secs(tunables.agent.drop_log_seconds);
    let mut drop_log = tokio::time::interval(drop_every);
    let mut last_counters = control.state.counters().unwrap_or_default();
    // Deletions of the VTEP device, noticed at once (the resync is the fallback).
    let mut links = match crate::netlink::LinkMonitor::open() {
        Ok(monitor) => Some(monitor),
        Err(e) => {
            warn!(error = %e, "cannot watch for link deletions; a deleted VTEP device is noticed at the next resync");
            None
        }
    };
    loop {
        tokio::select! {
            update = rx.recv() => match update {
                Some(update) => control.apply_update(update).await?,
                None => return Err(AgentError::StoreStopped),
            },
            e = fatal_rx.recv(), if control.dataplane.is_some() => {
                let e = e.unwrap_or(DataplaneError::WorkersGone);
                if !control.device_gone(Duration::from_secs(1)).await {
                    return Err(e.into());
                }
                warn!(error = %e, device = %control.device.tap_name, "the VTEP device was deleted; recreating it");
                control.recreate_device(&mut fatal_rx).await;
            }
            e = fatal_v6(&mut fatal6_rx) => {
                if !control.v6_device_gone(Duration::from_secs(1)).await {
                    return Err(e.into());
                }
                control.recreate_v6(&mut fatal6_rx).await;
            }
            event = link_event(&mut links) => {
                match event {
                    Some(LinkEvent::Deleted(index)) if control.v6.as_ref().is_some_and(|v6| v6.link.index == index && v6.dataplane.is_some()) => {
                        control.recreate_v6(&mut fatal6_rx).await;
                    }
                    Some(LinkEvent::Deleted(index)) if index == control.link.index && control.dataplane.is_some() => {
                        warn!(device = %control.device.tap_name, "the VTEP device was deleted; recreating it");
                        control.recreate_device(&mut fatal_rx).await;
                    }
                    Some(LinkEvent::Deleted(_)) => {}
                    Some(LinkEvent::Changed(link)) => control.link_changed(&link).await,
                    Some(LinkEvent::Address { index, addr, added }) => control.address_changed(index, addr, added),
                    None => {
                        warn!("the link watch stopped; a deleted VTEP device is noticed at the next resync");
                        links = None;
                    }
                }
            }
            _ = sleep_until_or_never(control.underlay.as_ref().and_then(|u| u.check)) => control.check_underlay_address(false).await?,
            _ = sleep_until_or_never(control.underlay_v6.as_ref().and_then(|u| u.check)) => control.check_underlay_address(true).await?,
            _ = sleep_until_or_never(control.recreate.next) => control.recreate_device(&mut fatal_rx).await,
            _ = resync.tick() => {
                if control.dataplane.is_some() && control.device_gone(Duration::ZERO).await {
                    warn!(device = %control.device.tap_name, "the VTEP device is gone; recreating it");
                    control.recreate_device(&mut fatal_rx).await;
                }
                if control.v6_device_gone(Duration::ZERO).await {
                    control.recreate_v6(&mut fatal6_rx).await;
                }
                control.resync().await;
            }
            _ = drop_log.tick() => {
                let now = control.state.counters().unwrap_or_default();
                log_drops(&last_counters, &now, drop_every);
                last_counters = now;
            }
            _ = term.recv() => {
                info!("SIGTERM: stopping; the device, routes and lease stay for the next start");
                return Ok(());
            }
            _ = int.recv() => {
                info!("SIGINT: stopping; the device, routes and lease stay for the next start");
                return Ok(());
            }
        }
    }
}

/// A line for a peer added or removed: its IPv4 VTEP, or the IPv6 one of an
/// IPv6-only peer.
fn log_peer(what: &str, peer: &Peer) {
    match peer.v6 {
        Some(v6) if !peer.has_ipv4() => {
            info!(ipv6_subnet = %v6.subnet, public_ipv6 = %v6.public_ip, vtep_mac = %v6.vtep_mac, "{what}")
        }
        _ => {
            info!(subnet = %peer.subnet, public_ip = %peer.public_ip, vtep_mac = %peer.vtep_mac, "{what}")
        }
    }
}

/// The next fatal error of the IPv6 dataplane, or never without one.
async fn fatal_v6(rx: &mut Option<mpsc::UnboundedReceiver<DataplaneError>>) -> DataplaneError {
    match rx {
        Some(rx) => rx.recv().await.unwrap_or(DataplaneError::WorkersGone),
        None => std::future::pending().await,
    }
}

/// The next link or address event, or never without a monitor.
async fn link_event(links: &mut Option<crate::netlink::LinkMonitor>) -> Option<LinkEvent> {
    match links {
        Some(monitor) => monitor.next().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `when`, or forever when there is nothing to wait for.
async fn sleep_until_or_never(when: Option<tokio::time::Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

/// One log line summarising what was dropped since the last summary.
fn log_drops(
    before: &crate::dataplane::counters::CounterSnapshot,
    after: &crate::dataplane::counters::CounterSnapshot,
    every: Duration,
) {
    let mut parts = Vec::new();
    let mut total = 0;
    for reason in crate::core::router::DropReason::ALL {
        let delta = after
            .drop_count(reason)
            .saturating_sub(before.drop_count(reason));
        if delta > 0 {
            total += delta;
            parts.push(format!("{}={delta}", reason.as_str()));
        }
    }
    if total > 0 {
        warn!(
            dropped = total,
            reasons = %parts.join(" "),
            "dropped {total} frames/datagrams in the last {}s (see weftd status, or weft_dropped_frames_total)",
            every.as_secs()
        );
    }
}

impl Control {
    async fn apply_update(&mut self, update: StoreUpdate) -> Result<(), AgentError> {
        match update {
            StoreUpdate::Snapshot(leases) => self.apply_snapshot(leases).await,
            StoreUpdate::Events(events) => {
                let events = self.watcher.update(events);
                self.apply_events(events).await;
            }
            StoreUpdate::Renewed(lease) => {
                debug!(subnet = %lease.subnet, "lease renewed");
                let expires = lease.expiration.map(unix_secs);
                self.state.update(|i| {
                    if let Some(own) = i.lease.as_mut() {
                        own.expires = expires;
                    }
                });
            }
            StoreUpdate::OwnLeaseRevoked(why) => return Err(AgentError::Revoked { why }),
        }
        Ok(())
    }

    async fn apply_snapshot(&mut self, leases: Vec<Lease>) {
        let events = self.watcher.reset(leases);
        self.apply_events(events).await;
        if self.ipv4 {
            self.remove_stale_routes().await;
        }
        // The IPv6 sweep (and routes of peers that failed) likewise.
        self.resync_v6().await;
    }

    async fn apply_events(&mut self, events: Vec<LeaseEvent>) {
        if events.is_empty() {
            return;
        }
        let now = SystemTime::now();
        self.stats.event(now);
        let mut changes = Vec::with_capacity(events.len());
        for event in &events {
            match event {
                LeaseEvent::Added(_) => self.stats.events_added.fetch_add(1, Relaxed),
                LeaseEvent::Removed(_) => self.stats.events_removed.fetch_add(1, Relaxed),
            };
            changes.push(self.peers.apply(event));
        }
        // Tables first: the kernel ARPs for S.0 as soon as the route exists.
        let router = Arc::new(
            self.router
                .with_tables(Tables::from_peers(self.peers.by_age())),
        );
        self.router = router.clone();
        if let Some(dataplane) = &self.dataplane {
            dataplane.set_router((*router).clone());
        }
        if let Some(v6) = self.v6.as_mut() {
            v6.set_tables(self.peers.by_age());
        }
        for change in changes {
            if let Some(v6) = self.v6.as_mut() {
                let statuses = v6.program(&self.nl, &change).await;
                self.set_v6_statuses(statuses);
            }
            self.program(change, now).await;
        }
        self.summarise_lease_log();
        self.report_conflicts();
    }

    /// One line for the lease changes applied without a line each, when the
    /// budget ran out and then once a window (also from the resync, so the
    /// last ones of a burst are reported too).
    fn summarise_lease_log(&mut self) {
        if let Some(more) = self.lease_log.summary(Instant::now()) {
            info!(
                not_logged = more,
                "{more} more lease changes were applied without a log line each (over {LEASE_CHANGES_LOGGED} in {}s); `weftd status` lists every peer and its route",
                LEASE_LOG_WINDOW.as_secs()
            );
        }
    }

    /// Warns once about each set of leases that share a VtepMAC or public IP
    /// (a node that moved while its old lease lingers, a stale Node object):
    /// frames for the MAC go to the newest lease's IP.
    fn report_conflicts(&mut self) {
        let conflicts = self.peers.conflicts();
        for group in &conflicts {
            if !self.reported_conflicts.contains(group) {
                let list: Vec<String> = group.iter().map(|s| s.to_string()).collect();
                warn!(
                    leases = %list.join(" "),
                    "leases share a VtepMAC or public IP; frames go to the newest one (delete the stale lease)"
                );
            }
        }
        self.reported_conflicts = conflicts;
    }

    async fn program(&mut self, change: PeerChange, now: SystemTime) {
        let counts = &self.state.lease_events;
        match change {
            PeerChange::Added(peer) => {
                counts.added.fetch_add(1, Relaxed);
                let log = self.lease_log.admit(Instant::now());
                if log {
                    log_peer("lease added", &peer);
                }
                if self.ipv4 {
                    self.add_route(&peer, now, log).await;
                }
            }
            PeerChange::Changed { new, .. } if !self.ipv4 => {
                counts.changed.fetch_add(1, Relaxed);
                if self.lease_log.admit(Instant::now()) {
                    log_peer("lease changed", &new);
                }
            }
            PeerChange::Changed { old, new } => {
                counts.changed.fetch_add(1, Relaxed);
                let log = self.lease_log.admit(Instant::now());
                if log {
                    info!(
                        subnet = %new.subnet,
                        public_ip = %new.public_ip,
                        vtep_mac = %new.vtep_mac,
                        old_public_ip = %old.public_ip,
                        old_vtep_mac = %old.vtep_mac,
                        "lease changed"
                    );
                }
                self.add_route(&new, now, log).await;
                if old.vtep_mac != new.vtep_mac {
                    self.forget_neighbour(new.gateway()).await;
                }
            }
            PeerChange::Removed(peer) => {
                counts.removed.fetch_add(1, Relaxed);
                let log = self.lease_log.admit(Instant::now());
                if log {
                    log_peer("lease removed", &peer);
                }
                if self.ipv4 {
                    self.delete_route(peer.subnet, log).await;
                    self.forget_neighbour(peer.gateway()).await;
                }
            }
            PeerChange::Unknown(key) => {
                debug!(key = %key, "removal of a lease that was never programmed");
                if self.ipv4 && key.has_ipv4() {
                    self.delete_route(key.subnet, false).await;
                }
            }
            PeerChange::Ignored { key, reason } => {
                counts.ignored.fetch_add(1, Relaxed);
                self.stats.bad_record(&reason);
                warn!(key = %key, kind = reason.kind(), reason = %reason, "ignoring lease the vxlan backend cannot use");
            }
        }
    }

    /// The kind of route `peer` gets now (flannel's `ip.DirectRouting`).
    async fn route_kind(&self, peer: &Peer) -> RouteKind {
        if !self.direct_routing {
            return RouteKind::Vxlan;
        }
        let answer = match self.nl.route_get(peer.public_ip).await {
            Ok(answer) => answer,
            Err(e) => {
                warn!(public_ip = %peer.public_ip, error = %e, "cannot ask the kernel how it reaches a peer; using the overlay route");
                None
            }
        };
        routes::route_kind(true, peer.public_ip, answer.as_ref(), self.link.index)
    }

    /// Programs the route to `peer`; `log`: a line when it worked (errors
    /// are always logged).
    async fn add_route(&mut self, peer: &Peer, now: SystemTime, log: bool) {
        let kind = self.route_kind(peer).await;
        let result = match kind {
            RouteKind::Vxlan => self.nl.replace_route(self.link.index, peer.subnet).await,
            RouteKind::Direct { via } => self.nl.replace_direct_route(peer.subnet, via).await,
        };
        let route_error = match &result {
            Ok(()) => {
                match kind {
                    _ if !log => {}
                    RouteKind::Vxlan => {
                        info!(subnet = %peer.subnet, via = %peer.gateway(), device = %self.link.name, "route programmed")
                    }
                    RouteKind::Direct { via } => {
                        info!(subnet = %peer.subnet, via = %via, "direct route programmed (peer on a directly connected underlay subnet)")
                    }
                }
                self.kinds.insert(peer.subnet, kind);
                None
            }
            Err(e) => {
                error!(subnet = %peer.subnet, error = %e, "cannot program route; retrying at the next resync");
                Some(e.to_string())
            }
        };
        let status = PeerStatus {
            subnet: peer.subnet,
            public_ip: peer.public_ip,
            vtep_mac: peer.vtep_mac,
            since: unix_secs(now),
            route: result.is_ok(),
            route_error,
            route_kind: None,
            route_via: None,
            route_dev: None,
        };
        let mut status = status;
        if result.is_ok() {
            let (k, via, dev) = self.route_status(peer, kind);
            status.route_kind = Some(k);
            status.route_via = Some(via);
            status.route_dev = dev;
        }
        self.state.update(|i| {
            let since = i
                .peers
                .get(&peer.subnet)
                .filter(|p| p.public_ip == peer.public_ip && p.vtep_mac == peer.vtep_mac)
                .map(|p| p.since);
            let mut status = status;
            if let Some(since) = since {
                status.since = since;
            }
            i.peers.insert(peer.subnet, status);
        });
    }

    /// Drops the kernel's cached MAC for a peer's gateway (S.0) after its VtepMAC
    /// changed or its lease went away; the kernel asks again and weftd answers
    /// from its current table, instead of the kernel sending to the old MAC
    /// until its neighbour entry ages out.
    async fn forget_neighbour(&self, gateway: std::net::Ipv4Addr) {
        if let Err(e) = self.nl.forget_neighbour(self.link.index, gateway).await {
            warn!(gateway = %gateway, error = %e, "cannot drop the kernel's neighbour entry; it ages out by itself");
        }
    }

    /// How `weftd status` shows the route of `kind` to `peer`: kind, gateway, device.
    fn route_status(&self, peer: &Peer, kind: RouteKind) -> (String, Ipv4Addr, Option<String>) {
        match kind {
            RouteKind::Vxlan => (
                kind.name().to_owned(),
                peer.gateway(),
                Some(self.link.name.clone()),
            ),
            RouteKind::Direct { via } => (kind.name().to_owned(), via, None),
        }
    }

    /// Removes the route of the kind installed for `subnet` (the overlay
    /// route when none is known).
    async fn delete_route(&mut self, subnet: Ipv4Net, log: bool) {
        let kind = self.kinds.remove(&subnet).unwrap_or(RouteKind::Vxlan);
        let result = match kind {
            RouteKind::Vxlan => self.nl.delete_route(self.link.index, subnet).await,
            RouteKind::Direct { via } => self.nl.delete_direct_route(subnet, via).await,
        };
        match result {
            Ok(()) if log => info!(subnet = %subnet, kind = kind.name(), "route removed"),
            Ok(()) => {}
            Err(e) => error!(subnet = %subnet, error = %e, "cannot remove route"),
        }
        self.state.update(|i| {
            i.peers.remove(&subnet);
        });
    }

    /// Removes the routes weft owns that no current lease wants: routes of an
    /// earlier Network (flannel issue #1604), of nodes deleted while weftd was
    /// down (#2554), and of a peer's former route kind. Owned: leaving through
    /// the VTEP device (not a kernel prefix route), or carrying weft's route
    /// protocol; nothing else is touched.
    async fn remove_stale_routes(&mut self) {
        let routes = match self.nl.main_table_routes().await {
            Ok(routes) => routes,
            Err(e) => {
                warn!(error = %e, "cannot list the routing table to remove stale routes; trying again at the next resync");
                return;
            }
        };
        let wanted: BTreeMap<Ipv4Net, RouteKind> = self
            .peers
            .iter()
            .filter_map(|p| self.kinds.get(&p.subnet).map(|k| (p.subnet, *k)))
            .collect();
        for (route, reason) in
            routes::stale_routes(&routes, self.link.index, self.network, self.own, &wanted)
        {
            // A peer whose route could not be programmed keeps what is there
            // until the resync programs it.
            if !self.kinds.contains_key(&route.dst)
                && self.peers.iter().any(|p| p.subnet == route.dst)
            {
                continue;
            }
            let via = route.gateway.map(|g| g.to_string()).unwrap_or_default();
            match self.nl.delete_kernel_route(route).await {
                Ok(()) => {
                    info!(subnet = %route.dst, via = %via, proto = route.protocol, "removing a stale route {} ({reason})", route.dst)
                }
                Err(e) => {
                    warn!(subnet = %route.dst, error = %e, "cannot remove a stale route ({reason}); trying again at the next resync")
                }
            }
        }
    }

    /// Whether the VTEP device is gone (deleted, or replaced by another with
    /// the same name), watching for up to `patience` (a dataplane error can
    /// arrive a moment before the deletion is visible).
    async fn device_gone(&self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.nl.link_by_name(&self.device.tap_name).await {
                Ok(None) => return true,
                Ok(Some(link)) if link.index != self.link.index => return true,
                Ok(Some(_)) => {}
                Err(e) => warn!(error = %e, "cannot look up the VTEP device"),
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Recreates the VTEP device someone deleted (flannel issue #869): the
    /// same VtepMAC, address and MTU, a new dataplane with the current tables,
    /// and every peer's route replayed (they went with the device). On failure
    /// tries again after a backoff of 1 s doubling to 30 s.
    async fn recreate_device(&mut self, fatal_rx: &mut mpsc::UnboundedReceiver<DataplaneError>) {
        // The old workers hold the old device's queues and the VXLAN port.
        self.dataplane = None;
        self.recreate.next = None;
        let name = self.device.tap_name.clone();
        let tables = self.router.tables().clone();
        match start_dataplane(&self.nl, &self.device, tables).await {
            Ok((dataplane, link, rx, gso_max_segs)) => {
                self.link = link;
                *fatal_rx = rx;
                dataplane.set_router((*self.router).clone());
                self.state.dataplane.set(dataplane.shared().clone());
                self.dataplane = Some(dataplane);
                self.recreate = Recreate::default();
                self.kinds.clear();
                let peers: Vec<Peer> = self.peers.iter().copied().collect();
                let now = SystemTime::now();
                for peer in &peers {
                    self.add_route(peer, now, true).await;
                }
                let routes = self.kinds.len();
                let (index, mtu) = (self.link.index, self.device.mtu);
                let source_ports = self
                    .dataplane
                    .as_ref()
                    .map(|d| d.source_ports().to_vec())
                    .unwrap_or_default();
                self.state.update(|i| {
                    i.source_ports = source_ports;
                    let recreated = i.device.as_ref().map_or(0, |d| d.recreated) + 1;
                    i.device = Some(DeviceInfo {
                        name: name.clone(),
                        index,
                        mtu,
                        gso_max_segs,
                        recreated,
                        brought_up: i.device.as_ref().map_or(0, |d| d.brought_up),
                    });
                });
                warn!(device = %name, index, routes, "{name} was deleted; recreated with its address, MAC and {routes} routes");
            }
            Err(e) => {
                let backoff = if self.recreate.backoff.is_zero() {
                    Duration::from_secs(1)
                } else {
                    (self.recreate.backoff * 2).min(Duration::from_secs(30))
                };
                self.recreate.backoff = backoff;
                self.recreate.next = Some(tokio::time::Instant::now() + backoff);
                error!(device = %name, error = %e, "cannot recreate the VTEP device; trying again in {}s (pod traffic to other nodes is down until then)", backoff.as_secs());
            }
        }
    }

    /// A link changed: the VTEP device set down (brought back up, its routes
    /// put back), or the underlay interface's MTU changed (followed).
    async fn link_changed(&mut self, link: &LinkInfo) {
        if link.index == self.link.index && !link.up && self.dataplane.is_some() {
            // Events queue up: act on the device's state now, not then.
            let now_down = matches!(
                self.nl.link_by_name(&self.device.tap_name).await,
                Ok(Some(l)) if l.index == self.link.index && !l.up
            );
            if now_down {
                self.bring_device_up().await;
            }
        }
        if let Some(v6) = self.v6.as_ref()
            && link.index == v6.link.index
            && !link.up
            && v6.dataplane.is_some()
        {
            let now_down = matches!(
                self.nl.link_by_name(&v6.spec.tap_name).await,
                Ok(Some(l)) if l.index == v6.link.index && !l.up
            );
            if now_down {
                self.bring_v6_device_up().await;
            }
        }
        if link.index == self.device.ext.index && link.mtu != 0 && link.mtu != self.device.ext.mtu {
            self.underlay_mtu_changed(link.mtu).await;
        }
    }

    /// Someone set `flannel-v6.<VNI>` down: up again, its address and routes back.
    async fn bring_v6_device_up(&mut self) {
        let Some(v6) = self.v6.as_mut() else {
            return;
        };
        let name = v6.spec.tap_name.clone();
        if let Err(e) = self.nl.set_up(&v6.link).await {
            error!(device = %name, error = %e, "{name} was set down and cannot be brought up again; trying again at the next resync");
            return;
        }
        // The kernel dropped the routes (and, for IPv6, the addresses) with the link.
        v6.routed.clear();
        let peers: Vec<Peer> = self.peers.iter().copied().collect();
        let statuses = v6.resync(&self.nl, &peers).await;
        let routes = v6.routed.len();
        self.state.update(|i| {
            if let Some(s) = i.ipv6.as_mut() {
                s.device.brought_up += 1;
            }
        });
        self.set_v6_statuses(statuses);
        warn!(device = %name, routes, "{name} was set down; brought it back up and put back its address and {routes} routes");
    }

    /// Someone set the VTEP device down; the kernel dropped every route
    /// through it. Up again, routes back (flannel leaves the node cut off).
    async fn bring_device_up(&mut self) {
        let name = self.device.tap_name.clone();
        if let Err(e) = self.nl.set_up(&self.link).await {
            error!(device = %name, error = %e, "{name} was set down and cannot be brought up again; trying again at the next resync");
            return;
        }
        self.state.update(|i| {
            if let Some(d) = i.device.as_mut() {
                d.brought_up += 1;
            }
        });
        self.resync().await;
        let routes = self.kinds.len();
        warn!(device = %name, routes, "{name} was set down; brought it back up and put back its {routes} routes");
    }

    /// The underlay interface's MTU changed: the device's MTU (the
    /// interface's − 50, unless Backend.MTU fixes it), the dataplane's limit
    /// (larger frames get ICMP "fragmentation needed") and `subnet.env`'s
    /// FLANNEL_MTU (for pods created from now on) follow.
    async fn underlay_mtu_changed(&mut self, underlay_mtu: u32) {
        if let Some(v6) = self.v6.as_mut() {
            v6.underlay_mtu_changed(&self.nl, underlay_mtu).await;
            let mtu6 = v6.spec.mtu;
            self.state.update(|i| {
                if let Some(s) = i.ipv6.as_mut() {
                    s.device.mtu = mtu6;
                }
                if let Some(node) = i.node.as_mut() {
                    node.interface_mtu = underlay_mtu;
                }
            });
            if !self.ipv4 {
                // IPv6-only: subnet.env's FLANNEL_MTU is the IPv6 device's.
                self.device.ext.mtu = underlay_mtu;
                if let Some((path, env)) = self.subnet_env.as_mut()
                    && env.mtu != mtu6
                {
                    env.mtu = mtu6;
                    if let Err(e) = crate::files::write_atomic(path, &env.render(), 0o644) {
                        error!(file = %path.display(), error = %e, "cannot rewrite the subnet file with the new MTU");
                    }
                }
                return;
            }
        }
        let old_underlay = self.device.ext.mtu;
        let old_mtu = self.device.mtu;
        let mtu = self.device.config.overlay_mtu(underlay_mtu);
        self.device.ext.mtu = underlay_mtu;
        if let Some(dataplane) = &self.dataplane {
            dataplane.set_underlay_mtu(underlay_mtu);
        }
        let mut gso_max_segs = None;
        if mtu != old_mtu {
            if let Err(e) = self
                .nl
                .configure_link(&self.link, self.device.mac, mtu)
                .await
            {
                error!(device = %self.device.tap_name, mtu, error = %e, "cannot set the VTEP device's MTU; frames too big for the underlay are answered with ICMP fragmentation-needed");
            } else {
                self.link.mtu = mtu;
                self.device.mtu = mtu;
            }
            if let Some(dataplane) = &self.dataplane {
                gso_max_segs =
                    fit_tso_to_udp_gso(&self.nl, &self.link, &dataplane.offloads(), mtu).await;
            }
            if let Some((path, env)) = self.subnet_env.as_mut() {
                env.mtu = self.device.mtu;
                if let Err(e) = crate::files::write_atomic(path, &env.render(), 0o644) {
                    error!(file = %path.display(), error = %e, "cannot rewrite the subnet file with the new MTU");
                }
            }
        }
        let device_mtu = self.device.mtu;
        self.state.update(|i| {
            if let Some(node) = i.node.as_mut() {
                node.interface_mtu = underlay_mtu;
            }
            if let Some(d) = i.device.as_mut() {
                d.mtu = device_mtu;
                if mtu != old_mtu {
                    d.gso_max_segs = gso_max_segs;
                }
            }
        });
        warn!(
            interface = %self.device.ext.name,
            old = old_underlay,
            new = underlay_mtu,
            device_mtu,
            "the MTU of {} changed from {old_underlay} to {underlay_mtu}: {} MTU {old_mtu} -> {device_mtu}, FLANNEL_MTU in the subnet file too (pods created before keep theirs; the kernel tells them the path MTU)",
            self.device.ext.name,
            self.device.tap_name,
        );
    }

    /// An address came, changed or went on some link: only the underlay
    /// interface's count, in the family they belong to.
    fn address_changed(&mut self, index: u32, addr: IpAddr, added: bool) {
        if index != self.device.ext.index {
            return;
        }
        match addr {
            IpAddr::V4(_) => {
                if let Some(u) = self.underlay.as_mut() {
                    u.event(addr, added);
                }
            }
            IpAddr::V6(_) => {
                if let Some(u) = self.underlay_v6.as_mut() {
                    u.event(addr, added);
                }
            }
        }
    }

    /// After the grace period: is the address weftd listens on (in IPv6 when
    /// `v6`) back, gone with no other, or replaced (exit: the lease must
    /// announce the new address)?
    async fn check_underlay_address(&mut self, v6: bool) -> Result<(), AgentError> {
        let index = self.device.ext.index;
        let listed = if v6 {
            self.nl.addresses_v6(Some(index)).await.map(|addrs| {
                let all: Vec<IpAddr> = addrs.iter().map(|a| a.addr.into()).collect();
                // A tentative address (duplicate address detection running)
                // cannot be bound yet: its end is announced and looked at.
                let mut usable: Vec<_> = addrs
                    .iter()
                    .filter(|a| a.is_global() && !a.tentative)
                    .collect();
                // As at start: a permanent address before a temporary one.
                usable.sort_by_key(|a| a.temporary);
                let usable: Vec<IpAddr> = usable.iter().map(|a| a.addr.into()).collect();
                (all, usable)
            })
        } else {
            self.nl.addresses(Some(index)).await.map(|addrs| {
                let all: Vec<IpAddr> = addrs.iter().map(|a| a.addr.into()).collect();
                let mut usable: Vec<Ipv4Addr> = addrs
                    .iter()
                    .map(|a| a.addr)
                    .filter(|a| !a.is_loopback())
                    .collect();
                usable.sort_by_key(|a| a.is_link_local());
                (all, usable.into_iter().map(IpAddr::V4).collect())
            })
        };
        let Some(underlay) = (if v6 {
            self.underlay_v6.as_mut()
        } else {
            self.underlay.as_mut()
        }) else {
            return Ok(());
        };
        match listed {
            Ok((all, usable)) => underlay.verdict(all.contains(&underlay.listen()), &usable),
            Err(e) => {
                warn!(error = %e, "cannot list the underlay interface's addresses; looking again in {} s", underlay::ADDRESS_GRACE.as_secs());
                underlay.look_again();
                Ok(())
            }
        }
    }

    /// Puts back what someone removed: the device address and peer routes.
    async fn resync(&mut self) {
        if self.dataplane.is_some() {
            self.resync_v4().await;
        }
        self.resync_v6().await;
        self.summarise_lease_log();
    }

    /// The IPv4 half's resync: address, missing and changed peer routes, stale routes.
    async fn resync_v4(&mut self) {
        if let Err(e) = self
            .nl
            .ensure_vtep_address(&self.link, self.own.network())
            .await
        {
            warn!(error = %e, "cannot check the VTEP address");
        }
        let present = match self.nl.main_table_routes().await {
            Ok(routes) => routes,
            Err(e) => {
                warn!(error = %e, "cannot list the routing table");
                return;
            }
        };
        // Re-evaluate every peer's kind (an underlay that changed) and put back
        // routes someone removed.
        let peers: Vec<Peer> = self.peers.iter().copied().collect();
        for peer in peers {
            let kind = self.route_kind(&peer).await;
            let there = present
                .iter()
                .any(|r| r.dst == peer.subnet && kind.matches(r, self.link.index));
            if there && self.kinds.get(&peer.subnet) == Some(&kind) {
                continue;
            }
            match self.kinds.get(&peer.subnet) {
                Some(old) if *old != kind => {
                    info!(subnet = %peer.subnet, from = old.name(), to = kind.name(), "the route kind of a peer changed; replacing its route")
                }
                _ => warn!(subnet = %peer.subnet, "route to a peer was missing; adding it back"),
            }
            self.add_route(&peer, SystemTime::now(), true).await;
        }
        self.remove_stale_routes().await;
    }

    /// The IPv6 half's resync: address, missing peer routes, stale routes.
    async fn resync_v6(&mut self) {
        if let Some(v6) = self.v6.as_mut() {
            let peers: Vec<Peer> = self.peers.iter().copied().collect();
            let statuses = v6.resync(&self.nl, &peers).await;
            self.set_v6_statuses(statuses);
        }
    }

    /// Records IPv6 peer statuses (`None`: the entry goes) in `weftd status`.
    fn set_v6_statuses(&self, statuses: Vec<(ipnet::Ipv6Net, Option<state::PeerV6Status>)>) {
        if statuses.is_empty() {
            return;
        }
        self.state.update(|i| {
            if let Some(v6) = i.ipv6.as_mut() {
                for (subnet, status) in statuses {
                    match status {
                        Some(status) => v6.peers.insert(subnet, status),
                        None => v6.peers.remove(&subnet),
                    };
                }
            }
        });
    }

    /// Whether `flannel-v6.<VNI>` is gone, watching for up to `patience`.
    async fn v6_device_gone(&self, patience: Duration) -> bool {
        let Some(v6) = self.v6.as_ref() else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if v6.device_gone(&self.nl).await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Recreates a deleted `flannel-v6.<VNI>` (flannel issue #869, for the
    /// IPv6 device): on failure the next resync tries again.
    async fn recreate_v6(
        &mut self,
        fatal6_rx: &mut Option<mpsc::UnboundedReceiver<DataplaneError>>,
    ) {
        let Some(v6) = self.v6.as_mut() else {
            return;
        };
        warn!(device = %v6.spec.tap_name, "the IPv6 VTEP device was deleted; recreating it");
        *fatal6_rx = None;
        self.state.dataplane_v6.clear();
        let peers: Vec<Peer> = self.peers.by_age().into_iter().copied().collect();
        if let Some((rx, statuses)) = v6.recreate(&self.nl, &peers).await {
            *fatal6_rx = Some(rx);
            if let Some(dp) = &v6.dataplane {
                self.state.dataplane_v6.set(dp.shared().clone());
            }
            let status = v6.status(BTreeMap::new());
            self.state.update(|i| {
                if let Some(s) = i.ipv6.as_mut() {
                    let brought_up = s.device.brought_up;
                    s.device = state::DeviceInfo {
                        brought_up,
                        ..status.device
                    };
                }
            });
            self.set_v6_statuses(statuses);
        }
    }
}
