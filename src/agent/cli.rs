//! weftd's command line: flanneld's flag names, each also read from
//! `FLANNELD_<NAME>` (upper case, `-` → `_`) when not given on the command line.

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
/// The command line: `weftd [flags]`, `weftd status`, `weftd cleanup-masq`.
#[command(
    name = "weftd",
    version,
    about = "weft node agent: flannel's vxlan overlay with a userspace VXLAN dataplane",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A subcommand; none: run the agent.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The agent's flags.
    #[command(flatten)]
    pub run: RunArgs,
}

/// What to do instead of running the agent.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the running agent's lease, peers, counters and offloads.
    Status(StatusArgs),
    /// Remove the masquerade and forward rules weftd (or flanneld) installed:
    /// iptables chains FLANNEL-POSTRTG and FLANNEL-FWD with their jumps (IPv4 and
    /// IPv6) and the nftables tables flannel-ipv4 and flannel-ipv6. Stop weftd first.
    CleanupMasq,
}

/// `weftd status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's status socket.
    #[arg(long, env = "FLANNELD_STATUS_SOCKET", default_value = DEFAULT_STATUS_SOCKET)]
    pub status_socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Where the agent serves its status.
pub const DEFAULT_STATUS_SOCKET: &str = "/run/weft/weftd.sock";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    // No doc comments on the values: clap would print them in `--help`,
    // whose text follows flanneld's.
    #[allow(missing_docs)]
    Text,
    #[allow(missing_docs)]
    Json,
}

/// A bool flag that is also `--flag=false`, as Go's flag package accepts.
macro_rules! bool_flag {
    () => {
        ArgAction::Set
    };
}

/// The agent's flags, flanneld's names (each also from `FLANNELD_<NAME>`).
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Interface (name or IP address) to use for inter-node traffic; repeatable, tried in order.
    #[arg(long, env = "FLANNELD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Regex matched against interface IPs, then names; repeatable, after --iface.
    #[arg(long, env = "FLANNELD_IFACE_REGEX", value_delimiter = ',')]
    pub iface_regex: Vec<String>,
    /// Use the interface that routes to this address.
    #[arg(long, env = "FLANNELD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<Ipv4Addr>,
    /// IP accessible by other nodes for inter-host communication (default: the interface's).
    #[arg(long, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address accessible by other nodes (dual stack; default: the
    /// interface's first global IPv6 address).
    #[arg(long, env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// File the network information (FLANNEL_*) is written to.
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Path to the network configuration (net-conf.json).
    #[arg(
        long,
        env = "FLANNELD_NET_CONFIG_PATH",
        default_value = "/etc/kube-flannel/net-conf.json"
    )]
    pub net_config_path: PathBuf,
    /// Set up IP masquerade for traffic leaving the cluster network.
    #[arg(long, env = "FLANNELD_IP_MASQ", action = bool_flag!(), num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub ip_masq: bool,
    /// Do not use --random-fully on the MASQUERADE rules.
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", action = bool_flag!(), num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub ip_masq_fully_random_disable: bool,
    /// Seconds between checks that the masquerade/forward rules are in place (re-added if not).
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = 5)]
    pub iptables_resync: u64,
    /// Add a blackhole route for the node's own subnet (checked every --iptables-resync seconds).
    #[arg(long, env = "FLANNELD_IP_BLACKHOLE_ROUTE", action = bool_flag!(), num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub ip_blackhole_route: bool,
    /// Add FORWARD accept rules for the cluster network (chain FLANNEL-FWD).
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", action = bool_flag!(), num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub iptables_forward_rules: bool,
    /// Directory of the embedded lease store (used when no other store is selected).
    #[arg(
        long,
        env = "FLANNELD_LOCAL_STORE",
        default_value = "/var/lib/weft/leases"
    )]
    pub local_store: PathBuf,
    /// Lifetime of a lease in the embedded store, in seconds.
    #[arg(
        long,
        env = "FLANNELD_LOCAL_LEASE_TTL",
        default_value_t = 86400,
        hide = true
    )]
    pub local_lease_ttl: u64,
    // ---- etcd lease store (flannel's etcd subnet manager) ----
    /// etcd endpoints, comma separated (e.g. http://10.0.0.1:2379). Selects the etcd store;
    /// without it weft uses the embedded store (flannel would default to
    /// http://127.0.0.1:4001,http://127.0.0.1:2379).
    #[arg(long, env = "FLANNELD_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// etcd prefix: the config is <prefix>/config, leases are under <prefix>/subnets/.
    #[arg(long, env = "FLANNELD_ETCD_PREFIX", default_value = crate::subnet::etcd::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// CA certificate (PEM) to verify etcd's server certificate (https endpoints).
    #[arg(long, env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<String>,
    /// Client certificate (PEM) for etcd (with --etcd-keyfile).
    #[arg(long, env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<String>,
    /// Client private key (PEM) for etcd (with --etcd-certfile).
    #[arg(long, env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<String>,
    /// etcd user name (etcd authentication).
    #[arg(long, env = "FLANNELD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// etcd password (prefer FLANNELD_ETCD_PASSWORD: a flag shows in the process list).
    #[arg(long, env = "FLANNELD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// Lifetime of the etcd lease attached to this node's key, in seconds (flannel: 24 h).
    #[arg(
        long,
        env = "FLANNELD_ETCD_LEASE_TTL",
        default_value_t = 86400,
        hide = true
    )]
    pub etcd_lease_ttl: u64,
    // ---- end etcd ----
    /// Renew the lease this many minutes before it expires (1..1439).
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60)]
    pub subnet_lease_renew_margin: u32,
    /// Address for the health endpoints.
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: Ipv4Addr,
    /// Port for /healthz and /readyz (0 = off). /metrics is served here too unless --metrics-port is set.
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// Port for Prometheus /metrics (0 = only on the healthz port, if any).
    #[arg(long, env = "FLANNELD_METRICS_PORT", default_value_t = 0)]
    pub metrics_port: u16,
    /// Unix socket `weftd status` talks to.
    #[arg(long, env = "FLANNELD_STATUS_SOCKET", default_value = DEFAULT_STATUS_SOCKET)]
    pub status_socket: PathBuf,
    /// Dataplane and agent tunables (TOML, see tunables/weftd.toml).
    #[arg(long, env = "FLANNELD_TUNABLES")]
    pub tunables: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "FLANNELD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,

    // Kubernetes mode (flanneld's flags).
    /// Contact the Kubernetes API for subnet assignment (the node's podCIDR) instead of a lease store.
    #[arg(long, env = "FLANNELD_KUBE_SUBNET_MGR", action = bool_flag!(), num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub kube_subnet_mgr: bool,
    /// Kubernetes API server URL. Does not need to be specified if weftd is running in a pod.
    #[arg(long, env = "FLANNELD_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    /// kubeconfig file location. Does not need to be specified if weftd is running in a pod.
    #[arg(long, env = "FLANNELD_KUBECONFIG_FILE")]
    pub kubeconfig_file: Option<PathBuf>,
    /// Kubernetes annotation prefix. Can contain a single slash "/", otherwise it is appended at the end.
    #[arg(
        long,
        env = "FLANNELD_KUBE_ANNOTATION_PREFIX",
        default_value = crate::subnet::kube::annotations::DEFAULT_PREFIX
    )]
    pub kube_annotation_prefix: String,
    /// Set the node's NetworkUnavailable condition to False once weftd is ready.
    #[arg(long, env = "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", action = bool_flag!(), num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub set_node_network_unavailable: bool,
}

impl RunArgs {
    /// Checks values clap cannot check by type, with flannel's messages.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1439).contains(&self.subnet_lease_renew_margin) {
            return Err("Invalid subnet-lease-renew-margin option, out of acceptable range".into());
        }
        if let Some(etcd) = self.etcd_options() {
            etcd.check(self.subnet_lease_renew_margin)?;
        }
        if self.iptables_resync == 0 {
            return Err("--iptables-resync must be at least 1 second".into());
        }
        let margin = u64::from(self.subnet_lease_renew_margin) * 60;
        if self.local_lease_ttl <= margin {
            return Err(format!(
                "--local-lease-ttl ({} s) must be longer than --subnet-lease-renew-margin ({margin} s), or the lease would be renewed continuously",
                self.local_lease_ttl
            ));
        }
        for re in &self.iface_regex {
            regex::Regex::new(re)
                .map_err(|e| format!("--iface-regex {re:?} is not a valid regex: {e}"))?;
        }
        Ok(())
    }
}

impl RunArgs {
    /// The etcd store's settings, when `--etcd-endpoints` selects it. Empty values
    /// (`FLANNELD_ETCD_CAFILE=`) count as not given, as with flanneld.
    pub fn etcd_options(&self) -> Option<crate::subnet::etcd::EtcdOptions> {
        let endpoints: Vec<String> = self
            .etcd_endpoints
            .iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return None;
        }
        let text = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let path = |p: &Option<String>| text(p).map(PathBuf::from);
        Some(crate::subnet::etcd::EtcdOptions {
            endpoints,
            prefix: self.etcd_prefix.clone(),
            ca_file: path(&self.etcd_cafile),
            cert_file: path(&self.etcd_certfile),
            key_file: path(&self.etcd_keyfile),
            username: text(&self.etcd_username),
            password: text(&self.etcd_password),
            lease_ttl: std::time::Duration::from_secs(self.etcd_lease_ttl),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("weftd").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flannel_style_flags() {
        let cli = parse(&[
            "--iface=eth0",
            "--iface",
            "10.0.0.1",
            "--ip-masq",
            "--public-ip=192.168.1.2",
            "--public-ipv6=fd00::2",
        ]);
        assert_eq!(cli.run.iface, vec!["eth0", "10.0.0.1"]);
        assert!(cli.run.ip_masq);
        assert_eq!(cli.run.public_ip, Some(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(cli.run.public_ipv6, Some("fd00::2".parse().unwrap()));
        assert_eq!(
            cli.run.subnet_file,
            PathBuf::from("/run/flannel/subnet.env")
        );
        let cli = parse(&["--ip-masq=false"]);
        assert!(!cli.run.ip_masq);
    }

    #[test]
    fn renew_margin_range() {
        let mut cli = parse(&["--subnet-lease-renew-margin=1440"]);
        assert_eq!(
            cli.run.validate().unwrap_err(),
            "Invalid subnet-lease-renew-margin option, out of acceptable range"
        );
        cli.run.subnet_lease_renew_margin = 1439;
        cli.run.validate().unwrap();
    }

    #[test]
    fn etcd_flags_select_the_etcd_store() {
        assert!(parse(&[]).run.etcd_options().is_none());
        assert!(parse(&["--etcd-endpoints="]).run.etcd_options().is_none());
        let cli = parse(&[
            "--etcd-endpoints=http://10.0.0.1:2379,http://10.0.0.2:2379",
            "--etcd-cafile=",
            "--etcd-username=flannel",
        ]);
        let etcd = cli.run.etcd_options().unwrap();
        assert_eq!(
            etcd.endpoints,
            vec!["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(etcd.prefix, "/coreos.com/network");
        assert_eq!(etcd.ca_file, None);
        assert_eq!(etcd.username.as_deref(), Some("flannel"));
        assert_eq!(etcd.lease_ttl, std::time::Duration::from_secs(86400));
        cli.run.validate().unwrap();
        // A renew margin at least as long as the lease would renew without pause.
        let cli = parse(&[
            "--etcd-endpoints=http://10.0.0.1:2379",
            "--etcd-lease-ttl=120",
            "--subnet-lease-renew-margin=2",
        ]);
        assert!(cli.run.validate().unwrap_err().contains("renew-margin"));
    }

    #[test]
    fn kube_flags_as_flanneld_takes_them() {
        let cli = parse(&["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"]);
        assert!(cli.run.kube_subnet_mgr);
        assert!(cli.run.set_node_network_unavailable);
        assert_eq!(cli.run.kube_annotation_prefix, "flannel.alpha.coreos.com");
        assert_eq!(cli.run.healthz_port, 8081);
        let cli = parse(&[
            "--kube-subnet-mgr=false",
            "--set-node-network-unavailable=false",
            "--kubeconfig-file",
            "/k",
            "--kube-api-url=https://10.0.0.1:6443",
            "--kube-annotation-prefix=example.com/x",
        ]);
        assert!(!cli.run.kube_subnet_mgr);
        assert!(!cli.run.set_node_network_unavailable);
        assert_eq!(cli.run.kubeconfig_file, Some(PathBuf::from("/k")));
        assert_eq!(
            cli.run.kube_api_url.as_deref(),
            Some("https://10.0.0.1:6443")
        );
        assert_eq!(cli.run.kube_annotation_prefix, "example.com/x");
    }

    #[test]
    fn masquerade_flags() {
        let cli = parse(&[]);
        assert!(!cli.run.ip_masq_fully_random_disable);
        assert!(cli.run.iptables_forward_rules);
        assert_eq!(cli.run.iptables_resync, 5);
        let cli = parse(&[
            "--ip-masq-fully-random-disable",
            "--iptables-forward-rules=false",
            "--iptables-resync=1",
        ]);
        assert!(cli.run.ip_masq_fully_random_disable);
        assert!(!cli.run.iptables_forward_rules);
        assert_eq!(cli.run.iptables_resync, 1);
        let mut cli = parse(&["--iptables-resync=0"]);
        assert!(cli.run.validate().is_err());
        cli.run.iptables_resync = 5;
        cli.run.validate().unwrap();
        assert!(matches!(
            parse(&["cleanup-masq"]).command,
            Some(Command::CleanupMasq)
        ));
    }

    #[test]
    fn status_subcommand() {
        let cli = parse(&["status", "--json", "--status-socket", "/tmp/x.sock"]);
        match cli.command {
            Some(Command::Status(s)) => {
                assert!(s.json);
                assert_eq!(s.status_socket, PathBuf::from("/tmp/x.sock"));
            }
            _ => panic!("not the status subcommand"),
        }
    }
}
