//! `--ip-blackhole-route`: keeps a `blackhole <own subnet>` route in the main
//! table (one per family in dual stack), so traffic to pod IPs that no pod holds is dropped on the node
//! rather than sent to the default route (flannel's "in case the bridge plugin
//! is not enabled", e.g. Canal).
//!
//! Checked at start and every resync period; re-added when missing. Never
//! removed (flannel does not either). While another route owns the prefix
//! (cni0's connected route) the kernel answers `EEXIST`: that is normal and
//! logged once, not every period.

use crate::netlink::Netlink;
use crate::netlink::blackhole::is_exists;
use ipnet::IpNet;
use std::time::Duration;
use tracing::{info, warn};

/// What one check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The blackhole route was already there.
    Present,
    /// It was missing and has been added.
    Added,
    /// Another route owns the prefix (`EEXIST`).
    Shadowed,
    /// The kernel refused for another reason.
    Failed,
}

/// Whether an outcome is worth a log line, given the previous one: an
/// `EEXIST` that persists is said once; failures are said every time.
pub fn worth_logging(previous: Option<Outcome>, now: Outcome) -> bool {
    match now {
        Outcome::Present => false,
        Outcome::Added | Outcome::Failed => true,
        Outcome::Shadowed => previous != Some(Outcome::Shadowed),
    }
}

/// One check: adds the route if it is missing.
pub async fn ensure(nl: &Netlink, subnet: IpNet) -> Outcome {
    match nl.has_blackhole(subnet).await {
        Ok(true) => return Outcome::Present,
        Ok(false) => {}
        Err(e) => {
            warn!(%subnet, error = %e, "Failed to setup blackhole route; retrying at the next period");
            return Outcome::Failed;
        }
    }
    match nl.add_blackhole(subnet).await {
        Ok(()) => Outcome::Added,
        Err(e) if is_exists(&e) => Outcome::Shadowed,
        Err(e) => {
            warn!(%subnet, error = %e, "Failed to setup blackhole route; retrying at the next period");
            Outcome::Failed
        }
    }
}

/// Checks `subnets` now and then every `period` until the task is aborted.
pub fn start(nl: Netlink, subnets: Vec<IpNet>, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut previous = vec![None; subnets.len()];
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            for (&subnet, previous) in subnets.iter().zip(previous.iter_mut()) {
                let outcome = ensure(&nl, subnet).await;
                if worth_logging(*previous, outcome) {
                    match outcome {
                        Outcome::Added => info!(%subnet, "added blackhole route"),
                        Outcome::Shadowed => info!(
                            %subnet,
                            "another route owns the subnet's prefix (the bridge's, e.g. cni0): no blackhole route while it exists; checked every period"
                        ),
                        Outcome::Present | Outcome::Failed => {}
                    }
                }
                *previous = Some(outcome);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eexist_is_logged_once_failures_always() {
        assert!(worth_logging(None, Outcome::Shadowed));
        assert!(!worth_logging(Some(Outcome::Shadowed), Outcome::Shadowed));
        assert!(worth_logging(Some(Outcome::Added), Outcome::Shadowed));
        assert!(worth_logging(Some(Outcome::Failed), Outcome::Failed));
        assert!(worth_logging(Some(Outcome::Present), Outcome::Added));
        assert!(!worth_logging(Some(Outcome::Added), Outcome::Present));
    }
}
