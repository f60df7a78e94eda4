//! The health endpoints (`--healthz-port`): `/healthz` answers 200 while the
//! agent runs, `/readyz` 503 until the agent is ready (subnet.env written,
//! dataplane up), then 200 — what the DaemonSet's probes rely on. The netns
//! test `kube::three_weft_nodes_in_kubernetes_mode_pass_traffic` checks the
//! same on a real weftd waiting for its Node.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft::agent::metrics::{self, Endpoints};
use weft::agent::state::AgentState;
use weft::subnet::StoreStats;

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (code, body)
}

#[tokio::test]
async fn readyz_is_503_until_ready_then_200_and_healthz_is_200_throughout() {
    let state = AgentState::new(Arc::new(StoreStats::default()));
    let registry = Arc::new(metrics::registry(state.clone()));
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = metrics::serve(
        addr,
        Endpoints {
            health: true,
            metrics: false,
        },
        state.clone(),
        registry,
    )
    .await
    .unwrap();

    assert_eq!(
        get(addr, "/healthz").await,
        (200, "weftd is running\n".into())
    );
    assert_eq!(
        get(addr, "/readyz").await,
        (503, "weftd is not ready yet\n".into())
    );
    state.ready.store(true, Relaxed);
    assert_eq!(get(addr, "/readyz").await, (200, "weftd is ready\n".into()));
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(
        get(addr, "/metrics").await.0,
        404,
        "metrics live on their own port here"
    );
    server.abort();
}
