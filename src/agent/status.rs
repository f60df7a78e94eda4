//! `weftd status`: the agent answers on a Unix socket with its state as JSON;
//! the client prints it as tables (or passes the JSON through with `--json`).
//! The socket is served by the agent itself, so it answers while the lease
//! store is down.

use super::state::{AgentState, StatusReport};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Why the status socket could not be served. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another agent holds the socket's lock and answers on it.
    #[error(
        "another weftd (pid {pid}) is running and serves the status socket {}: stop it first; \
         one weftd per node owns the device and the routes (if you really mean to run a second \
         one, in another network namespace, give it its own --status-socket)",
        path.display()
    )]
    AgentRunning {
        /// The status socket.
        path: PathBuf,
        /// The running agent's process id, as it reported it.
        pid: u32,
    },
    /// Another agent holds the lock but does not answer (still starting, or hung).
    #[error(
        "another weftd holds {} but does not answer on the status socket {}: it is starting \
         or hung; stop it first (`fuser {}` names it), or give this one its own --status-socket",
        lock.display(),
        path.display(),
        lock.display()
    )]
    AgentNotAnswering {
        /// The status socket.
        path: PathBuf,
        /// The lock file the other agent holds.
        lock: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error(
        "{} exists and is not a socket: remove it, or choose another --status-socket",
        path.display()
    )]
    NotASocket {
        /// The path given as --status-socket.
        path: PathBuf,
    },
    /// Creating, binding or locking failed.
    #[error("cannot serve the status socket {}: {source}", path.display())]
    Io {
        /// The status socket.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// The status socket, claimed: serving it until dropped. The lock file
/// (`<socket>.lock`, flock held for the agent's lifetime and released by the
/// kernel when the process dies) is what makes the claim safe: only its
/// holder removes a socket left by an agent that died, and a second agent
/// started on the same path refuses instead of taking the live one's socket.
#[derive(Debug)]
pub struct StatusServer {
    task: tokio::task::JoinHandle<()>,
    _lock: File,
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The status socket's mode: read and write (connect) for its owner, root.
pub const SOCKET_MODE: u32 = 0o600;

/// The lock file that guards the socket at `path`.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Claims the status socket at `path` (refusing if a live agent has it,
/// replacing a stale one) and serves `state` on it.
pub async fn serve(path: PathBuf, state: Arc<AgentState>) -> Result<StatusServer, ServeError> {
    let io = |source| ServeError::Io {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let lock_file = lock_path(&path);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_file)
        .map_err(io)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(match fetch(&path).await {
                Ok(report) => ServeError::AgentRunning {
                    path,
                    pid: report.pid,
                },
                Err(_) => ServeError::AgentNotAnswering {
                    path,
                    lock: lock_file,
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    // The lock is ours: whatever socket is at `path` was left by an agent
    // that is gone (flock dies with its holder).
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServeError::NotASocket { path });
        }
        Ok(_) => std::fs::remove_file(&path).map_err(io)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    // Owner only, whatever the umask: the status names every peer and
    // counter (connecting to a Unix socket needs write permission on it).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(io)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let body = serde_json::to_vec(&state.report()).unwrap_or_default();
                let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&body)).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(StatusServer { task, _lock: lock })
}

/// Asks the agent behind `path` for its status.
pub async fn fetch(path: &Path) -> Result<StatusReport, String> {
    let talk = async {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|e| format!("cannot reach weftd at {}: {e} (is weftd running on this node? see --status-socket)", path.display()))?;
        let mut body = Vec::new();
        stream
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("reading status from {}: {e}", path.display()))?;
        serde_json::from_slice::<StatusReport>(&body)
            .map_err(|e| format!("weftd sent an unreadable status: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(5), talk)
        .await
        .map_err(|_| format!("weftd at {} did not answer within 5 s", path.display()))?
}

fn ago(now: u64, then: u64) -> String {
    human_duration(now.saturating_sub(then)) + " ago"
}

fn human_duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        3600..=86399 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", secs / 86400, (secs % 86400) / 3600),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The human-readable rendering of a status report.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let now = r.now;
    let _ = writeln!(
        out,
        "weftd {}  up {}  {}",
        r.version,
        human_duration(r.uptime_seconds),
        if r.ready {
            "ready"
        } else {
            "NOT READY (subnet.env not written yet)"
        }
    );
    if let Some(node) = &r.info.node {
        let _ = writeln!(
            out,
            "node     {} via {} ({}, mtu {})",
            node.public_ip, node.interface, node.interface_addr, node.interface_mtu
        );
    }
    let s = &r.store_stats;
    let connected = s["connected"].as_bool().unwrap_or(false);
    let _ = write!(
        out,
        "store    {} {}  {}",
        r.info.store.kind,
        r.info.store.endpoint,
        if connected {
            "healthy"
        } else {
            "UNREACHABLE (dataplane keeps the last known leases)"
        }
    );
    if let Some(t) = s["last_event"].as_u64() {
        let _ = write!(out, "  last change {}", ago(now, t));
    }
    out.push('\n');
    if let Some(err) = s["last_error"].as_str() {
        let _ = writeln!(out, "         last error: {err}");
    }
    if let Some(lease) = &r.info.lease {
        let _ = write!(
            out,
            "lease    {} of {}  VtepMAC {}  VNI {}  port {}",
            lease.subnet, lease.network, lease.vtep_mac, lease.vni, lease.port
        );
        if let Some(exp) = lease.expires {
            let _ = write!(
                out,
                "  expires in {}",
                human_duration(exp.saturating_sub(now))
            );
        }
        out.push('\n');
    }
    if let Some(dev) = &r.info.device {
        let _ = write!(
            out,
            "device   {} (index {}, mtu {}",
            dev.name, dev.index, dev.mtu
        );
        if let Some(segs) = dev.gso_max_segs {
            let _ = write!(out, ", gso_max_segs {segs}");
        }
        if dev.recreated > 0 {
            let _ = write!(out, ", recreated {} times after deletion", dev.recreated);
        }
        if dev.brought_up > 0 {
            let _ = write!(
                out,
                ", brought up {} times after being set down",
                dev.brought_up
            );
        }
        out.push_str(")\n");
    }
    if let Some(v6) = &r.info.ipv6 {
        let d = &v6.device;
        let _ = write!(
            out,
            "ipv6     {} of {}  VtepMAC {}  public {} (via {})\n         device {} (index {}, mtu {}",
            v6.subnet,
            v6.network,
            v6.vtep_mac,
            v6.public_ip,
            v6.interface_addr,
            d.name,
            d.index,
            d.mtu
        );
        if d.recreated > 0 {
            let _ = write!(out, ", recreated {} times after deletion", d.recreated);
        }
        out.push_str(")\n");
    }
    let on: Vec<_> = r
        .offloads
        .iter()
        .filter(|(_, v)| **v)
        .map(|(k, _)| k.as_str())
        .collect();
    let off: Vec<_> = r
        .offloads
        .iter()
        .filter(|(_, v)| !**v)
        .map(|(k, _)| k.as_str())
        .collect();
    let _ = writeln!(
        out,
        "offloads on: {}  off: {}",
        if on.is_empty() {
            "none".into()
        } else {
            on.join(",")
        },
        if off.is_empty() {
            "none".into()
        } else {
            off.join(",")
        }
    );
    if !r.workers.is_empty() {
        let _ = writeln!(
            out,
            "workers  {} ({}; {})",
            r.workers.len(),
            if r.split_directions {
                "a TX and an RX thread each"
            } else {
                "one thread each, running both TX and RX"
            },
            if r.busy_poll_us == 0 {
                "no busy polling".to_owned()
            } else {
                format!("busy polling up to {} µs after traffic", r.busy_poll_us)
            }
        );
    }
    let _ = writeln!(out, "\nPEERS ({})", r.info.peers.len());
    let _ = writeln!(
        out,
        "{:<20} {:<16} {:<18} {:<10} ROUTE",
        "SUBNET", "PUBLIC IP", "VTEP MAC", "SINCE"
    );
    for p in r.info.peers.values() {
        let route = match (&p.route, &p.route_error) {
            (true, _) => match (&p.route_kind, p.route_via, &p.route_dev) {
                (Some(kind), Some(via), Some(dev)) => format!("{kind} via {via} dev {dev}"),
                (Some(kind), Some(via), None) => format!("{kind} via {via}"),
                _ => "yes".to_string(),
            },
            (false, Some(e)) => format!("NO: {e}"),
            (false, None) => "no".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<18} {:<10} {}",
            p.subnet.to_string(),
            p.public_ip.to_string(),
            p.vtep_mac.to_string(),
            ago(now, p.since),
            route
        );
    }
    if let Some(v6) = &r.info.ipv6 {
        let _ = writeln!(out, "\nIPV6 PEERS ({})", v6.peers.len());
        let _ = writeln!(
            out,
            "{:<24} {:<20} {:<26} {:<18} ROUTE",
            "IPV6 SUBNET", "LEASE", "PUBLIC IPV6", "VTEP MAC"
        );
        for (subnet6, p) in &v6.peers {
            let route = match (&p.route, &p.route_error) {
                (true, _) => match (p.route_kind.as_deref(), p.route_via) {
                    (Some("direct"), Some(via)) => format!("direct via {via}"),
                    _ => format!("vxlan via {} dev {}", subnet6.network(), v6.device.name),
                },
                (false, Some(e)) => format!("NO: {e}"),
                (false, None) => "no".to_string(),
            };
            let _ = writeln!(
                out,
                "{:<24} {:<20} {:<26} {:<18} {}",
                subnet6.to_string(),
                // An IPv6-only peer's lease has no IPv4 subnet.
                if p.subnet == crate::core::lease::NO_IPV4_SUBNET {
                    "(IPv6-only)".to_string()
                } else {
                    p.subnet.to_string()
                },
                p.public_ip.to_string(),
                p.vtep_mac.to_string(),
                route
            );
        }
    }
    if let Some(c) = &r.counters {
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let _ = writeln!(out, "\nTRAFFIC");
        let _ = writeln!(
            out,
            "encapsulated  {} frames  {}",
            n("encap_frames"),
            bytes(n("encap_bytes"))
        );
        let _ = writeln!(
            out,
            "decapsulated  {} frames  {}",
            n("decap_frames"),
            bytes(n("decap_bytes"))
        );
        let _ = writeln!(out, "arp answered  {}", n("arp_replies"));
        if r.info.ipv6.is_some() {
            let _ = writeln!(out, "ndp answered  {}", n("ndp_replies"));
        }
        if r.workers.len() > 1 {
            let per: Vec<String> = r
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| format!("#{i} {}/{}", w[0], w[1]))
                .collect();
            let _ = writeln!(out, "per worker    {} (encap/decap frames)", per.join("  "));
        }
        let _ = writeln!(
            out,
            "super-frames  {} split (TSO), {} coalesced (GRO); {} ICMP frag-needed sent",
            n("tso_frames"),
            n("gro_frames"),
            n("icmp_too_big")
        );
        let _ = writeln!(
            out,
            "batched       {} small frames sent in UDP GSO runs",
            n("gso_datagrams")
        );
        let _ = writeln!(
            out,
            "checksums     {} received frames covered by the outer UDP checksum",
            n("checksum_trusted")
        );
        let mut drops: Vec<String> = c["drops"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        // Dropped by the kernel before weft read them, so in no drop reason.
        let overflows = n("socket_overflows");
        if overflows > 0 {
            drops.push(format!("socket_overflows={overflows}"));
        }
        let tap_drops = n("tap_queue_drops");
        if tap_drops > 0 {
            drops.push(format!("tap_queue_drops={tap_drops}"));
        }
        let _ = writeln!(
            out,
            "dropped       {}",
            if drops.is_empty() {
                "none".into()
            } else {
                drops.join("  ")
            }
        );
        if overflows > 0 {
            let _ = writeln!(
                out,
                "              (socket_overflows: packets the kernel dropped because a receiving \
                 socket was full, each a GRO run of up to 44 datagrams; the dataplane \
                 fell behind: raise socket_buffer_bytes or workers in the tunables)"
            );
        }
        if tap_drops > 0 {
            let _ = writeln!(
                out,
                "              (tap_queue_drops: frames the kernel dropped on the TAP device \
                 instead of queueing them for weft, since the device was created: weft's \
                 TX threads fell behind, or weftd was not running; `ip -s link` counts \
                 them as TX dropped)"
            );
        }
    }
    let bad: Vec<String> = s["bad_records"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
        .unwrap_or_default();
    if !bad.is_empty() {
        let _ = writeln!(out, "bad lease records skipped: {}", bad.join("  "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::state::{AgentState, PeerStatus};
    use crate::subnet::StoreStats;

    #[tokio::test]
    async fn socket_round_trip_and_render() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let state = AgentState::new(Arc::new(StoreStats::default()));
        state.update(|i| {
            i.store.kind = "local".into();
            let subnet = "10.244.3.0/24".parse().unwrap();
            i.peers.insert(
                subnet,
                PeerStatus {
                    subnet,
                    public_ip: "192.168.0.3".parse().unwrap(),
                    vtep_mac: "0e:00:00:00:00:03".parse().unwrap(),
                    since: 1,
                    route: true,
                    route_error: None,
                    route_kind: Some("direct".into()),
                    route_via: Some("192.168.0.3".parse().unwrap()),
                    route_dev: None,
                },
            );
        });
        let server = serve(path.clone(), state).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE, "socket mode {mode:o}");
        let report = fetch(&path).await.unwrap();
        assert_eq!(report.info.peers.len(), 1);
        let text = render(&report);
        assert!(
            text.contains("10.244.3.0/24")
                && text.contains("0e:00:00:00:00:03")
                && text.contains("direct via 192.168.0.3"),
            "{text}"
        );
        drop(server);
        assert!(
            fetch(&dir.path().join("none.sock"))
                .await
                .unwrap_err()
                .contains("is weftd running")
        );
    }

    fn agent_state() -> Arc<AgentState> {
        AgentState::new(Arc::new(StoreStats::default()))
    }

    #[tokio::test]
    async fn a_second_agent_on_a_live_socket_refuses_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weftd.sock");
        let first = serve(path.clone(), agent_state()).await.unwrap();
        let err = serve(path.clone(), agent_state()).await.unwrap_err();
        assert!(
            matches!(&err, ServeError::AgentRunning { pid, .. } if *pid == std::process::id()),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("--status-socket") && text.contains("weftd.sock"),
            "{text}"
        );
        // The live agent still answers.
        fetch(&path).await.unwrap();
        drop(first);
    }

    #[tokio::test]
    async fn two_agents_starting_at_once_get_one_socket_between_them() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("weftd.sock");
            let (a, b) = tokio::join!(
                serve(path.clone(), agent_state()),
                serve(path.clone(), agent_state())
            );
            assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
            let err = a.as_ref().err().or(b.as_ref().err()).unwrap();
            assert!(
                matches!(
                    err,
                    ServeError::AgentRunning { .. } | ServeError::AgentNotAnswering { .. }
                ),
                "{err:?}"
            );
            fetch(&path).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weftd.sock");
        // A socket file whose agent is gone: bound once, listener dropped.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = serve(path.clone(), agent_state()).await.unwrap();
        fetch(&path).await.unwrap();
        // And one left by an agent that released its lock on exit.
        drop(server);
        let _again = serve(path.clone(), agent_state()).await.unwrap();
        fetch(&path).await.unwrap();
    }

    #[tokio::test]
    async fn a_lock_holder_that_does_not_answer_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weftd.sock");
        let held = File::create(lock_path(&path)).unwrap();
        held.try_lock().unwrap();
        let err = serve(path.clone(), agent_state()).await.unwrap_err();
        assert!(
            matches!(&err, ServeError::AgentNotAnswering { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("weftd.sock.lock"), "{err}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weftd.sock");
        std::fs::write(&path, "keep me").unwrap();
        let err = serve(path.clone(), agent_state()).await.unwrap_err();
        assert!(matches!(&err, ServeError::NotASocket { .. }), "{err:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }
}
