//! weft: flannel's vxlan overlay with a userspace VXLAN dataplane.
//!
//! - [`core`]: sans-IO wire formats, tables, routing decisions, lease semantics, config.
//! - `dataplane`, `netlink`, `subnet`: shells that own one OS resource each.
//! - `agent`: wires them together in flannel's startup order.
//! - `cni`: the `weft-cni` CNI plugin.
//! - [`files`]: files written atomically, shared by the agent and the plugin.

pub mod agent;
pub mod cni;
pub mod core;
pub mod dataplane;
pub mod files;
pub mod netlink;
pub mod subnet;
