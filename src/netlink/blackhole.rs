//! Blackhole routes for the node's own subnet (`--ip-blackhole-route`): the
//! kernel drops traffic to pod IPs nobody holds instead of sending it to the
//! default route.

use super::{Netlink, NetlinkError, Result, ctx};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol, RouteType};
use rtnetlink::RouteMessageBuilder;
use std::net::{Ipv4Addr, Ipv6Addr};

impl Netlink {
    /// Whether the main table has a `blackhole <subnet>` route.
    pub async fn has_blackhole(&self, subnet: IpNet) -> Result<bool> {
        match subnet {
            IpNet::V4(subnet) => self.has_blackhole_v4(subnet).await,
            IpNet::V6(subnet) => Ok(self
                .main_table_routes_v6()
                .await?
                .iter()
                .any(|r| r.message.header.kind == RouteType::BlackHole && r.dst == subnet)),
        }
    }

    async fn has_blackhole_v4(&self, subnet: Ipv4Net) -> Result<bool> {
        Ok(self.main_routes().await?.iter().any(|msg| {
            msg.header.kind == RouteType::BlackHole
                && msg.header.destination_prefix_length == subnet.prefix_len()
                && msg
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                        _ => None,
                    })
                    .unwrap_or(Ipv4Addr::UNSPECIFIED)
                    == subnet.network()
        }))
    }

    /// `ip route add blackhole <subnet> proto 87` (exclusive: fails with
    /// `EEXIST` when another route owns the prefix, e.g. cni0's).
    pub async fn add_blackhole(&self, subnet: IpNet) -> Result<()> {
        let protocol = RouteProtocol::Other(super::WEFT_ROUTE_PROTOCOL);
        let route = match subnet {
            IpNet::V4(s) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(s.network(), s.prefix_len())
                .kind(RouteType::BlackHole)
                .protocol(protocol)
                .build(),
            IpNet::V6(s) => blackhole_v6(s, protocol),
        };
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(ctx(|| format!("add blackhole route {subnet}")))
    }
}

fn blackhole_v6(
    subnet: Ipv6Net,
    protocol: RouteProtocol,
) -> netlink_packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(subnet.network(), subnet.prefix_len())
        .kind(RouteType::BlackHole)
        .protocol(protocol)
        .build()
}

/// Whether `e` is the kernel's "file exists" (another route owns the prefix).
pub fn is_exists(e: &NetlinkError) -> bool {
    e.errno() == Some(libc::EEXIST)
}
