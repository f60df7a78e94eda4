//! The IPv6 half of a dual-stack node: the global IPv6 addresses of the
//! underlay, the `flannel-v6.<VNI>` device's `/128` address, and the routes
//! to remote IPv6 subnets (`S6 via S6::0 dev flannel-v6.<VNI> onlink`, as
//! flannel programs them).

use super::{Netlink, Result, WEFT_ROUTE_PROTOCOL, ctx, ignore_esrch, in_main_table};
use futures::TryStreamExt;
use ipnet::Ipv6Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv6Addr};

/// An IPv6 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddr6 {
    /// The interface index.
    pub index: u32,
    /// The address.
    pub addr: Ipv6Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Duplicate address detection has not ended (or failed): nothing can
    /// bind to it yet.
    pub tentative: bool,
    /// A temporary (privacy) address, which the kernel replaces every few
    /// hours: a VTEP announced on it would move with it.
    pub temporary: bool,
}

impl LinkAddr6 {
    /// An address another node can reach: not loopback, link-local or multicast.
    pub fn is_global(&self) -> bool {
        !(self.addr.is_loopback()
            || self.addr.is_unspecified()
            || self.addr.is_multicast()
            || self.addr.is_unicast_link_local())
    }
}

/// A main-table IPv6 route weft may own, as the stale-route sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute6 {
    /// The destination.
    pub dst: Ipv6Net,
    /// The gateway, if any.
    pub gateway: Option<Ipv6Addr>,
    /// The output interface, if any.
    pub oif: Option<u32>,
    /// Its protocol number (`proto`).
    pub protocol: u8,
    /// The message, to delete exactly this route.
    pub message: RouteMessage,
}

/// The kernel's answer to `ip -6 route get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteGet6 {
    /// The gateway, when the destination is not on-link.
    pub gateway: Option<Ipv6Addr>,
    /// The output interface.
    pub oif: Option<u32>,
    /// A plain unicast route (not local, blackhole, unreachable, ...).
    pub unicast: bool,
}

impl Netlink {
    /// Every IPv6 address, or those on `index`.
    pub async fn addresses_v6(&self, index: Option<u32>) -> Result<Vec<LinkAddr6>> {
        let mut req = self.handle.address().get();
        if let Some(index) = index {
            req = req.set_link_index_filter(index);
        }
        let mut stream = req.execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(ctx(|| "list IPv6 addresses".into()))?
        {
            if msg.header.family != AddressFamily::Inet6 {
                continue;
            }
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip))
                | AddressAttribute::Local(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(addr) = addr {
                out.push(LinkAddr6 {
                    index: msg.header.index,
                    addr,
                    prefix_len: msg.header.prefix_len,
                    tentative: msg
                        .header
                        .flags
                        .intersects(AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed),
                    // IFA_F_TEMPORARY is IFA_F_SECONDARY's bit, for IPv6.
                    temporary: msg.header.flags.contains(AddressHeaderFlags::Secondary),
                });
            }
        }
        Ok(out)
    }

    /// Makes `addr/128` the only global IPv6 address on the IPv6 VTEP
    /// (flannel's `EnsureV6AddressOnLink`), without duplicate address
    /// detection (no other node has it: it is this node's subnet's). The
    /// link-local address stays.
    pub async fn ensure_vtep_address_v6(
        &self,
        link: &super::LinkInfo,
        addr: Ipv6Addr,
    ) -> Result<()> {
        let mut present = false;
        let mut stale = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(ctx(|| format!("list addresses of {}", link.name)))?
        {
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip))
                | AddressAttribute::Local(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            });
            let Some(ip) = ip else { continue };
            if ip.is_unicast_link_local() {
                continue;
            }
            if ip == addr && msg.header.prefix_len == 128 {
                present = true;
            } else {
                stale.push(msg);
            }
        }
        if !present {
            let mut add = self.handle.address().add(link.index, IpAddr::V6(addr), 128);
            add.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            add.execute()
                .await
                .map_err(ctx(|| format!("add {addr}/128 to {}", link.name)))?;
        }
        for msg in stale {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(ctx(|| {
                    format!("remove a stale IPv6 address from {}", link.name)
                }))?;
        }
        Ok(())
    }

    fn vtep_route_v6(index: u32, subnet: Ipv6Net) -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .gateway(subnet.network())
            .output_interface(index)
            .protocol(RouteProtocol::from(WEFT_ROUTE_PROTOCOL))
            .onlink()
            .build()
    }

    /// `ip -6 route replace S6 via S6::0 dev <index> onlink proto 87`.
    pub async fn replace_route_v6(&self, index: u32, subnet: Ipv6Net) -> Result<()> {
        self.handle
            .route()
            .add(Self::vtep_route_v6(index, subnet))
            .replace()
            .execute()
            .await
            .map_err(ctx(|| {
                format!("add route {subnet} via {}", subnet.network())
            }))
    }

    /// Removes the IPv6 route to `subnet` on the link; one already gone is fine.
    pub async fn delete_route_v6(&self, index: u32, subnet: Ipv6Net) -> Result<()> {
        let result = self
            .handle
            .route()
            .del(Self::vtep_route_v6(index, subnet))
            .execute()
            .await;
        ignore_esrch(result, || format!("delete route {subnet}"))
    }

    /// Deletes exactly `route` (from [`Netlink::main_table_routes_v6`]).
    pub async fn delete_kernel_route_v6(&self, route: &KernelRoute6) -> Result<()> {
        let result = self
            .handle
            .route()
            .del(route.message.clone())
            .execute()
            .await;
        ignore_esrch(result, || format!("delete route {}", route.dst))
    }

    /// Every IPv6 route of the main table.
    pub async fn main_table_routes_v6(&self) -> Result<Vec<KernelRoute6>> {
        let filter = RouteMessageBuilder::<Ipv6Addr>::new().build();
        let mut stream = self.handle.route().get(filter).execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(ctx(|| "list IPv6 routes".into()))?
        {
            if !in_main_table(&msg) {
                continue;
            }
            let dst = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(*ip),
                _ => None,
            });
            let gateway = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => Some(*ip),
                _ => None,
            });
            let oif = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            let dst = Ipv6Net::new(
                dst.unwrap_or(Ipv6Addr::UNSPECIFIED),
                msg.header.destination_prefix_length,
            )
            .unwrap_or_default();
            out.push(KernelRoute6 {
                dst,
                gateway,
                oif,
                protocol: u8::from(msg.header.protocol),
                message: msg,
            });
        }
        Ok(out)
    }

    fn direct_route_v6(subnet: Ipv6Net, via: Ipv6Addr) -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .gateway(via)
            .protocol(RouteProtocol::from(WEFT_ROUTE_PROTOCOL))
            .build()
    }

    /// `ip -6 route replace S6 via P proto 87` (DirectRouting: the peer's
    /// public IPv6 address on-link on the underlay).
    pub async fn replace_direct_route_v6(&self, subnet: Ipv6Net, via: Ipv6Addr) -> Result<()> {
        self.handle
            .route()
            .add(Self::direct_route_v6(subnet, via))
            .replace()
            .execute()
            .await
            .map_err(ctx(|| format!("add direct route {subnet} via {via}")))
    }

    /// Removes the direct route to `subnet` via `via`; one already gone is fine.
    pub async fn delete_direct_route_v6(&self, subnet: Ipv6Net, via: Ipv6Addr) -> Result<()> {
        let result = self
            .handle
            .route()
            .del(Self::direct_route_v6(subnet, via))
            .execute()
            .await;
        ignore_esrch(result, || format!("delete direct route {subnet} via {via}"))
    }

    /// The kernel's answer to `ip -6 route get <ip>`: gateway, interface, type.
    pub async fn route_get_v6(&self, ip: Ipv6Addr) -> Result<Option<RouteGet6>> {
        let query = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(ip, 128)
            .build();
        let mut stream = self.handle.route().get(query).execute();
        let msg = stream
            .try_next()
            .await
            .map_err(ctx(|| format!("route get {ip}")))?;
        Ok(msg.map(|m| RouteGet6 {
            gateway: m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => Some(*ip),
                _ => None,
            }),
            oif: m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            }),
            unicast: m.header.kind == netlink_packet_route::route::RouteType::Unicast,
        }))
    }
}
