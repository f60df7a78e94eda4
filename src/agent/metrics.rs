//! Prometheus metrics and the health endpoints, over HTTP.
//!
//! Metrics are computed at scrape time from the shared state: the dataplane's
//! per-worker counters are summed then, so the hot path never touches the
//! registry.

use super::state::AgentState;
use crate::core::router::DropReason;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
struct WeftCollector(Arc<AgentState>);

fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn labelled<'a>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = e.encode_descriptor(name, help, None, kind)?;
    for (value, n) in values {
        let labels = [(label, value)];
        let metric = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(n).encode(metric)?,
            _ => ConstGauge::new(n as i64).encode(metric)?,
        }
    }
    Ok(())
}

impl Collector for WeftCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let c = s.counters().unwrap_or_default();
        counter(
            &mut e,
            "weft_encapsulated_frames",
            "Frames read from the TAP and sent to a peer (after segmentation).",
            c.frames.encap_frames,
        )?;
        counter(
            &mut e,
            "weft_encapsulated_bytes",
            "Bytes of inner frames encapsulated.",
            c.frames.encap_bytes,
        )?;
        counter(
            &mut e,
            "weft_decapsulated_frames",
            "Frames received from peers and written to the TAP (before coalescing).",
            c.frames.decap_frames,
        )?;
        counter(
            &mut e,
            "weft_decapsulated_bytes",
            "Bytes of inner frames decapsulated.",
            c.frames.decap_bytes,
        )?;
        counter(
            &mut e,
            "weft_tso_superframes",
            "TSO/USO super-frames read from the TAP and split.",
            c.frames.tso_frames,
        )?;
        counter(
            &mut e,
            "weft_gso_batched_datagrams",
            "Frames sent with others of their flow in one UDP GSO message (small packets batched, not split super-frames).",
            c.frames.gso_datagrams,
        )?;
        counter(
            &mut e,
            "weft_gro_superframes",
            "Coalesced super-frames written to the TAP.",
            c.frames.gro_frames,
        )?;
        counter(
            &mut e,
            "weft_checksum_trusted_frames",
            "Received frames whose inner checksums were covered by a nonzero outer UDP checksum the kernel verified, and not checked again.",
            c.frames.checksum_trusted,
        )?;
        counter(
            &mut e,
            "weft_icmp_frag_needed_sent",
            "ICMP fragmentation-needed messages returned for oversized frames.",
            c.frames.icmp_too_big,
        )?;
        labelled(
            &mut e,
            "weft_dropped_frames",
            "Frames and datagrams dropped, by reason.",
            MetricType::Counter,
            "reason",
            DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), c.drop_count(*r))),
        )?;
        let refused =
            c.drop_count(DropReason::ArpUnknownTarget) + c.drop_count(DropReason::ArpMalformed);
        labelled(
            &mut e,
            "weft_arp_requests",
            "ARP requests from the kernel on the TAP, answered from the ARP table or refused.",
            MetricType::Counter,
            "result",
            [("answered", c.frames.arp_replies), ("refused", refused)],
        )?;
        let refused =
            c.drop_count(DropReason::NdpUnknownTarget) + c.drop_count(DropReason::NdpMalformed);
        labelled(
            &mut e,
            "weft_ndp_solicitations",
            "IPv6 Neighbor Solicitations from the kernel on flannel-v6.<VNI>, answered from the leases or refused.",
            MetricType::Counter,
            "result",
            [("answered", c.frames.ndp_replies), ("refused", refused)],
        )?;
        let (fdb, arp) = s
            .dataplane
            .get()
            .map(|d| {
                let r = d.router.load();
                (r.tables().fdb.len(), r.tables().arp.len())
            })
            .unwrap_or((0, 0));
        let info = s.info();
        counter(
            &mut e,
            "weft_device_recreated",
            "Times the VTEP device was recreated after someone deleted it.",
            info.device.as_ref().map_or(0, |d| d.recreated),
        )?;
        counter(
            &mut e,
            "weft_device_brought_up",
            "Times the VTEP device was brought back up after someone set it down.",
            info.device.as_ref().map_or(0, |d| d.brought_up),
        )?;
        let routes = info.peers.values().filter(|p| p.route).count();
        let direct = info
            .peers
            .values()
            .filter(|p| p.route && p.route_kind.as_deref() == Some("direct"))
            .count();
        gauge(
            &mut e,
            "weft_fdb_entries",
            "Entries in the forwarding database (VtepMAC to public IP).",
            fdb as i64,
        )?;
        gauge(
            &mut e,
            "weft_arp_entries",
            "Entries in the ARP table (remote gateway to VtepMAC).",
            arp as i64,
        )?;
        gauge(
            &mut e,
            "weft_routes",
            "Peer routes programmed (through the VTEP device, or direct).",
            routes as i64,
        )?;
        gauge(
            &mut e,
            "weft_direct_routes",
            "Peer routes programmed as DirectRouting routes (via the peer's public IP, no encapsulation).",
            direct as i64,
        )?;
        gauge(
            &mut e,
            "weft_peers",
            "Remote nodes with a usable lease.",
            info.peers.len() as i64,
        )?;
        drop(info);
        let ev = &s.lease_events;
        labelled(
            &mut e,
            "weft_lease_events",
            "Lease events acted on, by type.",
            MetricType::Counter,
            "type",
            [
                ("added", ev.added.load(Relaxed)),
                ("changed", ev.changed.load(Relaxed)),
                ("removed", ev.removed.load(Relaxed)),
                ("ignored", ev.ignored.load(Relaxed)),
            ],
        )?;
        let st = s.store_stats();
        labelled(
            &mut e,
            "weft_store_errors",
            "Lease store errors, by kind.",
            MetricType::Counter,
            "kind",
            st.errors.iter().map(|(k, v)| (*k, *v)),
        )?;
        labelled(
            &mut e,
            "weft_store_bad_records",
            "Lease records skipped because they are unusable, by kind.",
            MetricType::Counter,
            "kind",
            st.bad_records.iter().map(|(k, v)| (*k, *v)),
        )?;
        gauge(
            &mut e,
            "weft_store_connected",
            "1 while the lease store is reachable.",
            i64::from(st.connected),
        )?;
        counter(
            &mut e,
            "weft_lease_renewals",
            "Renewals of this node's lease.",
            st.renewals,
        )?;
        counter(
            &mut e,
            "weft_store_lists",
            "Complete lists of the lease store: the first, and each relist after a desync (etcd compaction).",
            st.snapshots,
        )?;
        let offloads = s.offloads();
        labelled(
            &mut e,
            "weft_offload_enabled",
            "1 for each offload in use.",
            MetricType::Gauge,
            "offload",
            offloads.list().iter().map(|(k, v)| (*k, u64::from(*v))),
        )?;
        gauge(
            &mut e,
            "weft_ready",
            "1 once subnet.env is written and the dataplane is up.",
            i64::from(s.ready.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "weft_socket_receive_overflows",
            "Packets the kernel dropped because a listening socket's queue was full (SO_RXQ_OVFL); with UDP GRO each is a run of up to 44 datagrams.",
            c.socket_overflows,
        )?;
        counter(
            &mut e,
            "weft_tap_queue_drops",
            "Frames the kernel dropped on the TAP device instead of queueing them for weft (the device's TX drops since it was created: weft fell behind, or was not attached).",
            c.tap_queue_drops,
        )?;
        counter(
            &mut e,
            "weft_dataplane_allocations",
            "Heap allocations made on dataplane threads (zero per packet in steady state).",
            crate::dataplane::sys::dataplane_allocations(),
        )?;
        let mut build = e.encode_descriptor(
            "weft_build_info",
            "Build information.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("version", s.version)];
        ConstGauge::new(1i64).encode(build.encode_family(&labels)?)?;
        Ok(())
    }
}

/// The registry with weft's collector.
pub fn registry(state: Arc<AgentState>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(WeftCollector(state)));
    registry
}

/// Renders the metrics in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

#[derive(Clone)]
struct Http {
    state: Arc<AgentState>,
    registry: Arc<Registry>,
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "weftd is running\n")
}

async fn readyz(State(h): State<Http>) -> impl IntoResponse {
    if h.state.ready.load(Relaxed) {
        (StatusCode::OK, "weftd is ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "weftd is not ready yet\n")
    }
}

async fn metrics(State(h): State<Http>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&h.registry),
    )
}

/// What one listener serves.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// Serve `/healthz` and `/readyz`.
    pub health: bool,
    /// Serve `/metrics`.
    pub metrics: bool,
}

/// Binds `addr` and serves the chosen endpoints in the background.
pub async fn serve(
    addr: SocketAddr,
    endpoints: Endpoints,
    state: Arc<AgentState>,
    registry: Arc<Registry>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut app = Router::new();
    if endpoints.health {
        app = app
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz));
    }
    if endpoints.metrics {
        app = app.route("/metrics", get(metrics));
    }
    let app = app.with_state(Http { state, registry });
    let listener = Bounded {
        listener: tokio::net::TcpListener::bind(addr).await?,
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        lifetime: CONNECTION_LIFETIME,
    };
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP endpoint stopped");
        }
    }))
}

/// Connections served at once; more wait in the kernel's accept queue until
/// one ends (a client that opens thousands cannot take the agent's descriptors).
const MAX_CONNECTIONS: usize = 256;

/// How long one connection may live, whatever it does: a client that sends
/// its request a byte at a time, or never reads the answer, is cut off then
/// (hyper sets no header-read timeout of its own). A scrape takes milliseconds;
/// Prometheus reconnects for the next one.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(5);

/// A TCP listener that serves at most [`MAX_CONNECTIONS`] connections at once,
/// each for at most `lifetime`.
struct Bounded {
    listener: tokio::net::TcpListener,
    slots: Arc<Semaphore>,
    lifetime: Duration,
}

impl axum::serve::Listener for Bounded {
    type Io = Deadlined;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let io = Deadlined {
                        stream,
                        deadline: Box::pin(tokio::time::sleep(self.lifetime)),
                        _slot: permit,
                    };
                    return (io, addr);
                }
                // Out of descriptors, or a connection reset before accept:
                // wait a little rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection that fails every read and write once its deadline passed,
/// holding its slot of the listener until dropped.
struct Deadlined {
    stream: tokio::net::TcpStream,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl Deadlined {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "connection open longer than the endpoint allows",
    )
}

impl AsyncRead for Deadlined {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::StoreStats;

    #[tokio::test]
    async fn a_silent_client_is_cut_off_and_does_not_hold_up_others() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = Bounded {
            listener: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            slots: Arc::new(Semaphore::new(4)),
            lifetime: Duration::from_millis(300),
        };
        let addr = listener.listener.local_addr().unwrap();
        let app = Router::new().route("/healthz", get(healthz));
        tokio::spawn(async move { axum::serve(listener, app).await });
        // Three slow clients: half a request line each, then nothing.
        let mut slow = Vec::new();
        for _ in 0..3 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /hea").await.unwrap();
            slow.push(c);
        }
        let started = std::time::Instant::now();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() < Duration::from_millis(250));
        // The slow ones are closed at their deadline.
        for mut c in slow {
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
                .await
                .expect("a slow client was never cut off");
            assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        }
        // Once the slots are taken, the next client waits for one to free, not forever.
        let mut hogs = Vec::new();
        for _ in 0..4 {
            hogs.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let started = std::time::Instant::now();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(2), c.read_to_string(&mut answer))
            .await
            .expect("served after the hogs' deadline")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn every_family_is_typed_and_counters_end_in_total() {
        let state = AgentState::new(Arc::new(StoreStats::default()));
        let text = render(&registry(state));
        assert!(
            text.contains("# TYPE weft_dropped_frames_total counter"),
            "{text}"
        );
        assert!(
            text.contains("weft_dropped_frames_total{reason=\"unknown_vtep\"} 0"),
            "{text}"
        );
        assert!(text.contains("weft_ready 0"));
        assert!(text.contains("weft_build_info{version="));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let parts: Vec<_> = line.split_whitespace().collect();
            assert!(parts[2].starts_with("weft_"), "{line}");
            if parts[3] == "counter" {
                assert!(parts[2].ends_with("_total"), "{line}");
            }
        }
    }
}
