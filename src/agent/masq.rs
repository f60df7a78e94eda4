//! IP masquerade and forward-accept rules: flannel's traffic manager
//! (`pkg/trafficmngr`, flannel-compat.md §7), rule for rule and comment for
//! comment, so `iptables -t nat -S` and `nft list ruleset` look the same on a
//! weft node as on a flannel node and either agent can take over or clean up
//! after the other.
//!
//! - iptables (flannel's default): nat chain `FLANNEL-POSTRTG` jumped to from
//!   `POSTROUTING` ("flanneld masq"), filter chain `FLANNEL-FWD` jumped to from
//!   `FORWARD` ("flanneld forward"), applied as one `iptables-restore --noflush`
//!   transaction per table that deletes any existing copy first so the order is
//!   exact; every `--iptables-resync` seconds each rule is checked with
//!   `iptables -C` and, if one is missing, the whole set is applied again.
//! - nftables (`EnableNFTables: true`): table `ip flannel-ipv4` with chains
//!   `postrtg` (nat, postrouting, srcnat) and `forward` (filter, forward),
//!   flushed and refilled in one `nft -f` transaction; every resync the table
//!   is listed and compared with what nft listed right after applying it, and
//!   applied again if anything differs. (flannel itself does not resync nft.)
//! - IPv6 (`EnableIPv6`, when the agent passes an IPv6 network and subnet):
//!   the same rules with `ff00::/8` for multicast, beside the IPv4 ones:
//!   `ip6tables`/`ip6tables-restore` chains of the same names, or table
//!   `ip6 flannel-ipv6` with the same chains; checked, re-asserted and, for a
//!   previous IPv6 network/subnet, deleted the same way.
//!
//! The rules are installed by running the `iptables`, `iptables-restore`
//! (`ip6tables`, `ip6tables-restore` for IPv6) and `nft` tools (Debian
//! packages `iptables`, `nftables`), as flannel does
//! through go-iptables and knftables: the node's `iptables` alternative picks
//! the same backend (nft or legacy) kube-proxy uses, `iptables-restore` gives
//! the one-transaction ordering flannel relies on, and the rule text is exactly
//! what the tools print back. The `iptables` crate wraps the same binary
//! without restore transactions; the `nftables` crate wraps `nft -j` and adds
//! nothing for a fixed rule set; a netlink nftables encoder would not help the
//! iptables side, which must stay readable by `iptables`.
//!
//! Before applying, rules for a previous Network/subnet (from the old
//! `subnet.env`) are deleted if they differ, as flannel does. At startup the
//! other mode's rules are removed (flannel's `CleanUp`). Unlike flannel's
//! nftables mode, the rules stay when weftd stops (like its iptables mode), so
//! a restart does not interrupt pod traffic; `weftd cleanup-masq` removes all
//! of them.

use crate::core::lease::NO_IPV4_SUBNET;
use ipnet::{Ipv4Net, Ipv6Net};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tracing::{info, warn};

/// kube-proxy's masquerade mark: traffic it marks is left to it.
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";
const MASQ_COMMENT: &str = "flanneld masq";
const FORWARD_COMMENT: &str = "flanneld forward";
const POSTRTG: &str = "FLANNEL-POSTRTG";
const FWD: &str = "FLANNEL-FWD";

/// Which tool manages the rules (net-conf `EnableNFTables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// iptables chains FLANNEL-POSTRTG and FLANNEL-FWD.
    Iptables,
    /// nftables table `ip flannel-ipv4` (and `ip6 flannel-ipv6`).
    Nftables,
}

/// What to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqConfig {
    /// Which tool.
    pub mode: Mode,
    /// The cluster network (net-conf `Network`); in an IPv6-only network
    /// [`NO_IPV4_SUBNET`], and no IPv4 rule is installed.
    pub network: Ipv4Net,
    /// This node's pod subnet (the lease); [`NO_IPV4_SUBNET`] when IPv6-only.
    pub subnet: Ipv4Net,
    /// `--ip-masq`.
    pub masquerade: bool,
    /// `--iptables-forward-rules`.
    pub forward: bool,
    /// `--ip-masq-fully-random-disable`.
    pub random_fully_disable: bool,
    /// `--iptables-resync`.
    pub resync: Duration,
    /// IPv6 (net-conf `IPv6Network`, this node's IPv6 subnet), when the node
    /// has an IPv6 lease: flannel's IPv6 rules are installed beside the IPv4 ones.
    pub ipv6: Option<(Ipv6Net, Ipv6Net)>,
}

impl MasqConfig {
    /// Whether IPv4 rules are wanted (all but IPv6-only networks). Read
    /// from the lease's subnet, never /0 in a network with IPv4 (a `Network`
    /// of 0.0.0.0/0 is a network, its subnets are not).
    pub fn has_ipv4(&self) -> bool {
        self.subnet != NO_IPV4_SUBNET
    }
}

/// A rules tool failed.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// The tool cannot be started.
    #[error(
        "cannot run {tool}: {source}; install the Debian package `{package}` (or run weftd without --ip-masq and with --iptables-forward-rules=false)"
    )]
    Spawn {
        /// The tool.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The tool failed.
    #[error("{tool} {args} failed ({status}): {stderr}")]
    Failed {
        /// The tool.
        tool: &'static str,
        /// Its arguments.
        args: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
}

/// One iptables rule: table, chain and match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The table (`nat`, `filter`).
    pub table: &'static str,
    /// The chain.
    pub chain: &'static str,
    /// Match and target arguments.
    pub spec: Vec<String>,
}

impl Rule {
    fn new(table: &'static str, chain: &'static str, spec: &[&str]) -> Rule {
        Rule {
            table,
            chain,
            spec: spec.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The line for `iptables-restore` (`-A`/`-D`), arguments with spaces quoted.
    pub fn restore_line(&self, action: &str) -> String {
        let mut line = format!("{action} {}", self.chain);
        for arg in &self.spec {
            if arg.contains(' ') {
                line.push_str(&format!(" \"{arg}\""));
            } else {
                line.push(' ');
                line.push_str(arg);
            }
        }
        line
    }

    /// The chain of ours this rule lives in or jumps to.
    fn own_chain(&self) -> &'static str {
        if self.chain == FWD || self.spec.last().is_some_and(|s| s == FWD) {
            FWD
        } else {
            POSTRTG
        }
    }
}

/// What differs between flannel's IPv4 and IPv6 rules: the tools, the
/// nftables table, the multicast range and how log lines name the family.
#[derive(Debug, Clone, Copy)]
struct Family {
    /// `iptables` or `ip6tables`.
    iptables: &'static str,
    /// `iptables-restore` or `ip6tables-restore`.
    restore: &'static str,
    /// The nftables family, also the address match keyword (`ip saddr`, `ip6 saddr`).
    nft_family: &'static str,
    /// The nftables table (flannel's `knftables` interface per family).
    nft_table: &'static str,
    /// Multicast, never masqueraded.
    multicast: &'static str,
    /// How log lines name the family: nothing for IPv4, `IPv6 ` for IPv6.
    label: &'static str,
    /// How a warning names the FORWARD chain whose DROP policy would drop pod traffic.
    forward_chain: &'static str,
}

const IPV4: Family = Family {
    iptables: "iptables",
    restore: "iptables-restore",
    nft_family: "ip",
    nft_table: "flannel-ipv4",
    multicast: "224.0.0.0/4",
    label: "",
    forward_chain: "FORWARD",
};

const IPV6: Family = Family {
    iptables: "ip6tables",
    restore: "ip6tables-restore",
    nft_family: "ip6",
    nft_table: "flannel-ipv6",
    multicast: "ff00::/8",
    label: "IPv6 ",
    forward_chain: "ip6tables FORWARD",
};

/// A network of one address family ([`Ipv4Net`], [`Ipv6Net`]): the type picks
/// the [`Family`], so IPv6 networks never meet the IPv4 tools.
trait FamilyNet: Copy + PartialEq + std::fmt::Display {
    const FAMILY: Family;
}

impl FamilyNet for Ipv4Net {
    const FAMILY: Family = IPV4;
}

impl FamilyNet for Ipv6Net {
    const FAMILY: Family = IPV6;
}

/// flannel's `masqRules`, in order.
pub fn masq_rules(network: Ipv4Net, subnet: Ipv4Net, random_fully: bool) -> Vec<Rule> {
    family_masq_rules(network, subnet, random_fully)
}

/// flannel's `masqIP6Rules` (for `ip6tables`), in order: [`masq_rules`] with `ff00::/8`.
pub fn masq6_rules(network: Ipv6Net, subnet: Ipv6Net, random_fully: bool) -> Vec<Rule> {
    family_masq_rules(network, subnet, random_fully)
}

fn family_masq_rules<N: FamilyNet>(network: N, subnet: N, random_fully: bool) -> Vec<Rule> {
    let (cluster, pod) = (network.to_string(), subnet.to_string());
    let (cluster, pod) = (cluster.as_str(), pod.as_str());
    let multicast = N::FAMILY.multicast;
    let comment = ["-m", "comment", "--comment", MASQ_COMMENT];
    let with = |head: &[&str], tail: &[&str]| {
        let mut spec: Vec<&str> = head.to_vec();
        spec.extend_from_slice(&comment);
        spec.extend_from_slice(tail);
        Rule::new("nat", POSTRTG, &spec)
    };
    let masquerade: &[&str] = if random_fully {
        &["-j", "MASQUERADE", "--random-fully"]
    } else {
        &["-j", "MASQUERADE"]
    };
    let mut jump = with(&[], &["-j", POSTRTG]);
    jump.chain = "POSTROUTING";
    vec![
        jump,
        with(
            &["-m", "mark", "--mark", KUBE_PROXY_MARK],
            &["-j", "RETURN"],
        ),
        with(&["-s", pod, "-d", cluster], &["-j", "RETURN"]),
        with(&["-s", cluster, "-d", pod], &["-j", "RETURN"]),
        with(&["!", "-s", cluster, "-d", pod], &["-j", "RETURN"]),
        with(&["-s", cluster, "!", "-d", multicast], masquerade),
        with(&["!", "-s", cluster, "-d", cluster], masquerade),
    ]
}

/// flannel's `forwardRules`.
pub fn forward_rules(network: Ipv4Net) -> Vec<Rule> {
    family_forward_rules(network)
}

/// flannel's `forwardRules` for an IPv6 network (for `ip6tables`).
pub fn forward6_rules(network: Ipv6Net) -> Vec<Rule> {
    family_forward_rules(network)
}

fn family_forward_rules<N: FamilyNet>(network: N) -> Vec<Rule> {
    let cluster = network.to_string();
    let cluster = cluster.as_str();
    let comment = ["-m", "comment", "--comment", FORWARD_COMMENT];
    let mut jump = comment.to_vec();
    jump.extend_from_slice(&["-j", FWD]);
    let mut from = vec!["-s", cluster];
    from.extend_from_slice(&comment);
    from.extend_from_slice(&["-j", "ACCEPT"]);
    let mut to = vec!["-d", cluster];
    to.extend_from_slice(&comment);
    to.extend_from_slice(&["-j", "ACCEPT"]);
    vec![
        Rule::new("filter", "FORWARD", &jump),
        Rule::new("filter", FWD, &from),
        Rule::new("filter", FWD, &to),
    ]
}

/// The `iptables-restore --noflush` input that (re)installs `rules` in order,
/// deleting the copies in `existing` first.
pub fn restore_input(rules: &[Rule], existing: &[bool]) -> String {
    let mut out = String::new();
    for table in ["nat", "filter"] {
        let lines: Vec<String> = rules
            .iter()
            .zip(existing.iter().chain(std::iter::repeat(&false)))
            .filter(|(r, _)| r.table == table)
            .flat_map(|(r, exists)| {
                let mut lines = Vec::new();
                if *exists {
                    lines.push(r.restore_line("-D"));
                }
                lines.push(r.restore_line("-A"));
                lines
            })
            .collect();
        if !lines.is_empty() {
            out.push_str(&format!("*{table}\n{}\nCOMMIT\n", lines.join("\n")));
        }
    }
    out
}

/// The nftables transaction: table, then each wanted chain flushed and refilled
/// (flannel's `initTable`, `SetupAndEnsureForwardRules`, `addMasqRules`).
pub fn nft_script(config: &MasqConfig, fully_random: bool) -> String {
    family_nft_script(config, config.network, config.subnet, fully_random)
}

/// The IPv6 transaction (table `ip6 flannel-ipv6`, `ff00::/8`), empty
/// without [`MasqConfig::ipv6`].
pub fn nft6_script(config: &MasqConfig, fully_random: bool) -> String {
    match config.ipv6 {
        Some((network, subnet)) => family_nft_script(config, network, subnet, fully_random),
        None => String::new(),
    }
}

fn family_nft_script<N: FamilyNet>(
    config: &MasqConfig,
    network: N,
    subnet: N,
    fully_random: bool,
) -> String {
    let Family {
        nft_family: ip,
        nft_table: name,
        multicast,
        ..
    } = N::FAMILY;
    let (cluster, pod) = (network.to_string(), subnet.to_string());
    let t = format!("{ip} {name}");
    let masquerade = if fully_random {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let mut s = format!("add table {t} {{ comment \"rules for {name}\" ; }}\n");
    if config.forward {
        s.push_str(&format!(
            "add chain {t} forward {{ type filter hook forward priority filter ; comment \"chain to accept flannel traffic\" ; }}\n\
             flush chain {t} forward\n\
             add rule {t} forward {ip} saddr {cluster} accept\n\
             add rule {t} forward {ip} daddr {cluster} accept\n"
        ));
    }
    if config.masquerade {
        s.push_str(&format!(
            "add chain {t} postrtg {{ type nat hook postrouting priority srcnat ; comment \"chain to manage traffic masquerading by flannel\" ; }}\n\
             flush chain {t} postrtg\n\
             add rule {t} postrtg meta mark 0x4000 return\n\
             add rule {t} postrtg {ip} saddr {pod} {ip} daddr {cluster} return\n\
             add rule {t} postrtg {ip} saddr {cluster} {ip} daddr {pod} return\n\
             add rule {t} postrtg {ip} saddr != {pod} {ip} daddr {cluster} return\n\
             add rule {t} postrtg {ip} saddr {cluster} {ip} daddr != {multicast} {masquerade}\n\
             add rule {t} postrtg {ip} saddr != {cluster} {ip} daddr {cluster} {masquerade}\n"
        ));
    }
    s
}

/// Runs a tool to the end, feeding it `stdin`; its output goes to `stdout`
/// (null or piped, to capture), its error output is kept for [`MasqError::Failed`].
fn exec(
    tool: &'static str,
    package: &'static str,
    args: &[&str],
    stdin: Option<&str>,
    stdout: Stdio,
) -> Result<Output, MasqError> {
    let cannot_run = |source| MasqError::Spawn {
        tool,
        package,
        source,
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot_run)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // The tools read all input before acting; a write error shows in the exit status.
        let _ = pipe.write_all(text.as_bytes());
    }
    child.wait_with_output().map_err(cannot_run)
}

fn failed(tool: &'static str, args: &[&str], out: &Output) -> MasqError {
    MasqError::Failed {
        tool,
        args: args.join(" "),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}

/// Runs a tool, feeding `stdin`; `Ok(true)` on exit 0, `Ok(false)` on exit 1
/// when `one_is_no` (iptables -C: "no such rule"), else an error.
fn run(
    tool: &'static str,
    package: &'static str,
    args: &[&str],
    stdin: Option<&str>,
    one_is_no: bool,
) -> Result<bool, MasqError> {
    let out = exec(tool, package, args, stdin, Stdio::null())?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) if one_is_no => Ok(false),
        _ => Err(failed(tool, args, &out)),
    }
}

/// Runs a tool and returns what it printed.
fn capture(tool: &'static str, package: &'static str, args: &[&str]) -> Result<String, MasqError> {
    let out = exec(tool, package, args, None, Stdio::piped())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(tool, args, &out))
    }
}

/// One family's iptables chains, through its `iptables` and `iptables-restore`.
impl Family {
    fn cmd(&self, args: &[&str], one_is_no: bool) -> Result<bool, MasqError> {
        let mut full = vec!["--wait"];
        full.extend_from_slice(args);
        run(self.iptables, "iptables", &full, None, one_is_no)
    }

    fn chain_exists(&self, table: &str, chain: &str) -> Result<bool, MasqError> {
        self.cmd(&["-t", table, "-S", chain], true)
    }

    /// Creates the chain, or flushes it if it exists (go-iptables `ClearChain`).
    fn clear_chain(&self, table: &str, chain: &str) -> Result<(), MasqError> {
        if self.chain_exists(table, chain)? {
            self.cmd(&["-t", table, "-F", chain], false)?;
        } else {
            self.cmd(&["-t", table, "-N", chain], false)?;
        }
        Ok(())
    }

    fn rule_exists(&self, rule: &Rule) -> Result<bool, MasqError> {
        if !self.chain_exists(rule.table, rule.own_chain())? {
            return Ok(false);
        }
        let mut args = vec!["-t", rule.table, "-C", rule.chain];
        args.extend(rule.spec.iter().map(String::as_str));
        self.cmd(&args, true)
    }

    fn restore(&self, input: &str) -> Result<(), MasqError> {
        if input.is_empty() {
            return Ok(());
        }
        run(
            self.restore,
            "iptables",
            &["--noflush", "--wait"],
            Some(input),
            false,
        )
        .map(|_| ())
    }

    /// flannel's `ipTablesBootstrap`: our chains exist, existing copies are
    /// deleted and all rules appended in order, in one transaction per table.
    fn bootstrap(&self, rules: &[Rule]) -> Result<(), MasqError> {
        let mut existing = Vec::with_capacity(rules.len());
        for rule in rules {
            if !self.chain_exists(rule.table, rule.own_chain())? {
                self.cmd(&["-t", rule.table, "-N", rule.own_chain()], false)?;
            }
            existing.push(self.rule_exists(rule)?);
        }
        self.restore(&restore_input(rules, &existing))
    }

    /// Deletes those of `rules` that exist (flannel's `teardownIPTables`).
    fn teardown(&self, rules: &[Rule]) -> Result<(), MasqError> {
        let mut input = String::new();
        for table in ["nat", "filter"] {
            let mut lines = Vec::new();
            for rule in rules.iter().filter(|r| r.table == table) {
                if self.rule_exists(rule)? {
                    lines.push(rule.restore_line("-D"));
                }
            }
            if !lines.is_empty() {
                input.push_str(&format!("*{table}\n{}\nCOMMIT\n", lines.join("\n")));
            }
        }
        self.restore(&input)
    }

    /// Bootstraps `rules` again if any is missing (flannel's resync),
    /// per table as flannel: the masquerade and the forward set. Returns true
    /// if it had to.
    fn reassert(&self, rules: &[Rule]) -> Result<bool, MasqError> {
        let mut missing = false;
        for rule in rules {
            if !self.rule_exists(rule)? {
                missing = true;
                break;
            }
        }
        if missing {
            warn!(
                "some {} rules are missing; deleting and recreating rules",
                self.iptables
            );
            let (nat, filter): (Vec<Rule>, Vec<Rule>) =
                rules.iter().cloned().partition(|r| r.table == "nat");
            for set in [nat, filter] {
                if !set.is_empty() {
                    self.bootstrap(&set)?;
                }
            }
        }
        Ok(missing)
    }

    /// Removes our jumps and chains, whatever rules they hold.
    fn remove_all(&self) -> Result<(), MasqError> {
        for (table, parent, chain, comment) in [
            ("nat", "POSTROUTING", POSTRTG, MASQ_COMMENT),
            ("filter", "FORWARD", FWD, FORWARD_COMMENT),
        ] {
            if !self.chain_exists(table, chain)? {
                continue;
            }
            let jump = [
                "-t",
                table,
                "-D",
                parent,
                "-m",
                "comment",
                "--comment",
                comment,
                "-j",
                chain,
            ];
            // Remove every copy of the jump (-D deletes one at a time).
            for _ in 0..100 {
                if !self.cmd(&jump, true)? {
                    break;
                }
            }
            self.cmd(&["-t", table, "-F", chain], false)?;
            self.cmd(&["-t", table, "-X", chain], false)?;
        }
        Ok(())
    }

    /// go-iptables `HasRandomFully`: iptables 1.6.2 or newer.
    fn has_random_fully(&self) -> bool {
        capture(self.iptables, "iptables", &["--version"])
            .ok()
            .and_then(|v| {
                let version = v.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
                let parts: Vec<u32> = version
                    .split('.')
                    .map(|p| p.parse().ok())
                    .collect::<Option<_>>()?;
                Some(parts >= vec![1, 6, 2])
            })
            .unwrap_or(false)
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<bool, MasqError> {
    run("nft", "nftables", args, stdin, false)
}

impl Family {
    /// Deletes the family's nftables table, if there is one.
    fn delete_nft_table(&self) -> Result<(), MasqError> {
        let (family, table) = (self.nft_family, self.nft_table);
        // Listing first tells "absent" (fine) from a failure.
        if run(
            "nft",
            "nftables",
            &["list", "table", family, table],
            None,
            true,
        )? {
            nft(&["delete", "table", family, table], None)?;
        }
        Ok(())
    }
}

/// Whether this kernel and nft accept `masquerade fully-random` (flannel's
/// dry-run check of a test chain).
fn nft_has_fully_random() -> bool {
    let probe = "add table ip weft-probe\n\
                 add chain ip weft-probe masqueradeTest { type nat hook postrouting priority srcnat ; }\n\
                 add rule ip weft-probe masqueradeTest masquerade fully-random\n";
    nft(&["--check", "-f", "-"], Some(probe)).is_ok()
}

/// Installed rules, kept in place by [`Masq::ensure`].
#[derive(Debug)]
pub struct Masq {
    config: MasqConfig,
    /// iptables mode: the IPv4 rules.
    rules: Vec<Rule>,
    /// iptables mode: the IPv6 rules (ip6tables).
    rules6: Vec<Rule>,
    /// nftables mode: the IPv4 table.
    nft: NftTable,
    /// nftables mode: the IPv6 table.
    nft6: NftTable,
}

/// One applied nftables table and how nft listed it.
#[derive(Debug)]
struct NftTable {
    family: Family,
    script: String,
    /// `nft list table` right after applying.
    listing: String,
}

impl NftTable {
    fn new(family: Family) -> NftTable {
        NftTable {
            family,
            script: String::new(),
            listing: String::new(),
        }
    }

    /// Applies the table of `N`'s family for `config` (nftables mode). A
    /// failure is an error when the table masquerades, else only a warning
    /// (forward rules alone, as in flannel).
    fn setup<N: FamilyNet>(
        config: &MasqConfig,
        network: N,
        subnet: N,
        fully_random: bool,
    ) -> Result<NftTable, MasqError> {
        let family = N::FAMILY;
        info!(
            %network, %subnet, masquerade = config.masquerade, forward = config.forward, fully_random,
            "setting up {}nftables rules", family.label
        );
        let mut table = NftTable {
            script: family_nft_script(config, network, subnet, fully_random),
            ..NftTable::new(family)
        };
        match table.apply() {
            Ok(()) => {}
            Err(e) if !config.masquerade => {
                warn!(error = %e, "cannot set up the {}forward-accept rules (nftables)", family.label);
            }
            Err(e) => return Err(e),
        }
        Ok(table)
    }

    fn list(&self) -> Result<String, MasqError> {
        capture(
            "nft",
            "nftables",
            &[
                "list",
                "table",
                self.family.nft_family,
                self.family.nft_table,
            ],
        )
    }

    fn apply(&mut self) -> Result<(), MasqError> {
        nft(&["-f", "-"], Some(&self.script))?;
        self.listing = self.list()?;
        Ok(())
    }

    /// Applies the table again if its listing changed. Returns true if it had to.
    fn ensure(&mut self) -> Result<bool, MasqError> {
        if self.script.is_empty() {
            return Ok(false);
        }
        let now = self.list().unwrap_or_default();
        if now == self.listing {
            return Ok(false);
        }
        warn!(
            "the nftables table {} was changed or deleted; applying it again",
            self.family.nft_table
        );
        self.apply()?;
        Ok(true)
    }
}

/// Installs one family's masquerade rules (iptables mode), first deleting
/// those of `previous` if it differs from (`network`, `subnet`). Returns the
/// rules, for [`Masq::ensure`] to check.
fn setup_masq_iptables<N: FamilyNet>(
    (network, subnet): (N, N),
    previous: Option<(N, N)>,
    random_fully_disable: bool,
) -> Result<Vec<Rule>, MasqError> {
    let family = N::FAMILY;
    let random_fully = !random_fully_disable && family.has_random_fully();
    if let Some((old_network, old_subnet)) = previous
        && (old_network, old_subnet) != (network, subnet)
    {
        info!(
            %network, %subnet, %old_network, %old_subnet,
            "{}network or subnet changed since the last run; removing the masquerade rules of the old ones",
            family.label
        );
        for fully in [true, false] {
            family.teardown(&family_masq_rules(old_network, old_subnet, fully))?;
        }
    }
    info!(
        %network, %subnet, random_fully,
        "setting up {}masquerade rules ({})", family.label, family.iptables
    );
    let rules = family_masq_rules(network, subnet, random_fully);
    family.clear_chain("nat", POSTRTG)?;
    family.bootstrap(&rules)?;
    Ok(rules)
}

/// Installs one family's forward-accept rules (iptables mode). Returns the
/// rules, or none if they could not be set up: as in flannel, that is only a
/// warning.
fn setup_forward_iptables<N: FamilyNet>(network: N) -> Vec<Rule> {
    let family = N::FAMILY;
    info!(%network, "setting up {}forward-accept rules ({})", family.label, family.iptables);
    let rules = family_forward_rules(network);
    match family
        .clear_chain("filter", FWD)
        .and_then(|()| family.bootstrap(&rules))
    {
        Ok(()) => rules,
        Err(e) => {
            warn!(
                error = %e,
                "cannot set up the {label}forward-accept rules; {label}pod traffic is dropped if {}'s policy is DROP",
                family.forward_chain,
                label = family.label
            );
            Vec::new()
        }
    }
}

impl Masq {
    /// Sets the rules up: removes the other mode's rules, deletes the rules of
    /// a previous (network, subnet) — `previous` for IPv4, `previous6` for
    /// IPv6 — if they differ, then installs ours.
    /// Masquerade failures are errors (weftd stops: a node that silently does
    /// not masquerade is worse); forward-rule failures only warnings, as in flannel.
    pub fn setup(
        config: MasqConfig,
        previous: Option<(Ipv4Net, Ipv4Net)>,
        previous6: Option<(Ipv6Net, Ipv6Net)>,
    ) -> Result<Masq, MasqError> {
        let mut masq = Masq {
            rules: Vec::new(),
            rules6: Vec::new(),
            nft: NftTable::new(IPV4),
            nft6: NftTable::new(IPV6),
            config,
        };
        match masq.config.mode {
            Mode::Iptables => {
                if let Err(e) = IPV4
                    .delete_nft_table()
                    .and_then(|()| IPV6.delete_nft_table())
                {
                    info!(error = %e, "could not clean up nftables rules left by the nftables mode");
                }
                masq.setup_iptables(previous, previous6)?;
            }
            Mode::Nftables => {
                for family in [IPV4, IPV6] {
                    if let Err(e) = family.remove_all() {
                        info!(error = %e, tool = family.iptables, "could not clean up iptables rules left by the iptables mode");
                    }
                }
                masq.setup_nft()?;
            }
        }
        if !masq.config.has_ipv4() {
            // IPv6-only: the IPv4 rules of an earlier config with IPv4 go.
            let cleaned = match masq.config.mode {
                Mode::Iptables => IPV4.remove_all(),
                Mode::Nftables => IPV4.delete_nft_table(),
            };
            if let Err(e) = cleaned {
                info!(error = %e, "could not clean up IPv4 rules left by an earlier config with IPv4");
            }
        }
        Ok(masq)
    }

    fn setup_iptables(
        &mut self,
        previous: Option<(Ipv4Net, Ipv4Net)>,
        previous6: Option<(Ipv6Net, Ipv6Net)>,
    ) -> Result<(), MasqError> {
        let c = &self.config;
        let ipv4 = c.has_ipv4();
        if c.masquerade {
            if ipv4 {
                let rules =
                    setup_masq_iptables((c.network, c.subnet), previous, c.random_fully_disable)?;
                self.rules.extend(rules);
            }
            if let Some(ipv6) = c.ipv6 {
                let rules = setup_masq_iptables(ipv6, previous6, c.random_fully_disable)?;
                self.rules6.extend(rules);
            }
        }
        if c.forward {
            if ipv4 {
                self.rules.extend(setup_forward_iptables(c.network));
            }
            if let Some((network, _)) = c.ipv6 {
                self.rules6.extend(setup_forward_iptables(network));
            }
        }
        Ok(())
    }

    fn setup_nft(&mut self) -> Result<(), MasqError> {
        let c = &self.config;
        let fully_random = !c.random_fully_disable && nft_has_fully_random();
        if c.has_ipv4() {
            self.nft = NftTable::setup(c, c.network, c.subnet, fully_random)?;
        }
        if let Some((network, subnet)) = c.ipv6 {
            self.nft6 = NftTable::setup(c, network, subnet, fully_random)?;
        }
        Ok(())
    }

    /// Puts back what someone deleted or changed, IPv4 then IPv6. Returns
    /// true if it had to. Both families are checked even if one fails; the
    /// first error is returned.
    pub fn ensure(&mut self) -> Result<bool, MasqError> {
        let (v4, v6) = match self.config.mode {
            Mode::Iptables => (IPV4.reassert(&self.rules), IPV6.reassert(&self.rules6)),
            Mode::Nftables => (self.nft.ensure(), self.nft6.ensure()),
        };
        Ok(v4? | v6?)
    }

    /// How often rules someone removed are put back.
    pub fn resync_period(&self) -> Duration {
        self.config.resync
    }
}

/// What weftd's flags ask for (IPv4 only): [`start_from_flags_dual_stack`]
/// without IPv6.
pub async fn start_from_flags(
    args: &super::cli::RunArgs,
    config: &crate::core::config::NetConfig,
    network: Ipv4Net,
    subnet: Ipv4Net,
    previous: Option<&crate::core::subnet_env::SubnetEnv>,
) -> Result<Option<tokio::task::JoinHandle<()>>, MasqError> {
    start_from_flags_dual_stack(args, config, Some((network, subnet)), None, previous).await
}

/// What weftd's flags ask for: nothing unless `--ip-masq` or
/// `--iptables-forward-rules` (default on, as in flannel); nftables when the
/// net-conf says `EnableNFTables`. `ipv6` is (net-conf `IPv6Network`, this
/// node's IPv6 lease subnet) when the node has an IPv6 lease: the IPv6 rules
/// are set up beside the IPv4 ones; `ipv4` is (net-conf `Network`, the
/// lease's subnet), `None` in an IPv6-only network (no IPv4 rule at all).
/// `previous` is the old `subnet.env`: the
/// rules of its `FLANNEL_NETWORK`/`FLANNEL_SUBNET` and
/// `FLANNEL_IPV6_NETWORK`/`FLANNEL_IPV6_SUBNET` are deleted if they differ.
pub async fn start_from_flags_dual_stack(
    args: &super::cli::RunArgs,
    config: &crate::core::config::NetConfig,
    ipv4: Option<(Ipv4Net, Ipv4Net)>,
    ipv6: Option<(Ipv6Net, Ipv6Net)>,
    previous: Option<&crate::core::subnet_env::SubnetEnv>,
) -> Result<Option<tokio::task::JoinHandle<()>>, MasqError> {
    if !args.ip_masq && !args.iptables_forward_rules {
        return Ok(None);
    }
    let (network, subnet) = ipv4.unwrap_or((NO_IPV4_SUBNET, NO_IPV4_SUBNET));
    let masq_config = MasqConfig {
        mode: if config.enable_nftables {
            Mode::Nftables
        } else {
            Mode::Iptables
        },
        network,
        subnet,
        masquerade: args.ip_masq,
        forward: args.iptables_forward_rules,
        random_fully_disable: args.ip_masq_fully_random_disable,
        resync: Duration::from_secs(args.iptables_resync),
        ipv6,
    };
    let previous6 = previous.and_then(|env| env.ipv6_network.zip(env.ipv6_subnet));
    let previous = previous.and_then(|env| env.network.zip(env.subnet));
    start(masq_config, previous, previous6).await.map(Some)
}

/// Sets the rules up (see [`Masq::setup`]) and keeps them in place every
/// resync period until the returned task is aborted. Failures to re-assert
/// are logged and retried at the next period.
pub async fn start(
    config: MasqConfig,
    previous: Option<(Ipv4Net, Ipv4Net)>,
    previous6: Option<(Ipv6Net, Ipv6Net)>,
) -> Result<tokio::task::JoinHandle<()>, MasqError> {
    let masq = tokio::task::spawn_blocking(move || Masq::setup(config, previous, previous6))
        .await
        .map_err(|e| MasqError::Spawn {
            tool: "iptables",
            package: "iptables",
            source: std::io::Error::other(e.to_string()),
        })??;
    Ok(tokio::spawn(async move {
        let mut masq = masq;
        let mut tick = tokio::time::interval(masq.resync_period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let checked = tokio::task::spawn_blocking(move || {
                let result = masq.ensure();
                (masq, result)
            })
            .await;
            match checked {
                Ok((m, result)) => {
                    masq = m;
                    if let Err(e) = result {
                        warn!(error = %e, "cannot re-assert the masquerade/forward rules; retrying at the next resync");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "the rule check task failed; masquerade rules are no longer re-asserted");
                    return;
                }
            }
        }
    }))
}

/// `weftd cleanup-masq`: removes flannel's/weft's rules of both modes and both
/// families. Returns what could not be removed (tools missing count as nothing to remove).
pub fn cleanup_all() -> Vec<MasqError> {
    [
        IPV4.remove_all(),
        IPV6.remove_all(),
        IPV4.delete_nft_table(),
        IPV6.delete_nft_table(),
    ]
    .into_iter()
    .filter_map(|result| match result {
        Ok(()) | Err(MasqError::Spawn { .. }) => None,
        Err(e) => Some(e),
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(|r| r.restore_line("-A")).collect()
    }

    #[test]
    fn flannels_masquerade_rules_exactly() {
        let rules = masq_rules(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
            true,
        );
        assert!(rules.iter().all(|r| r.table == "nat"));
        assert_eq!(
            lines(&rules),
            [
                r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
                r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            ]
        );
        let plain = masq_rules(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
            false,
        );
        assert!(plain[5].restore_line("-A").ends_with("-j MASQUERADE"));
        assert!(plain[6].restore_line("-A").ends_with("-j MASQUERADE"));
    }

    #[test]
    fn flannels_forward_rules_exactly() {
        assert_eq!(
            lines(&forward_rules("10.244.0.0/16".parse().unwrap())),
            [
                r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
                r#"-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
                r#"-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
            ]
        );
    }

    #[test]
    fn restore_transaction_deletes_existing_copies_first() {
        let mut rules = masq_rules(
            "10.1.0.0/16".parse().unwrap(),
            "10.1.2.0/24".parse().unwrap(),
            false,
        );
        rules.truncate(2);
        rules.extend(forward_rules("10.1.0.0/16".parse().unwrap()));
        let input = restore_input(&rules, &[true, false, false, true, false]);
        assert_eq!(
            input,
            "*nat\n\
             -D POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             -A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN\n\
             COMMIT\n\
             *filter\n\
             -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
             -D FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             COMMIT\n"
        );
    }

    #[test]
    fn flannels_nftables_rules() {
        let config = MasqConfig {
            mode: Mode::Nftables,
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            masquerade: true,
            forward: true,
            random_fully_disable: false,
            resync: Duration::from_secs(5),
            ipv6: None,
        };
        let script = nft_script(&config, true);
        for line in [
            "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\" ; }",
            "add chain ip flannel-ipv4 forward { type filter hook forward priority filter ; comment \"chain to accept flannel traffic\" ; }",
            "flush chain ip flannel-ipv4 forward",
            "add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept",
            "add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept",
            "flush chain ip flannel-ipv4 postrtg",
            "add rule ip flannel-ipv4 postrtg meta mark 0x4000 return",
            "add rule ip flannel-ipv4 postrtg ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
            "add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
            "add rule ip flannel-ipv4 postrtg ip saddr != 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
            "add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
        ] {
            assert!(
                script.lines().any(|l| l == line),
                "missing {line:?} in\n{script}"
            );
        }
        let forward_only = nft_script(
            &MasqConfig {
                masquerade: false,
                ..config
            },
            false,
        );
        assert!(!forward_only.contains("postrtg"));
        assert!(forward_only.contains("forward ip saddr"));
    }

    /// The whole IPv4 nft transaction, byte for byte (kept identical when IPv6 was added).
    #[test]
    fn ipv4_nft_script_byte_for_byte() {
        let config = MasqConfig {
            mode: Mode::Nftables,
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            masquerade: true,
            forward: true,
            random_fully_disable: false,
            resync: Duration::from_secs(5),
            ipv6: None,
        };
        assert_eq!(
            nft_script(&config, true),
            "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\" ; }\n\
             add chain ip flannel-ipv4 forward { type filter hook forward priority filter ; comment \"chain to accept flannel traffic\" ; }\n\
             flush chain ip flannel-ipv4 forward\n\
             add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept\n\
             add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept\n\
             add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat ; comment \"chain to manage traffic masquerading by flannel\" ; }\n\
             flush chain ip flannel-ipv4 postrtg\n\
             add rule ip flannel-ipv4 postrtg meta mark 0x4000 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr != 10.244.3.0/24 ip daddr 10.244.0.0/16 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\
             add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random\n"
        );
        let plain = nft_script(
            &MasqConfig {
                forward: false,
                ..config
            },
            false,
        );
        assert!(!plain.contains("forward"));
        assert!(plain.ends_with("ip daddr 10.244.0.0/16 masquerade\n"));
    }

    /// Each network type reaches its own family's tools and nftables table.
    #[test]
    fn network_types_pick_their_family() {
        let (v4, v6) = (
            <Ipv4Net as FamilyNet>::FAMILY,
            <Ipv6Net as FamilyNet>::FAMILY,
        );
        assert_eq!(
            (v4.iptables, v4.restore, v4.nft_family, v4.nft_table),
            ("iptables", "iptables-restore", "ip", "flannel-ipv4")
        );
        assert_eq!(
            (v6.iptables, v6.restore, v6.nft_family, v6.nft_table),
            ("ip6tables", "ip6tables-restore", "ip6", "flannel-ipv6")
        );
    }

    const NETWORK6: &str = "fd00:10::/48";
    const SUBNET6: &str = "fd00:10:0:3::/64";

    fn dual_stack_config() -> MasqConfig {
        MasqConfig {
            mode: Mode::Nftables,
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            masquerade: true,
            forward: true,
            random_fully_disable: false,
            resync: Duration::from_secs(5),
            ipv6: Some((NETWORK6.parse().unwrap(), SUBNET6.parse().unwrap())),
        }
    }

    /// flannel's `masqIP6Rules` (flannel-compat §7: "IPv6 identical with
    /// `ff00::/8`"), as ip6tables-restore input and as `ip6tables -S` prints them.
    #[test]
    fn flannels_ipv6_masquerade_rules_exactly() {
        let rules = masq6_rules(NETWORK6.parse().unwrap(), SUBNET6.parse().unwrap(), true);
        assert!(rules.iter().all(|r| r.table == "nat"));
        assert_eq!(
            lines(&rules),
            [
                r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
                r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s fd00:10:0:3::/64 -d fd00:10::/48 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s fd00:10::/48 -d fd00:10:0:3::/64 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG ! -s fd00:10::/48 -d fd00:10:0:3::/64 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s fd00:10::/48 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
                r#"-A FLANNEL-POSTRTG ! -s fd00:10::/48 -d fd00:10::/48 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            ]
        );
        let plain = masq6_rules(NETWORK6.parse().unwrap(), SUBNET6.parse().unwrap(), false);
        assert!(
            plain[5]
                .restore_line("-A")
                .ends_with("! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE")
        );
        assert!(plain[6].restore_line("-A").ends_with("-j MASQUERADE"));
        // The chain each rule's existence check looks at, as flannel's ipTablesRulesExist.
        assert!(rules.iter().all(|r| r.own_chain() == POSTRTG));
    }

    #[test]
    fn flannels_ipv6_forward_rules_and_restore_input() {
        let mut rules = masq6_rules(NETWORK6.parse().unwrap(), SUBNET6.parse().unwrap(), false);
        rules.truncate(1);
        rules.extend(forward6_rules(NETWORK6.parse().unwrap()));
        assert_eq!(
            restore_input(&rules, &[false, false, true, false]),
            "*nat\n\
             -A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
             COMMIT\n\
             *filter\n\
             -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
             -D FLANNEL-FWD -s fd00:10::/48 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A FLANNEL-FWD -s fd00:10::/48 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A FLANNEL-FWD -d fd00:10::/48 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             COMMIT\n"
        );
        assert!(rules[1..].iter().all(|r| r.own_chain() == FWD));
    }

    /// flannel's `ip6 flannel-ipv6` table (`SetupAndEnsureForwardRules` and
    /// `addMasqRules` with `knftables.IPv6Family`), byte for byte; the IPv4
    /// transaction does not change with IPv6 on.
    #[test]
    fn flannels_ipv6_nftables_table_byte_for_byte() {
        let config = dual_stack_config();
        assert_eq!(
            nft6_script(&config, true),
            "add table ip6 flannel-ipv6 { comment \"rules for flannel-ipv6\" ; }\n\
             add chain ip6 flannel-ipv6 forward { type filter hook forward priority filter ; comment \"chain to accept flannel traffic\" ; }\n\
             flush chain ip6 flannel-ipv6 forward\n\
             add rule ip6 flannel-ipv6 forward ip6 saddr fd00:10::/48 accept\n\
             add rule ip6 flannel-ipv6 forward ip6 daddr fd00:10::/48 accept\n\
             add chain ip6 flannel-ipv6 postrtg { type nat hook postrouting priority srcnat ; comment \"chain to manage traffic masquerading by flannel\" ; }\n\
             flush chain ip6 flannel-ipv6 postrtg\n\
             add rule ip6 flannel-ipv6 postrtg meta mark 0x4000 return\n\
             add rule ip6 flannel-ipv6 postrtg ip6 saddr fd00:10:0:3::/64 ip6 daddr fd00:10::/48 return\n\
             add rule ip6 flannel-ipv6 postrtg ip6 saddr fd00:10::/48 ip6 daddr fd00:10:0:3::/64 return\n\
             add rule ip6 flannel-ipv6 postrtg ip6 saddr != fd00:10:0:3::/64 ip6 daddr fd00:10::/48 return\n\
             add rule ip6 flannel-ipv6 postrtg ip6 saddr fd00:10::/48 ip6 daddr != ff00::/8 masquerade fully-random\n\
             add rule ip6 flannel-ipv6 postrtg ip6 saddr != fd00:10::/48 ip6 daddr fd00:10::/48 masquerade fully-random\n"
        );
        assert_eq!(
            nft_script(&config, true),
            nft_script(
                &MasqConfig {
                    ipv6: None,
                    ..config.clone()
                },
                true
            )
        );
        let masq_only = nft6_script(
            &MasqConfig {
                forward: false,
                ..config.clone()
            },
            false,
        );
        assert!(!masq_only.contains("forward"));
        assert!(masq_only.ends_with("ip6 daddr fd00:10::/48 masquerade\n"));
        let forward_only = nft6_script(
            &MasqConfig {
                masquerade: false,
                ..config.clone()
            },
            true,
        );
        assert!(!forward_only.contains("postrtg"));
        assert!(forward_only.contains("forward ip6 saddr fd00:10::/48 accept"));
        assert_eq!(
            nft6_script(
                &MasqConfig {
                    ipv6: None,
                    ..config
                },
                true
            ),
            ""
        );
    }
}
