//! `weftd status`: the agent answers on a Unix socket with its state as JSON;
//! the client prints it as tables (or passes the JSON through with `--json`).
//! The socket is served by the agent itself, so it answers while the lease
//! store is down.

use super::state::{AgentState, StatusReport};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Binds the status socket (replacing a stale one) and serves it forever.
pub async fn serve(
    path: PathBuf,
    state: Arc<AgentState>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    Ok(tokio::spawn(async move {
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
    }))
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
            "workers  {} ({})",
            r.workers.len(),
            if r.split_directions {
                "a TX and an RX thread each"
            } else {
                "one thread each, running both TX and RX"
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
            (true, _) => "yes".to_string(),
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
        let drops: Vec<String> = c["drops"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "dropped       {}",
            if drops.is_empty() {
                "none".into()
            } else {
                drops.join("  ")
            }
        );
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
                },
            );
        });
        let task = serve(path.clone(), state).await.unwrap();
        let report = fetch(&path).await.unwrap();
        assert_eq!(report.info.peers.len(), 1);
        let text = render(&report);
        assert!(
            text.contains("10.244.3.0/24") && text.contains("0e:00:00:00:00:03"),
            "{text}"
        );
        task.abort();
        assert!(
            fetch(&dir.path().join("none.sock"))
                .await
                .unwrap_err()
                .contains("is weftd running")
        );
    }
}
