//! An in-test Kubernetes API server, for nodes and pods, that speaks the real
//! protocol as kube-rs's HTTP client uses it — test code, not product code.
//!
//! - `GET /api/v1/nodes` lists with a `resourceVersion` (one counter for every
//!   object, as etcd's revision); it returns everything at once (a server may
//!   ignore `limit`, and does for `resourceVersion=0`); items carry no
//!   `kind`/`apiVersion`, as the real server's.
//! - `GET /api/v1/nodes?watch=true&resourceVersion=N` is a chunked stream of
//!   one JSON event per line: `ADDED`/`MODIFIED`/`DELETED` replayed after N
//!   then live, `BOOKMARK`s when asked for (`allowWatchBookmarks`), and
//!   `ERROR` 410 `Expired` when N is older than the compacted history.
//! - `PATCH /api/v1/nodes/{name}/status` with
//!   `application/strategic-merge-patch+json` (lists merged by their Kubernetes
//!   merge key, e.g. `status.conditions` by `type`) or
//!   `application/merge-patch+json` (RFC 7386); the status subresource keeps
//!   `spec` as it was.
//! - `GET /api/v1/nodes/{name}`, `GET /api/v1/namespaces/{ns}/pods/{name}`.
//! - Everything else flannel's ClusterRole does not allow (nodes: get, list,
//!   watch; nodes/status: patch; pods: get) is refused with 403, so a test
//!   also proves weftd needs no more than flannel's RBAC.
//! - With a token set, requests without `Authorization: Bearer <token>` get 401.
//!
//! The server runs on its own thread and runtime, so both `#[tokio::test]`s
//! and the synchronous netns tests can use it; every request is recorded.

#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, Response, StatusCode, header};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
}

impl Recorded {
    /// The value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<String> {
        params(&self.query).remove(key)
    }
}

#[derive(Debug)]
struct Watch {
    lines: mpsc::UnboundedSender<Bytes>,
}

#[derive(Debug)]
struct State {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    /// Node events with the resource version they happened at.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a resource version below this get 410 Gone.
    compacted: u64,
    /// When false, changes are stored but not sent to open watches (as if missed).
    deliver: bool,
    /// When true, node lists (and watches from no version, which list) wait.
    stall_lists: bool,
    token: Option<String>,
    bookmark_every: Duration,
    watches: Vec<Watch>,
    requests: Vec<Recorded>,
}

/// The fake API server. Stops when dropped.
#[derive(Debug)]
pub struct FakeKube {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), percent_decode(v)),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a valid response")
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    respond(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status_body(code, reason, message),
    )
}

fn forbidden(verb: &str, resource: &str) -> Response<Body> {
    failure(
        403,
        "Forbidden",
        &format!(
            "User \"system:serviceaccount:kube-flannel:flannel\" cannot {verb} resource \"{resource}\" in API group \"\" at the cluster scope (the fake grants flannel's ClusterRole only)"
        ),
    )
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Merge keys of the lists this fake knows (Kubernetes' `patchMergeKey`).
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        "status.conditions" | "status.addresses" => Some("type"),
        "metadata.ownerReferences" => Some("uid"),
        "status.images" => None,
        _ => None,
    }
}

/// Kubernetes strategic merge patch (the parts nodes use): objects merge,
/// `null` deletes, lists with a merge key merge by it (`$patch: delete`
/// removes an item), other lists are replaced.
pub fn strategic_merge(target: &mut Value, patch: &Value, path: &str) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(obj) = target else {
        return;
    };
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        let sub = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match v {
            Value::Null => {
                obj.remove(k);
            }
            Value::Array(items) => match merge_key(&sub) {
                Some(key) => {
                    let list = obj.entry(k.clone()).or_insert_with(|| json!([]));
                    if !list.is_array() {
                        *list = json!([]);
                    }
                    let Value::Array(list) = list else { continue };
                    for item in items {
                        let id = item.get(key).cloned();
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        let pos = list.iter().position(|e| e.get(key).cloned() == id);
                        match (pos, delete) {
                            (Some(i), true) => {
                                list.remove(i);
                            }
                            (None, true) => {}
                            (Some(i), false) => strategic_merge(&mut list[i], item, &sub),
                            (None, false) => {
                                let mut fresh = json!({});
                                strategic_merge(&mut fresh, item, &sub);
                                list.push(fresh);
                            }
                        }
                    }
                }
                None => {
                    obj.insert(k.clone(), v.clone());
                }
            },
            Value::Object(_) => {
                let entry = obj.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(entry, v, &sub);
            }
            other => {
                obj.insert(k.clone(), other.clone());
            }
        }
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(obj) = target else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            obj.remove(k);
        } else {
            merge_patch(obj.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

impl State {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores a node event and sends it to the open watches.
    fn publish(&mut self, kind: &'static str, object: Value) {
        let rv = self.rv;
        self.history.push((rv, kind, object.clone()));
        if self.deliver {
            let line = event_line(kind, &object);
            self.watches.retain(|w| w.lines.send(line.clone()).is_ok());
        }
    }

    fn put_node(&mut self, mut node: Value, kind: &'static str) {
        let rv = self.bump();
        node["kind"] = json!("Node");
        node["apiVersion"] = json!("v1");
        node["metadata"]["resourceVersion"] = json!(rv.to_string());
        let name = node["metadata"]["name"]
            .as_str()
            .expect("a node has a name")
            .to_owned();
        if kind == "ADDED" {
            node["metadata"]["uid"] = json!(format!("uid-{name}-{rv}"));
            node["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        self.nodes.insert(name, node.clone());
        self.publish(kind, node);
    }
}

fn list_item(object: &Value) -> Value {
    let mut item = object.clone();
    if let Value::Object(o) = &mut item {
        o.remove("kind");
        o.remove("apiVersion");
    }
    item
}

impl FakeKube {
    /// A server on 127.0.0.1 (a free port).
    pub fn start() -> FakeKube {
        FakeKube::start_on("127.0.0.1:0".parse().expect("an address"), || {})
    }

    /// A server bound to `bind` from a thread that first runs `setup` (e.g.
    /// entering a network namespace).
    pub fn start_on(bind: SocketAddr, setup: impl FnOnce() + Send + 'static) -> FakeKube {
        let state = Arc::new(Mutex::new(State {
            rv: 100,
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            history: Vec::new(),
            compacted: 0,
            deliver: true,
            stall_lists: false,
            token: None,
            bookmark_every: Duration::from_millis(200),
            watches: Vec::new(),
            requests: Vec::new(),
        }));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server_state = state.clone();
        let thread = std::thread::spawn(move || {
            setup();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(bind)
                    .await
                    .unwrap_or_else(|e| panic!("fake API server cannot bind {bind}: {e}"));
                addr_tx
                    .send(listener.local_addr().expect("local addr"))
                    .expect("send addr");
                let app = axum::Router::new()
                    .fallback(handle)
                    .with_state(server_state);
                tokio::select! {
                    r = axum::serve(listener, app) => { let _ = r; }
                    _ = stop_rx => {}
                }
            });
        });
        let addr = addr_rx.recv().expect("the fake API server started");
        FakeKube {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Requires `Authorization: Bearer <token>` from now on.
    pub fn require_token(&self, token: &str) {
        self.state().token = Some(token.to_owned());
    }

    pub fn set_bookmark_interval(&self, every: Duration) {
        self.state().bookmark_every = every;
    }

    pub fn add_node(&self, node: Node) {
        let value = serde_json::to_value(&node).expect("node JSON");
        self.state().put_node(value, "ADDED");
    }

    /// Changes a node (as another client would) and sends MODIFIED.
    pub fn update_node(&self, name: &str, f: impl FnOnce(&mut Node)) {
        let mut st = self.state();
        let value = st.nodes.get(name).cloned().expect("no such node");
        let mut node: Node = serde_json::from_value(value).expect("stored node parses");
        f(&mut node);
        let value = serde_json::to_value(&node).expect("node JSON");
        st.put_node(value, "MODIFIED");
    }

    /// Stores a raw node JSON change (for annotations k8s-openapi would not let us break).
    pub fn update_node_json(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.state();
        let mut value = st.nodes.get(name).cloned().expect("no such node");
        f(&mut value);
        st.put_node(value, "MODIFIED");
    }

    pub fn delete_node(&self, name: &str) {
        let mut st = self.state();
        let mut node = st.nodes.remove(name).expect("no such node");
        let rv = st.bump();
        node["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.publish("DELETED", node);
    }

    pub fn node(&self, name: &str) -> Option<Node> {
        self.state()
            .nodes
            .get(name)
            .map(|v| serde_json::from_value(v.clone()).expect("stored node parses"))
    }

    pub fn add_pod(&self, pod: Pod) {
        let mut st = self.state();
        let rv = st.bump();
        let mut value = serde_json::to_value(&pod).expect("pod JSON");
        value["kind"] = json!("Pod");
        value["apiVersion"] = json!("v1");
        value["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        st.pods.insert((ns, name), value);
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    /// Stops (or resumes) sending changes to open watches: changes made
    /// meanwhile are missed, as across a watch cache gap.
    pub fn set_delivery(&self, deliver: bool) {
        self.state().deliver = deliver;
    }

    /// Holds (or releases) every node list, as an API server too slow to
    /// answer one: list requests wait until released.
    pub fn stall_lists(&self, stall: bool) {
        self.state().stall_lists = stall;
    }

    /// Compacts the history: watches from any version before `floor` get 410.
    pub fn compact_before(&self, floor: u64) {
        let mut st = self.state();
        st.compacted = floor;
        st.history.retain(|(rv, _, _)| *rv >= floor);
    }

    /// Compacts everything and ends every open watch with ERROR 410 Gone.
    pub fn expire(&self) {
        let mut st = self.state();
        st.compacted = st.rv + 1;
        st.history.clear();
        let gone = status_body(
            410,
            "Expired",
            &format!("too old resource version: compacted at {}", st.rv + 1),
        );
        let line = event_line("ERROR", &gone);
        for w in st.watches.drain(..) {
            let _ = w.lines.send(line.clone());
        }
    }

    /// Ends every open watch without an error (a dropped connection).
    pub fn drop_watches(&self) {
        self.state().watches.clear();
    }

    pub fn open_watches(&self) -> usize {
        let mut st = self.state();
        st.watches.retain(|w| !w.lines.is_closed());
        st.watches.len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// Recorded requests with this method whose path is exactly `path`.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    /// PATCHes of `nodes/<name>/status` that changed annotations.
    pub fn annotation_patches(&self, node: &str) -> Vec<Value> {
        self.requests_to("PATCH", &format!("/api/v1/nodes/{node}/status"))
            .into_iter()
            .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
            .filter(|b| b["metadata"]["annotations"].is_object())
            .collect()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<State>>>,
    req: Request<Body>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type: header(header::CONTENT_TYPE),
        authorization: header(header::AUTHORIZATION),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    if parts.method == Method::GET && recorded.path == "/api/v1/nodes" {
        let q = params(&recorded.query);
        let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
        let from = q.get("resourceVersion").map(String::as_str).unwrap_or("");
        if !watching || from.is_empty() || from == "0" {
            while lock(&state).stall_lists {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let mut st = lock(&state);
    st.requests.push(recorded.clone());
    if let Some(token) = &st.token
        && recorded.authorization.as_deref() != Some(&format!("Bearer {token}"))
    {
        return failure(401, "Unauthorized", "Unauthorized");
    }
    let q = params(&recorded.query);
    let segments: Vec<&str> = recorded.path.trim_start_matches('/').split('/').collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["api", "v1", "nodes"]) => {
            if q.get("watch").map(String::as_str) == Some("true")
                || q.get("watch").map(String::as_str) == Some("1")
            {
                watch(&state, &mut st, &q)
            } else {
                list(&st)
            }
        }
        (&Method::GET, ["api", "v1", "nodes", name]) => match st.nodes.get(*name) {
            Some(node) => respond(StatusCode::OK, node),
            None => not_found("nodes", name),
        },
        (&Method::PATCH, ["api", "v1", "nodes", name, "status"]) => {
            patch_status(&mut st, name, recorded.content_type.as_deref(), &body)
        }
        (&Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
            match st.pods.get(&(ns.to_string(), name.to_string())) {
                Some(pod) => respond(StatusCode::OK, pod),
                None => not_found("pods", name),
            }
        }
        (m, ["api", "v1", "nodes", ..]) => forbidden(&m.as_str().to_lowercase(), "nodes"),
        (m, ["api", "v1", "namespaces", _, "pods", ..]) => {
            forbidden(&m.as_str().to_lowercase(), "pods")
        }
        _ => failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

fn not_found(kind: &str, name: &str) -> Response<Body> {
    let mut body = status_body(404, "NotFound", &format!("{kind} \"{name}\" not found"));
    body["details"] = json!({ "name": name, "kind": kind });
    respond(StatusCode::NOT_FOUND, &body)
}

fn list(st: &State) -> Response<Body> {
    let items: Vec<Value> = st.nodes.values().map(list_item).collect();
    respond(
        StatusCode::OK,
        &json!({
            "kind": "NodeList",
            "apiVersion": "v1",
            "metadata": { "resourceVersion": st.rv.to_string() },
            "items": items,
        }),
    )
}

fn watch(
    shared: &Arc<Mutex<State>>,
    st: &mut State,
    q: &BTreeMap<String, String>,
) -> Response<Body> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let from = q.get("resourceVersion").cloned().unwrap_or_default();
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    match from.parse::<u64>() {
        _ if from.is_empty() || from == "0" => {
            // "Any": the current state as ADDED events, then live.
            for node in st.nodes.values() {
                let _ = tx.send(event_line("ADDED", node));
            }
            st.watches.push(Watch { lines: tx });
        }
        Ok(v) if v + 1 >= st.compacted => {
            for (rv, kind, obj) in &st.history {
                if *rv > v {
                    let _ = tx.send(event_line(kind, obj));
                }
            }
            st.watches.push(Watch { lines: tx });
        }
        _ => {
            let gone = status_body(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", st.compacted),
            );
            let _ = tx.send(event_line("ERROR", &gone));
            drop(tx);
        }
    }
    let every = st.bookmark_every;
    let shared = shared.clone();
    let (out_tx, out_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let end = tokio::time::sleep(timeout);
        tokio::pin!(end);
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(line) => {
                        if out_tx.send(Ok(line)).await.is_err() { return; }
                    }
                    None => return,
                },
                _ = tick.tick(), if bookmarks => {
                    // Under the lock every event up to the current version is
                    // already queued: send those first, then the bookmark. A
                    // watch that was dropped (its sender gone) gets no
                    // bookmark: it would vouch for events it never carried.
                    let (queued, rv, dropped) = {
                        let st = lock(&shared);
                        if !st.deliver {
                            continue;
                        }
                        let mut queued = Vec::new();
                        let dropped = loop {
                            match rx.try_recv() {
                                Ok(line) => queued.push(line),
                                Err(mpsc::error::TryRecvError::Empty) => break false,
                                Err(mpsc::error::TryRecvError::Disconnected) => break true,
                            }
                        };
                        (queued, st.rv, dropped)
                    };
                    for line in queued {
                        if out_tx.send(Ok(line)).await.is_err() { return; }
                    }
                    if dropped {
                        return;
                    }
                    let line = event_line("BOOKMARK", &json!({
                        "kind": "Node",
                        "apiVersion": "v1",
                        "metadata": { "resourceVersion": rv.to_string() },
                    }));
                    if out_tx.send(Ok(line)).await.is_err() { return; }
                }
                _ = &mut end => return,
            }
        }
    });
    let body = futures::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .expect("a valid response")
}

fn patch_status(
    st: &mut State,
    name: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Response<Body> {
    let Some(current) = st.nodes.get(name).cloned() else {
        return not_found("nodes", name);
    };
    let patch: Value = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => return failure(400, "BadRequest", &format!("invalid patch JSON: {e}")),
    };
    let mut updated = current.clone();
    match content_type.map(|c| c.split(';').next().unwrap_or("").trim()) {
        Some("application/strategic-merge-patch+json") => strategic_merge(&mut updated, &patch, ""),
        Some("application/merge-patch+json") => merge_patch(&mut updated, &patch),
        other => {
            return failure(
                415,
                "UnsupportedMediaType",
                &format!(
                    "the fake API server takes strategic-merge and merge patches, not {other:?}"
                ),
            );
        }
    }
    // The status subresource ignores changes to spec.
    updated["spec"] = current["spec"].clone();
    if serde_json::from_value::<Node>(updated.clone()).is_err() {
        return failure(422, "Invalid", "the patched node is not a valid Node");
    }
    st.put_node(updated, "MODIFIED");
    respond(StatusCode::OK, &st.nodes[name])
}

/// A node as the kubelet registers it: `Ready`, and `NetworkUnavailable=True`
/// (as some clouds set it until a network agent clears it).
pub fn node(name: &str, pod_cidr: Option<&str>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_owned(),
                name.to_owned(),
            )])),
            annotations: Some(BTreeMap::from([(
                "node.alpha.kubernetes.io/ttl".to_owned(),
                "0".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: pod_cidr.map(str::to_owned),
            pod_cidrs: pod_cidr.map(|c| vec![c.to_owned()]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            conditions: Some(vec![
                NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: Some("KubeletReady".into()),
                    message: Some("kubelet is posting ready status".into()),
                    last_heartbeat_time: Some(Time("2026-01-01T00:00:00Z".parse().expect("time"))),
                    last_transition_time: Some(Time("2026-01-01T00:00:00Z".parse().expect("time"))),
                },
                NodeCondition {
                    type_: "NetworkUnavailable".into(),
                    status: "True".into(),
                    reason: Some("NoRouteCreated".into()),
                    message: Some("Node created without a route".into()),
                    last_heartbeat_time: None,
                    last_transition_time: Some(Time("2026-01-01T00:00:00Z".parse().expect("time"))),
                },
            ]),
            ..NodeStatus::default()
        }),
    }
}

/// Sets flannel's annotations on a node, as a flannel (or weft) node publishes them.
pub fn publish(node: &mut Node, public_ip: &str, vtep_mac: &str) {
    let a = node.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let p = "flannel.alpha.coreos.com/";
    a.insert(format!("{p}backend-type"), "vxlan".into());
    a.insert(
        format!("{p}backend-data"),
        format!(r#"{{"VNI":1,"VtepMAC":"{vtep_mac}"}}"#),
    );
    a.insert(format!("{p}kube-subnet-manager"), "true".into());
    a.insert(format!("{p}public-ip"), public_ip.into());
}

/// A pod scheduled on `node_name`.
pub fn pod(namespace: &str, name: &str, node_name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node_name.into()),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// A condition of a node by type.
pub fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// An annotation of a node.
pub fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}
