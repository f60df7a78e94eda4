//! The TAP device `flannel.<VNI>`: opening its queues, keeping it persistent
//! across restarts, and negotiating offloads with the kernel.

use super::error::DataplaneError;
use super::offload::{ActiveOffloads, OffloadConfig};
use super::sys;
use std::os::fd::OwnedFd;

/// Length of the virtio-net header weft uses on the TAP (`struct virtio_net_hdr`).
pub const VNET_HDR_LEN: usize = 10;

/// An opened multi-queue TAP device.
#[derive(Debug)]
pub struct Tap {
    /// The device's name (`flannel.<VNI>`).
    pub name: String,
    /// One descriptor per queue (per worker).
    pub queues: Vec<OwnedFd>,
    /// What the kernel agreed to.
    pub offloads: ActiveOffloads,
}

impl Tap {
    /// Opens `queues` queues of the TAP `name`, creating the device if it does not
    /// exist and making it persistent, and enables what it can of `wanted`.
    pub fn open(name: &str, queues: usize, wanted: &OffloadConfig) -> Result<Tap, DataplaneError> {
        let open_err = |source| DataplaneError::OpenTap {
            name: name.to_owned(),
            source,
        };
        let configure_err = |what, source| DataplaneError::ConfigureTap {
            name: name.to_owned(),
            what,
            source,
        };
        let mut offloads = ActiveOffloads::default();
        let vnet_hdr = wanted.tap_vnet_hdr;
        let first = sys::open_tap(name, sys::TapFlags { vnet_hdr }).map_err(open_err)?;
        sys::set_tap_persist(&first, true).map_err(|e| configure_err("TUNSETPERSIST", e))?;
        if vnet_hdr {
            sys::set_tap_vnet_hdr_len(&first, VNET_HDR_LEN as i32)
                .map_err(|e| configure_err("TUNSETVNETHDRSZ", e))?;
            offloads = negotiate(&first, wanted);
        }
        if !offloads.tap_vnet_hdr {
            // Offload flags are device-wide and survive in a persistent device: clear
            // them, or the kernel would keep handing us super-frames we cannot read.
            drop(first);
            let plain = sys::open_tap(name, sys::TapFlags { vnet_hdr: false }).map_err(open_err)?;
            sys::set_tap_offload(&plain, 0).map_err(|e| configure_err("TUNSETOFFLOAD", e))?;
            let mut all = vec![plain];
            for _ in 1..queues.max(1) {
                all.push(sys::open_tap(name, sys::TapFlags { vnet_hdr: false }).map_err(open_err)?);
            }
            return Ok(Tap {
                name: name.to_owned(),
                queues: all,
                offloads,
            });
        }
        let mut all = vec![first];
        for _ in 1..queues.max(1) {
            let q = sys::open_tap(name, sys::TapFlags { vnet_hdr: true }).map_err(open_err)?;
            sys::set_tap_vnet_hdr_len(&q, VNET_HDR_LEN as i32)
                .map_err(|e| configure_err("TUNSETVNETHDRSZ", e))?;
            all.push(q);
        }
        Ok(Tap {
            name: name.to_owned(),
            queues: all,
            offloads,
        })
    }
}

/// Asks for the wanted offloads, dropping the newest ones the kernel refuses.
fn negotiate(fd: &OwnedFd, wanted: &OffloadConfig) -> ActiveOffloads {
    let tso = if wanted.tso {
        libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    } else {
        0
    };
    let uso = if wanted.uso {
        libc::TUN_F_USO4 | libc::TUN_F_USO6
    } else {
        0
    };
    let attempts = [(tso, uso), (tso, 0), (0, 0)];
    for (tso_bits, uso_bits) in attempts {
        if sys::set_tap_offload(fd, libc::TUN_F_CSUM | tso_bits | uso_bits).is_ok() {
            return ActiveOffloads {
                tap_vnet_hdr: true,
                tap_csum: true,
                tso: tso_bits != 0,
                uso: uso_bits != 0,
                ..ActiveOffloads::default()
            };
        }
    }
    ActiveOffloads::default()
}
