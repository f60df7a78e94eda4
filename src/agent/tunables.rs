//! Tunables read from `--tunables FILE` (TOML). Each field maps to one knob
//! documented in `tunables/weftd.toml` with its default, unit and trade-off.

use crate::core::router::SourceCheck;
use crate::dataplane::offload::OffloadConfig;
use serde::Deserialize;
use std::path::Path;

/// The `--tunables` file: dataplane and agent knobs (see `tunables/weftd.toml`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Tunables {
    /// `[dataplane]`.
    pub dataplane: DataplaneTunables,
    /// `[agent]`.
    pub agent: AgentTunables,
}

/// `[dataplane]`: workers, batches, buffers, offloads, checks.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DataplaneTunables {
    /// Workers (TAP queues and UDP sockets); 0 = one per CPU.
    pub workers: usize,
    /// Frames or datagrams per batch.
    pub batch: usize,
    /// UDP socket buffer size, bytes.
    pub socket_buffer_bytes: usize,
    /// Sending sockets per worker (distinct outer source ports).
    pub source_ports: usize,
    /// Open the TAP with a virtio-net header (offloads).
    pub tap_vnet_hdr: bool,
    /// Accept TCP super-frames from the TAP.
    pub tso: bool,
    /// Accept UDP super-frames from the TAP.
    pub uso: bool,
    /// Send segments with UDP GSO.
    pub udp_gso: bool,
    /// Receive with UDP GRO and coalesce.
    pub udp_gro: bool,
    /// "strict" or "relaxed" (NATed underlays).
    pub source_check: SourceCheckName,
    /// Verify received inner IP and TCP/UDP checksums before coalescing.
    pub verify_checksums: bool,
    /// Skip that check when a nonzero outer UDP checksum covered the frame.
    pub trust_outer_checksum: bool,
    /// One thread per direction in each worker.
    pub split_directions: bool,
    /// Microseconds a dataplane thread keeps polling after traffic (0: off).
    pub busy_poll_us: u64,
}

/// How strictly senders are checked.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceCheckName {
    /// A datagram must come from a lease's public IP with that lease's VtepMAC.
    #[default]
    Strict,
    /// Any source, but a lease's VtepMAC (NATed underlays).
    Relaxed,
}

impl From<SourceCheckName> for SourceCheck {
    fn from(name: SourceCheckName) -> SourceCheck {
        match name {
            SourceCheckName::Strict => SourceCheck::Strict,
            SourceCheckName::Relaxed => SourceCheck::Relaxed,
        }
    }
}

/// `[agent]`: the control loop's periods.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentTunables {
    /// Seconds between checks that every route and the device address are in place.
    pub resync_seconds: u64,
    /// Seconds between summaries of dropped traffic in the log.
    pub drop_log_seconds: u64,
    /// Kube mode: seconds to wait for the first node list before giving up
    /// (or, with `CONT_WHEN_CACHE_NOT_READY=true`, going on without it).
    pub kube_sync_timeout_seconds: u64,
}

impl Default for DataplaneTunables {
    fn default() -> Self {
        let offloads = OffloadConfig::default();
        DataplaneTunables {
            workers: 0,
            batch: 64,
            socket_buffer_bytes: 4 << 20,
            source_ports: 16,
            tap_vnet_hdr: offloads.tap_vnet_hdr,
            tso: offloads.tso,
            uso: offloads.uso,
            udp_gso: offloads.udp_gso,
            udp_gro: offloads.udp_gro,
            source_check: SourceCheckName::Strict,
            verify_checksums: true,
            trust_outer_checksum: true,
            split_directions: true,
            busy_poll_us: crate::dataplane::DEFAULT_BUSY_POLL_US,
        }
    }
}

impl Default for AgentTunables {
    fn default() -> Self {
        AgentTunables {
            resync_seconds: 5,
            drop_log_seconds: 10,
            kube_sync_timeout_seconds: 600,
        }
    }
}

impl Tunables {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Tunables, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read tunables {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("bad tunables file {}: {e}", path.display()))
    }

    /// Parses and checks a tunables document.
    pub fn parse(text: &str) -> Result<Tunables, String> {
        let t: Tunables = toml::from_str(text).map_err(|e| e.to_string())?;
        if t.dataplane.batch == 0 || t.dataplane.batch > 1024 {
            return Err("dataplane.batch must be 1..1024".into());
        }
        if t.dataplane.source_ports == 0 || t.dataplane.source_ports > 1024 {
            return Err("dataplane.source_ports must be 1..1024".into());
        }
        if t.dataplane.busy_poll_us > 10_000 {
            return Err("dataplane.busy_poll_us must be 0..10000 (microseconds)".into());
        }
        if t.agent.resync_seconds == 0
            || t.agent.drop_log_seconds == 0
            || t.agent.kube_sync_timeout_seconds == 0
        {
            return Err("agent intervals must be at least 1 second".into());
        }
        Ok(t)
    }

    /// The offloads to ask the kernel for.
    pub fn offloads(&self) -> OffloadConfig {
        let d = &self.dataplane;
        OffloadConfig {
            tap_vnet_hdr: d.tap_vnet_hdr,
            tso: d.tso && d.tap_vnet_hdr,
            uso: d.uso && d.tap_vnet_hdr,
            udp_gso: d.udp_gso,
            udp_gro: d.udp_gro,
        }
    }

    /// The worker count, resolving 0 to the number of CPUs.
    pub fn workers(&self) -> usize {
        match self.dataplane.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_file_matches_defaults() {
        let text = include_str!("../../tunables/weftd.toml");
        assert_eq!(Tunables::parse(text).unwrap(), Tunables::default());
    }

    #[test]
    fn unknown_and_bad_values_are_refused() {
        assert!(
            Tunables::parse("[dataplane]\nbatchh = 3\n")
                .unwrap_err()
                .contains("batchh")
        );
        assert!(Tunables::parse("[dataplane]\nbatch = 0\n").is_err());
        assert!(Tunables::parse("[dataplane]\nsource_check = \"loose\"\n").is_err());
        assert!(
            Tunables::parse("[dataplane]\nbusy_poll_us = 10001\n")
                .unwrap_err()
                .contains("busy_poll_us")
        );
        assert_eq!(
            Tunables::parse("[dataplane]\nbusy_poll_us = 200\n")
                .unwrap()
                .dataplane
                .busy_poll_us,
            200
        );
        let t = Tunables::parse("[dataplane]\ntso = false\nsource_check = \"relaxed\"\n").unwrap();
        assert!(!t.offloads().tso);
        assert_eq!(
            SourceCheck::from(t.dataplane.source_check),
            SourceCheck::Relaxed
        );
    }
}
