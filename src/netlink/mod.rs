//! The kernel's routing state, through rtnetlink: the VTEP link's MAC, MTU,
//! address and state; the routes to remote subnets (`S via S.0 dev
//! flannel.<VNI> onlink`); and what interface selection needs to know about
//! links, addresses and the default route.

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};

use crate::core::mac::MacAddr;

pub mod blackhole;
pub mod v6;

/// A netlink request that failed, with what it was for.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {what}: {source}")]
pub struct NetlinkError {
    /// What weft asked the kernel for.
    pub what: String,
    /// The kernel's (or the socket's) error.
    #[source]
    pub source: rtnetlink::Error,
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match &self.source {
            rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

fn ctx(what: impl FnOnce() -> String) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError {
        what: what(),
        source,
    }
}

/// What weft needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The interface index.
    pub index: u32,
    /// The interface name.
    pub name: String,
    /// Its MAC, if it has one.
    pub mac: Option<MacAddr>,
    /// Its MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
}

impl LinkInfo {
    /// No link (index 0, which the kernel never gives one): the IPv4 VTEP of
    /// an IPv6-only node, which does not exist.
    pub fn absent() -> LinkInfo {
        LinkInfo {
            index: 0,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: false,
        }
    }
}

/// An IPv4 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddr {
    /// The interface index.
    pub index: u32,
    /// The address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// The route protocol (`ip route ... proto 87`) that marks every route weft
/// installs. Unassigned: `linux/rtnetlink.h` lists 0-4, 8-18, 42, 99, 186-192,
/// and `/etc/iproute2/rt_protos` knows no 87.
pub const WEFT_ROUTE_PROTOCOL: u8 = 87;

/// The kernel's own routes (`proto kernel`: prefix routes of addresses).
pub const KERNEL_ROUTE_PROTOCOL: u8 = 2;

/// A main-table IPv4 route, as the stale-route sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    /// The destination.
    pub dst: Ipv4Net,
    /// The gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// The output interface, if any.
    pub oif: Option<u32>,
    /// Its protocol number (`proto`).
    pub protocol: u8,
    /// A `blackhole` route (`--ip-blackhole-route`'s kind).
    pub blackhole: bool,
    /// The kernel's message, to delete exactly this route.
    pub message: RouteMessage,
}

/// The kernel's answer to `ip route get <ip>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteGet {
    /// The gateway, when the destination is not on-link.
    pub gateway: Option<Ipv4Addr>,
    /// The output interface.
    pub oif: Option<u32>,
    /// A plain unicast route (not local, blackhole, unreachable, ...).
    pub unicast: bool,
}

/// A connection to rtnetlink.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection; its driver runs on the current tokio runtime.
    pub fn connect() -> std::io::Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    fn link_info(msg: &netlink_packet_route::link::LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => info.name = name.clone(),
                LinkAttribute::Address(bytes) => info.mac = MacAddr::from_slice(bytes),
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                _ => {}
            }
        }
        info
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let mut out = Vec::new();
        let mut stream = self.handle.link().get().execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(ctx(|| "list links".into()))?
        {
            out.push(Self::link_info(&msg));
        }
        Ok(out)
    }

    /// The link called `name`, if it exists.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(Self::link_info(&msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(msg))
                if msg.code.is_some_and(|c| -c.get() == libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(source) => Err(NetlinkError {
                what: format!("look up link {name}"),
                source,
            }),
        }
    }

    /// Caps the TCP segments per TSO super-frame the kernel builds for the link.
    pub async fn set_gso_max_segs(&self, link: &LinkInfo, segs: u32) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .append_extra_attribute(LinkAttribute::GsoMaxSegs(segs))
                    .build(),
            )
            .execute()
            .await
            .map_err(ctx(|| format!("set gso_max_segs {segs} on {}", link.name)))
    }

    /// Sets the link's MAC address (if it differs), MTU, and brings it up.
    pub async fn configure_link(&self, link: &LinkInfo, mac: MacAddr, mtu: u32) -> Result<()> {
        if link.mac != Some(mac) {
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(link.index)
                        .address(mac.0.to_vec())
                        .build(),
                )
                .execute()
                .await
                .map_err(ctx(|| format!("set MAC {mac} on {}", link.name)))?;
        }
        if link.mtu != mtu {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(link.index).mtu(mtu).build())
                .execute()
                .await
                .map_err(ctx(|| format!("set MTU {mtu} on {}", link.name)))?;
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(ctx(|| format!("bring {} up", link.name)))?;
        Ok(())
    }

    /// Brings the link up.
    pub async fn set_up(&self, link: &LinkInfo) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(ctx(|| format!("bring {} up", link.name)))
    }

    /// Every IPv4 address, or those on `index`.
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<LinkAddr>> {
        let mut req = self.handle.address().get();
        if let Some(index) = index {
            req = req.set_link_index_filter(index);
        }
        let mut stream = req.execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(ctx(|| "list addresses".into()))?
        {
            if msg.header.family != AddressFamily::Inet {
                continue;
            }
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(addr) = local.or(address) {
                out.push(LinkAddr {
                    index: msg.header.index,
                    addr,
                    prefix_len: msg.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    /// Makes `addr/32` the only IPv4 address on the link. flannel's
    /// `EnsureV4AddressOnLink` removes other addresses inside the Network
    /// only; the device is weft's, so an address an earlier Network left
    /// (flannel issue #1604) goes too — else the kernel may pick it as the
    /// source of pod traffic, which no peer routes back any more.
    pub async fn ensure_vtep_address(&self, link: &LinkInfo, addr: Ipv4Addr) -> Result<()> {
        let mut present = false;
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        let mut stale = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(ctx(|| format!("list addresses of {}", link.name)))?
        {
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let Some(ip) = ip else { continue };
            if ip == addr && msg.header.prefix_len == 32 {
                present = true;
            } else {
                stale.push(msg);
            }
        }
        // Add before removing: a device left without IPv4 address loses all
        // its routes (the kernel's fib_disable_ip).
        if !present {
            self.handle
                .address()
                .add(link.index, IpAddr::V4(addr), 32)
                .execute()
                .await
                .map_err(ctx(|| format!("add {addr}/32 to {}", link.name)))?;
        }
        for msg in stale {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(ctx(|| format!("remove a stale address from {}", link.name)))?;
        }
        Ok(())
    }

    fn vtep_route(index: u32, subnet: Ipv4Net) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .gateway(subnet.network())
            .output_interface(index)
            .protocol(RouteProtocol::from(WEFT_ROUTE_PROTOCOL))
            .onlink()
            .build()
    }

    fn direct_route(subnet: Ipv4Net, via: Ipv4Addr) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .gateway(via)
            .protocol(RouteProtocol::from(WEFT_ROUTE_PROTOCOL))
            .build()
    }

    /// `ip route replace S via P proto 87` (DirectRouting: P on-link on the underlay).
    pub async fn replace_direct_route(&self, subnet: Ipv4Net, via: Ipv4Addr) -> Result<()> {
        self.handle
            .route()
            .add(Self::direct_route(subnet, via))
            .replace()
            .execute()
            .await
            .map_err(ctx(|| format!("add direct route {subnet} via {via}")))
    }

    /// Removes the direct route to `subnet` via `via`; one already gone is fine.
    pub async fn delete_direct_route(&self, subnet: Ipv4Net, via: Ipv4Addr) -> Result<()> {
        let result = self
            .handle
            .route()
            .del(Self::direct_route(subnet, via))
            .execute()
            .await;
        ignore_esrch(result, || format!("delete direct route {subnet} via {via}"))
    }

    /// Deletes exactly the route `route` (from [`Netlink::main_table_routes`]).
    pub async fn delete_kernel_route(&self, route: &KernelRoute) -> Result<()> {
        let result = self
            .handle
            .route()
            .del(route.message.clone())
            .execute()
            .await;
        ignore_esrch(result, || format!("delete route {}", route.dst))
    }

    /// Every IPv4 route of the main table.
    pub async fn main_table_routes(&self) -> Result<Vec<KernelRoute>> {
        Ok(self
            .main_routes()
            .await?
            .into_iter()
            .map(|msg| {
                let dst = msg.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                });
                let gateway = msg.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                });
                let oif = msg.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                let dst = Ipv4Net::new(
                    dst.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    msg.header.destination_prefix_length,
                )
                .unwrap_or_default();
                KernelRoute {
                    dst,
                    gateway,
                    oif,
                    protocol: u8::from(msg.header.protocol),
                    blackhole: msg.header.kind == netlink_packet_route::route::RouteType::BlackHole,
                    message: msg,
                }
            })
            .collect())
    }

    /// `ip route replace S via S.0 dev <index> onlink`.
    pub async fn replace_route(&self, index: u32, subnet: Ipv4Net) -> Result<()> {
        self.handle
            .route()
            .add(Self::vtep_route(index, subnet))
            .replace()
            .execute()
            .await
            .map_err(ctx(|| {
                format!("add route {subnet} via {}", subnet.network())
            }))
    }

    /// Removes the route to `subnet` on the link; a route that is already gone is fine.
    pub async fn delete_route(&self, index: u32, subnet: Ipv4Net) -> Result<()> {
        let result = self
            .handle
            .route()
            .del(Self::vtep_route(index, subnet))
            .execute()
            .await;
        ignore_esrch(result, || format!("delete route {subnet}"))
    }

    /// Forgets the kernel's neighbour entry for `ip` on the link, so the kernel
    /// resolves it again (weftd answers from its ARP table) — needed when a
    /// peer's VtepMAC changed or its lease went away. An absent entry is fine.
    pub async fn forget_neighbour(&self, index: u32, ip: impl Into<IpAddr>) -> Result<()> {
        use netlink_packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage,
        };
        let ip = ip.into();
        let mut message = NeighbourMessage::default();
        message.header.ifindex = index;
        let (family, address) = match ip {
            IpAddr::V4(v4) => (AddressFamily::Inet, NeighbourAddress::Inet(v4)),
            IpAddr::V6(v6) => (AddressFamily::Inet6, NeighbourAddress::Inet6(v6)),
        };
        message.header.family = family;
        message
            .attributes
            .push(NeighbourAttribute::Destination(address));
        match self.handle.neighbours().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(msg))
                if msg.code.is_some_and(|c| -c.get() == libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(NetlinkError {
                what: format!("delete neighbour {ip}"),
                source,
            }),
        }
    }

    async fn main_routes(&self) -> Result<Vec<RouteMessage>> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut stream = self.handle.route().get(filter).execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(ctx(|| "list routes".into()))?
        {
            if in_main_table(&msg) {
                out.push(msg);
            }
        }
        Ok(out)
    }

    /// The interface of the first IPv4 default route, as flannel picks it.
    pub async fn default_route_interface(&self) -> Result<Option<u32>> {
        for msg in self.main_routes().await? {
            if msg.header.destination_prefix_length != 0 {
                continue;
            }
            let oif = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if oif.is_some() {
                return Ok(oif);
            }
        }
        Ok(None)
    }
}

/// Whether a route from a dump is in the main table (the table attribute
/// when present, else the header's).
fn in_main_table(msg: &RouteMessage) -> bool {
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    table == u32::from(netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN)
}

fn ignore_esrch(
    result: std::result::Result<(), rtnetlink::Error>,
    what: impl FnOnce() -> String,
) -> Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(msg))
            if msg.code.is_some_and(|c| -c.get() == libc::ESRCH) =>
        {
            Ok(())
        }
        Err(source) => Err(NetlinkError {
            what: what(),
            source,
        }),
    }
}

impl Netlink {
    /// The kernel's answer to `ip route get <ip>`: gateway, interface, type.
    pub async fn route_get(&self, ip: Ipv4Addr) -> Result<Option<RouteGet>> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .build();
        let mut stream = self.handle.route().get(query).execute();
        let msg = stream
            .try_next()
            .await
            .map_err(ctx(|| format!("route get {ip}")))?;
        Ok(msg.map(|m| RouteGet {
            gateway: m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            }),
            oif: m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            }),
            unicast: m.header.kind == RouteType::Unicast,
        }))
    }

    /// The interface the kernel would use to reach `ip` (`ip route get`).
    pub async fn route_interface_to(&self, ip: Ipv4Addr) -> Result<Option<u32>> {
        Ok(self.route_get(ip).await?.and_then(|r| r.oif))
    }
}

impl Netlink {
    /// Deletes a link (used to undo a device this run created when startup fails).
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(ctx(|| format!("delete link {index}")))
    }
}

/// What the kernel announces about links and addresses (`RTNLGRP_LINK`,
/// `RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR`): the VTEP device deleted or
/// set down, the underlay interface's MTU or addresses changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// `RTM_DELLINK`: the link with this index is gone.
    Deleted(u32),
    /// `RTM_NEWLINK`: a link was added or changed (flags, MTU, ...).
    Changed(LinkInfo),
    /// `RTM_NEWADDR` / `RTM_DELADDR` on the link with this index.
    Address {
        /// The link.
        index: u32,
        /// The address.
        addr: IpAddr,
        /// Added or changed (else removed). An IPv6 address is announced
        /// again when its duplicate address detection ends.
        added: bool,
    },
}

/// Subscription to [`LinkEvent`]s.
#[derive(Debug)]
pub struct LinkMonitor {
    events: tokio::sync::mpsc::UnboundedReceiver<LinkEvent>,
}

impl LinkMonitor {
    /// Subscribes; the socket's driver runs on the current tokio runtime.
    pub fn open() -> std::io::Result<LinkMonitor> {
        use futures::StreamExt;
        use netlink_packet_route::RouteNetlinkMessage as M;
        use rtnetlink::packet_core::NetlinkPayload;
        let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
            rtnetlink::MulticastGroup::Link,
            rtnetlink::MulticastGroup::Ipv4Ifaddr,
            rtnetlink::MulticastGroup::Ipv6Ifaddr,
        ])?;
        tokio::spawn(connection);
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((msg, _)) = messages.next().await {
                let NetlinkPayload::InnerMessage(inner) = msg.payload else {
                    continue;
                };
                let event = match inner {
                    M::DelLink(link) => LinkEvent::Deleted(link.header.index),
                    M::NewLink(link) => LinkEvent::Changed(Netlink::link_info(&link)),
                    M::NewAddress(a) => match address_of(&a) {
                        Some(addr) => LinkEvent::Address {
                            index: a.header.index,
                            addr,
                            added: true,
                        },
                        None => continue,
                    },
                    M::DelAddress(a) => match address_of(&a) {
                        Some(addr) => LinkEvent::Address {
                            index: a.header.index,
                            addr,
                            added: false,
                        },
                        None => continue,
                    },
                    _ => continue,
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        Ok(LinkMonitor { events })
    }

    /// The next event; `None` once the socket is gone.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        self.events.recv().await
    }
}

/// The local address of an address message (IPv4 or IPv6).
fn address_of(msg: &netlink_packet_route::address::AddressMessage) -> Option<IpAddr> {
    let family_ok = |ip: &IpAddr| match msg.header.family {
        AddressFamily::Inet => ip.is_ipv4(),
        AddressFamily::Inet6 => ip.is_ipv6(),
        _ => false,
    };
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) if family_ok(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) if family_ok(ip) => Some(*ip),
        _ => None,
    });
    local.or(address)
}
