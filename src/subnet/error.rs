//! Why a store operation failed: one variant per thing that can fail, with
//! its source; [`StoreError::kind`] is the metric label.

use super::etcd::CONFIG_NOT_FOUND;
use super::kube::annotations::PrefixError;
use super::kube::nodes::NodeError;
use crate::core::allocate::AllocError;
use crate::core::config::ConfigError;

/// Why a store operation failed. Messages quote flannel's where flannel has one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd holds no `<prefix>/config` (flannel's message).
    #[error("{CONFIG_NOT_FOUND} (no key {key} at {endpoints})")]
    ConfigMissing {
        /// The config key read.
        key: String,
        /// The etcd endpoints asked.
        endpoints: String,
    },
    /// The network config breaks flannel's rules.
    #[error("invalid network config in {source_name}: {error}")]
    ConfigInvalid {
        /// Where it was read (a file, an etcd key).
        source_name: String,
        /// What is wrong with it.
        #[source]
        error: ConfigError,
    },
    /// The etcd config key holds bytes that are not text.
    #[error("the etcd key {key} does not hold UTF-8 JSON")]
    ConfigNotText {
        /// The config key read.
        key: String,
    },
    /// `EnableIPv4` is on (the default) but the config has no IPv4 `Network`.
    #[error(
        "EnableIPv4 is set (the default) but the config has no usable IPv4 Network: set Network, or for an IPv6-only network set \"EnableIPv4\": false with \"EnableIPv6\": true and IPv6Network"
    )]
    NoIpv4Network,
    /// Neither `EnableIPv4` nor `EnableIPv6`: the config names no network to use.
    #[error(
        "the config enables neither IPv4 nor IPv6 (EnableIPv4 false, EnableIPv6 not true): set \"EnableIPv6\": true and IPv6Network for an IPv6-only network, or remove \"EnableIPv4\": false and set Network"
    )]
    NoAddressFamily,
    /// `EnableIPv6` is on but the config has no usable `IPv6Network`.
    #[error(
        "EnableIPv6 is set but the config has no usable IPv6Network: set IPv6Network or turn EnableIPv6 off"
    )]
    NoIpv6Network,
    /// The acquisition request does not match the config's IP families.
    #[error("{reason}")]
    Ipv6Request {
        /// What is missing or extra, and what to change.
        reason: String,
    },
    /// Every subnet of the network is taken.
    #[error("out of subnets")]
    OutOfSubnets,
    /// Other nodes claimed every subnet tried.
    #[error("max retries reached trying to acquire a subnet")]
    TooManyConflicts,
    /// The etcd flags do not fit together.
    #[error("{reason}")]
    EtcdOptions {
        /// Which flags, and what to change.
        reason: String,
    },
    /// etcd did not answer in time.
    #[error(
        "lease store unavailable: {doing}: no answer from etcd at {endpoints} within {seconds} s"
    )]
    EtcdTimeout {
        /// What weftd asked for.
        doing: String,
        /// The endpoints asked.
        endpoints: String,
        /// The request timeout.
        seconds: u64,
    },
    /// etcd, or the way to it, failed a request.
    #[error("lease store unavailable: {doing} (etcd at {endpoints}): {source}")]
    EtcdFailed {
        /// What weftd asked for.
        doing: String,
        /// The endpoints asked.
        endpoints: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd refused weftd's user name or password.
    #[error(
        "{doing}: etcd at {endpoints} refused the credentials: {message}; check --etcd-username/--etcd-password and the user's role"
    )]
    EtcdCredentials {
        /// What weftd asked for.
        doing: String,
        /// The endpoints asked.
        endpoints: String,
        /// etcd's message.
        message: String,
    },
    /// etcd closed or cancelled the watch.
    #[error("lease store unavailable: etcd {how}")]
    WatchEnded {
        /// "closed the watch stream", or "cancelled the watch" with etcd's reason.
        how: String,
    },
    /// `--kube-annotation-prefix` is refused (flannel's message).
    #[error("error creating network manager: {0}")]
    AnnotationPrefix(#[source] PrefixError),
    /// No client configuration for the API server.
    #[error("fail to create kubernetes config: {reason}")]
    KubeConfig {
        /// Which source failed and how.
        reason: String,
    },
    /// The client could not be built from its configuration.
    #[error("unable to initialize client: {0}")]
    KubeClient(#[source] kube::Error),
    /// The API server did not answer for the startup patience.
    #[error(
        "lease store unavailable: timeout contacting kube-api, failed to patch node {node:?}. Error: {reason}"
    )]
    KubeTimeout {
        /// This node.
        node: String,
        /// The last error.
        reason: String,
    },
    /// A request to the API server failed.
    #[error("lease store unavailable: {reason}")]
    KubeApi {
        /// The API server's answer, or the connection error.
        reason: String,
    },
    /// This node's annotations cannot be used.
    #[error("{0}; fix or remove the annotation")]
    BadAnnotation(#[source] NodeError),
    /// This node's pod CIDR cannot be used.
    #[error("{0}")]
    OwnSubnet(#[source] NodeError),
    /// Neither `NODE_NAME` nor `POD_NAME` and `POD_NAMESPACE` are set (flannel's message).
    #[error("env variables POD_NAME and POD_NAMESPACE must be set")]
    NoNodeIdentity,
    /// The pod spec that names this node could not be read.
    #[error("lease store unavailable: error retrieving pod spec for '{namespace}/{pod}': {reason}")]
    PodSpec {
        /// `POD_NAMESPACE`.
        namespace: String,
        /// `POD_NAME`.
        pod: String,
        /// The API server's answer.
        reason: String,
    },
    /// The pod spec names no node.
    #[error("node name not present in pod spec '{namespace}/{pod}'")]
    NoNodeName {
        /// `POD_NAMESPACE`.
        namespace: String,
        /// `POD_NAME`.
        pod: String,
    },
    /// A file of the directory store (or a TLS file) could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What weftd tried.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking store task died.
    #[error("lease store task failed: {0}")]
    TaskFailed(#[source] tokio::task::JoinError),
}

impl StoreError {
    /// The metric label (the labels the store counted before its variants were named).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::ConfigMissing { .. } => "config_missing",
            StoreError::ConfigInvalid { .. } => "config_invalid",
            StoreError::OutOfSubnets => "out_of_subnets",
            StoreError::TooManyConflicts => "conflict",
            StoreError::EtcdTimeout { .. }
            | StoreError::EtcdFailed { .. }
            | StoreError::WatchEnded { .. }
            | StoreError::KubeTimeout { .. }
            | StoreError::KubeApi { .. }
            | StoreError::PodSpec { .. } => "unavailable",
            StoreError::Io { .. } => "io",
            StoreError::ConfigNotText { .. }
            | StoreError::NoIpv4Network
            | StoreError::NoAddressFamily
            | StoreError::NoIpv6Network
            | StoreError::Ipv6Request { .. }
            | StoreError::EtcdOptions { .. }
            | StoreError::EtcdCredentials { .. }
            | StoreError::AnnotationPrefix(_)
            | StoreError::KubeConfig { .. }
            | StoreError::KubeClient(_)
            | StoreError::BadAnnotation(_)
            | StoreError::OwnSubnet(_)
            | StoreError::NoNodeIdentity
            | StoreError::NoNodeName { .. }
            | StoreError::TaskFailed(_) => "other",
        }
    }

    /// Errors worth retrying (the store may come back), as opposed to bad config.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind(), "config_missing" | "unavailable" | "io")
    }
}

impl From<AllocError> for StoreError {
    fn from(e: AllocError) -> StoreError {
        match e {
            AllocError::OutOfSubnets => StoreError::OutOfSubnets,
            AllocError::NoIpv4Network => StoreError::NoIpv4Network,
            AllocError::NoAddressFamily => StoreError::NoAddressFamily,
            AllocError::NoIpv6Network => StoreError::NoIpv6Network,
        }
    }
}
