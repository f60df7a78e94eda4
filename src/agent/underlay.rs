//! The underlay address weftd listens on, watched in each family: when it
//! is removed, weftd waits a grace period and looks again; back, nothing
//! happens; gone with no other address, the overlay is down until one comes;
//! replaced by another, weftd exits so that it restarts on the new one (its
//! lease must announce the address peers can reach).

use super::AgentError;
use std::net::IpAddr;
use std::time::Duration;
use tracing::{error, info, warn};

/// How long the underlay address may be missing before weftd looks for a
/// replacement: an address that is removed and added back (a DHCP renewal, an
/// operator's `ip addr flush` and re-add) is not a change.
pub const ADDRESS_GRACE: Duration = Duration::from_secs(2);

/// One family's underlay address and what is known about it.
#[derive(Debug, Clone)]
pub struct UnderlayAddress {
    /// The underlay interface.
    iface: String,
    /// The address weftd listens on.
    listen: IpAddr,
    /// When to look at the interface's addresses again.
    pub check: Option<tokio::time::Instant>,
    /// Whether the interface still has `listen`.
    present: bool,
}

impl UnderlayAddress {
    /// Watches `listen` on `iface`.
    pub fn new(iface: &str, listen: IpAddr) -> UnderlayAddress {
        UnderlayAddress {
            iface: iface.to_owned(),
            listen,
            check: None,
            present: true,
        }
    }

    /// The address weftd listens on.
    pub fn listen(&self) -> IpAddr {
        self.listen
    }

    /// An address of this family came, changed or went on the underlay
    /// interface: the removal of the one weftd listens on starts the grace
    /// period; while it is missing, any new address starts one too.
    pub fn event(&mut self, addr: IpAddr, added: bool) {
        if !added && addr == self.listen {
            warn!(interface = %self.iface, addr = %addr, "the underlay address {addr} was removed from {}; looking again in {} s", self.iface, ADDRESS_GRACE.as_secs());
            self.look_again();
        } else if added && self.check.is_none() && !self.present {
            self.look_again();
        }
    }

    /// Schedules a look after the grace period.
    pub fn look_again(&mut self) {
        self.check = Some(tokio::time::Instant::now() + ADDRESS_GRACE);
    }

    /// After the grace period, given whether the interface holds the
    /// address weftd listens on and the other addresses it could listen on
    /// (best first): back (nothing to do), gone with no other (the overlay is
    /// down meanwhile), or replaced (an error: weftd exits).
    pub fn verdict(&mut self, present: bool, candidates: &[IpAddr]) -> Result<(), AgentError> {
        self.check = None;
        if present {
            if !self.present {
                info!(interface = %self.iface, addr = %self.listen, "the underlay address {} is back on {}", self.listen, self.iface);
            }
            self.present = true;
            return Ok(());
        }
        match candidates.first() {
            None => {
                if self.present {
                    let family = if self.listen.is_ipv4() {
                        "IPv4"
                    } else {
                        "IPv6"
                    };
                    error!(interface = %self.iface, addr = %self.listen, "{} has no usable {family} address any more: pod traffic to and from other nodes over {family} is down until {} is back (or another address comes, then weftd restarts on it)", self.iface, self.listen);
                }
                self.present = false;
                Ok(())
            }
            Some(new) => Err(AgentError::UnderlayAddressChanged {
                iface: self.iface.clone(),
                old: self.listen,
                new: *new,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn removal_of_the_listen_address_alone_starts_the_grace_period() {
        let mut u = UnderlayAddress::new("eth0", ip("fd00:99::1"));
        u.event(ip("fd00:99::2"), false);
        u.event(ip("fd00:99::3"), true);
        assert!(u.check.is_none(), "other addresses are not ours");
        let before = tokio::time::Instant::now();
        u.event(ip("fd00:99::1"), false);
        let when = u.check.expect("a look scheduled");
        assert!(
            when >= before + ADDRESS_GRACE && when <= tokio::time::Instant::now() + ADDRESS_GRACE
        );
    }

    #[test]
    fn back_missing_or_replaced() {
        let mut u = UnderlayAddress::new("eth0", ip("192.168.100.1"));
        u.event(ip("192.168.100.1"), false);
        assert!(u.verdict(true, &[]).is_ok() && u.check.is_none());

        // Gone, nothing else: down, and a new address starts a look.
        assert!(u.verdict(false, &[]).is_ok());
        u.event(ip("192.168.100.11"), true);
        assert!(u.check.is_some());
        let err = u
            .verdict(false, &[ip("192.168.100.11"), ip("169.254.0.1")])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("changed from 192.168.100.1 to 192.168.100.11"),
            "{err}"
        );

        let mut u = UnderlayAddress::new("eth0", ip("fd00:99::1"));
        let err = u.verdict(false, &[ip("fd00:99::11")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("changed from fd00:99::1 to fd00:99::11"),
            "{err}"
        );
    }
}
