//! Flow identity of an inner frame: the outer UDP source port (RFC 7348
//! recommends a hash of the inner flow in 49152–65535, so one flow keeps one
//! port and ECMP spreads flows), the worker a flow is pinned to, and the
//! table that hands sending sockets to flows in turn ([`FlowSockets`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};

use super::wire::ethernet::{self, ethertype};
use super::wire::{ipv4, ipv6, protocol};

/// First port of the dynamic range used for outer source ports.
pub const SOURCE_PORT_MIN: u16 = 49152;
const SOURCE_PORT_SPAN: u32 = 16384;

/// A stable hash of the inner flow of an Ethernet frame: addresses and ports
/// for TCP/UDP over IPv4/IPv6, addresses only for other IP, MACs otherwise.
pub fn hash(frame: &[u8]) -> u32 {
    let key = ethernet::Frame::new_checked(frame)
        .ok()
        .and_then(|eth| match eth.ethertype() {
            ethertype::IPV4 => ipv4_key(eth.payload()),
            ethertype::IPV6 => ipv6_key(eth.payload()),
            _ => None,
        });
    let key = key.unwrap_or_else(|| mix_bytes(0, frame.get(..12).unwrap_or(frame)));
    finish(key)
}

/// The outer UDP source port for a flow hash.
pub fn source_port(hash: u32) -> u16 {
    SOURCE_PORT_MIN + (hash % SOURCE_PORT_SPAN) as u16
}

/// Sending sockets handed to flows in turn, so that a few large flows spread
/// evenly over the peer's workers instead of by hash luck.
///
/// The outer source port picks the worker at the receiver: its
/// `SO_REUSEPORT` program takes the port (with the sender's address) modulo
/// its worker count, and the pool's ports, stepping by an odd number, run
/// through every residue of a power of two in order (see
/// `dataplane::udp::bind_source_pools`). With the socket picked by flow hash,
/// four TCP streams all land on one of two receiving workers one time in
/// eight, and then one thread carries them all (measured: 9.7-9.9 Gbit/s and
/// thousands of retransmits from its overflowing socket, against 10.6-11.2
/// when they split). Here a new flow takes the next socket of the pool, so
/// flows that start one after another alternate workers at every receiver,
/// and a flow keeps its socket, so its port, while it is active.
///
/// A fixed table indexed by flow hash, shared by the TX workers (a flow the
/// kernel moves to another TAP queue keeps its port) and without locks: a
/// slot is one atomic word holding the flow's 32-bit hash, its socket and
/// the tick (seconds, 15 bits) it last sent in; a flow may sit in one of
/// two slots. A slot that another flow used within the last
/// [`FlowSockets::IDLE_TICKS`] ticks is not taken: when both are, the
/// newcomer falls back to its hash, as stable as the table. A flow idle for
/// longer may lose its slot and come back on another port, which reorders
/// nothing: its last datagram left more than a second before. One that fell
/// back and later finds a slot free moves to the socket it is handed there,
/// once; with two places per flow that takes a table holding thousands of
/// active flows.
#[derive(Debug)]
pub struct FlowSockets {
    slots: Box<[AtomicU64]>,
    next: AtomicU32,
}

/// Marks a slot in use (bit 15 of the tick field).
const SLOT_USED: u64 = 1 << 15;
const TICK_MASK: u16 = 0x7fff;

impl FlowSockets {
    /// Ticks after which a slot's flow counts as gone.
    pub const IDLE_TICKS: u16 = 2;

    /// A table of `slots` slots (rounded up to a power of two, at least 1).
    pub fn new(slots: usize) -> FlowSockets {
        let slots = slots.max(1).next_power_of_two();
        FlowSockets {
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicU32::new(0),
        }
    }

    /// The socket (of `sockets`) for the flow with hash `flow`, at `tick`.
    pub fn socket(&self, flow: u32, sockets: usize, tick: u16) -> usize {
        let sockets = sockets.max(1);
        if sockets == 1 {
            return 0;
        }
        let tick = tick & TICK_MASK;
        let mask = self.slots.len() - 1;
        // Two places a flow may sit, from two parts of its hash: a newcomer
        // falls back to its hash only when both hold active flows.
        let places = [flow as usize & mask, flow.rotate_right(16) as usize & mask];
        loop {
            let seen = places.map(|p| self.slots[p].load(Relaxed));
            for (place, word) in places.iter().zip(seen) {
                if let Some(index) = holder(word, flow, sockets) {
                    if word as u16 & TICK_MASK != tick {
                        // Once a tick; losing the race to a newcomer is harmless.
                        let fresh = slot_word(flow, index, tick);
                        let _ = self.slots[*place].compare_exchange(word, fresh, Relaxed, Relaxed);
                    }
                    return index;
                }
            }
            let Some(k) = (0..2).find(|&k| free(seen[k], flow, tick)) else {
                return flow as usize % sockets;
            };
            let index = self.next.fetch_add(1, Relaxed) as usize % sockets;
            let word = slot_word(flow, index, tick);
            if self.slots[places[k]]
                .compare_exchange(seen[k], word, Relaxed, Relaxed)
                .is_ok()
            {
                return index;
            }
            // Another worker wrote the slot meanwhile: look again.
        }
    }
}

/// The socket a slot holds for `flow`, if it holds one of the pool's.
fn holder(word: u64, flow: u32, sockets: usize) -> Option<usize> {
    let index = ((word >> 16) & 0xffff) as usize;
    (word & SLOT_USED != 0 && (word >> 32) as u32 == flow && index < sockets).then_some(index)
}

/// A slot a flow may take: empty, its own (with a socket beyond the pool),
/// or held by a flow idle for [`FlowSockets::IDLE_TICKS`].
fn free(word: u64, flow: u32, tick: u16) -> bool {
    let last = word as u16 & TICK_MASK;
    word & SLOT_USED == 0
        || (word >> 32) as u32 == flow
        || tick.wrapping_sub(last) & TICK_MASK >= FlowSockets::IDLE_TICKS
}

fn slot_word(flow: u32, index: usize, tick: u16) -> u64 {
    (u64::from(flow) << 32) | ((index as u64 & 0xffff) << 16) | SLOT_USED | u64::from(tick)
}

/// Hashes any header with the fixed 20 bytes, whatever its version and IHL
/// say: a frame the kernel would not send still gets a stable port.
fn ipv4_key(packet: &[u8]) -> Option<u64> {
    let ip = ipv4::Header::new_checked(packet).ok()?;
    let protocol = ip.protocol();
    let mut key = mix_bytes(u64::from(protocol), ip.addresses());
    // Only the first fragment carries ports; keep all fragments on one port.
    let ihl = ip.header_len();
    if !ip.is_fragment()
        && matches!(protocol, protocol::TCP | protocol::UDP)
        && let Some(ports) = packet.get(ihl..ihl + 4)
    {
        key = mix_bytes(key, ports);
    }
    Some(key)
}

fn ipv6_key(packet: &[u8]) -> Option<u64> {
    let ip = ipv6::Header::new_checked(packet).ok()?;
    let next = ip.next_header();
    let mut key = mix_bytes(u64::from(next), ip.addresses());
    if matches!(next, protocol::TCP | protocol::UDP)
        && let Some(ports) = packet.get(ipv6::HEADER_LEN..ipv6::HEADER_LEN + 4)
    {
        key = mix_bytes(key, ports);
    }
    Some(key)
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix_bytes(mut acc: u64, bytes: &[u8]) -> u64 {
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        acc = (acc ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    acc
}

fn finish(acc: u64) -> u32 {
    let h = (acc ^ (acc >> 31)).wrapping_mul(K);
    (h >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4(src_port: u16, payload_byte: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + 10];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 12..14 + 20].copy_from_slice(&[10, 244, 1, 5, 10, 244, 2, 7]);
        f[34..36].copy_from_slice(&src_port.to_be_bytes());
        f[36..38].copy_from_slice(&5201u16.to_be_bytes());
        f[60] = payload_byte;
        f
    }

    #[test]
    fn same_flow_same_port_other_flow_other_port() {
        let a = source_port(hash(&tcp4(40000, 1)));
        assert_eq!(a, source_port(hash(&tcp4(40000, 2))));
        let ports: std::collections::HashSet<u16> = (40000..40100)
            .map(|p| source_port(hash(&tcp4(p, 0))))
            .collect();
        assert!(ports.len() > 90, "poor spread: {}", ports.len());
        assert!(ports.iter().all(|p| *p >= 49152));
    }

    /// The hashes (so the outer source ports and socket choices) of frames
    /// of every kind, pinned: they must not change when the parsing does.
    #[test]
    fn hashes_are_stable() {
        use crate::core::fixtures::{arp_request, tcp4_frame, udp4_frame};
        let tcp = tcp4_frame(&[1; 50], 7, 0x18, 3);
        let mut frag = tcp.clone();
        frag[20] = 0x20;
        let mut ihl0 = tcp.clone();
        ihl0[14] = 0x40;
        let mut icmp = tcp.clone();
        icmp[23] = 1;
        let mut v6 = vec![0u8; 14 + 40 + 20];
        v6[12..15].copy_from_slice(&[0x86, 0xdd, 0x60]);
        v6[20] = 6;
        for (i, b) in v6.iter_mut().enumerate().skip(22) {
            *b = i as u8;
        }
        let frames = [
            tcp,
            udp4_frame([0x0e, 0, 0, 0, 0, 2], [0x0e, 0, 0, 0, 0, 1], 300),
            arp_request([0x0e, 0, 0, 0, 0, 1], [10, 244, 1, 0], [10, 244, 2, 0]),
            vec![0x45; 30],
            vec![0x45; 3],
            frag,
            ihl0,
            v6.clone(),
            v6[..50].to_vec(),
            icmp,
        ];
        let hashes: Vec<u32> = frames.iter().map(|f| hash(f)).collect();
        assert_eq!(
            hashes,
            [
                3306015176, 1661677534, 4244255139, 900151098, 2809496605, 308617358, 1817333261,
                3259816721, 0, 533555069
            ]
        );
    }

    #[test]
    fn flows_take_the_sockets_in_turn_and_keep_theirs() {
        let table = FlowSockets::new(4096);
        let flows: Vec<u32> = (40000..40008).map(|p| hash(&tcp4(p, 0))).collect();
        let first: Vec<usize> = flows.iter().map(|f| table.socket(*f, 16, 7)).collect();
        assert_eq!(first, [0, 1, 2, 3, 4, 5, 6, 7]);
        // Later packets, later ticks: the same sockets, whatever came between.
        let other = hash(&tcp4(50000, 0));
        assert_eq!(table.socket(other, 16, 8), 8);
        let again: Vec<usize> = flows.iter().map(|f| table.socket(*f, 16, 9)).collect();
        assert_eq!(again, first);
        // Four streams over two sockets (two receiving workers): two each.
        let two = FlowSockets::new(4096);
        let mut per = [0; 2];
        for f in &flows[..4] {
            per[two.socket(*f, 2, 0)] += 1;
        }
        assert_eq!(per, [2, 2]);
    }

    #[test]
    fn a_busy_slot_is_not_taken_and_an_idle_one_is() {
        // One slot: every flow collides.
        let table = FlowSockets::new(1);
        let (a, b) = (hash(&tcp4(1, 0)), hash(&tcp4(2, 0)));
        assert_eq!(table.socket(a, 16, 100), 0);
        // a sent a tick ago: b falls back to its hash, and keeps doing so.
        assert_eq!(table.socket(b, 16, 101), b as usize % 16);
        assert_eq!(table.socket(b, 16, 101), b as usize % 16);
        assert_eq!(table.socket(a, 16, 101), 0, "a keeps its socket");
        // a idle for IDLE_TICKS: b takes the slot (the next socket in turn).
        let later = 101 + FlowSockets::IDLE_TICKS;
        assert_eq!(table.socket(b, 16, later), 1);
        assert_eq!(table.socket(b, 16, later + 1), 1);
        // Long after, a takes it back (next in turn); across the 15-bit
        // wrap of the tick, a sent one tick ago, so b falls back again.
        assert_eq!(table.socket(a, 16, TICK_MASK), 2);
        assert_eq!(table.socket(b, 16, 0), b as usize % 16);
        assert_eq!(table.socket(a, 16, 0), 2);
    }

    #[test]
    fn two_places_per_flow_keep_a_quarter_full_table_taking_newcomers() {
        let table = FlowSockets::new(1024);
        let flows: Vec<u32> = (0..256).map(|p| hash(&tcp4(p, 1))).collect();
        let first: Vec<usize> = flows.iter().map(|f| table.socket(*f, 16, 3)).collect();
        let held = flows
            .iter()
            .filter(|f| {
                table
                    .slots
                    .iter()
                    .any(|w| holder(w.load(Relaxed), **f, 16).is_some())
            })
            .count();
        // One place per flow would hold about 226 of 256 (1024 x (1 - e^-0.25));
        // with two (249 here), a newcomer is turned away only when both are
        // taken.
        assert!(held >= 245, "only {held} of 256 flows got a slot");
        let again: Vec<usize> = flows.iter().map(|f| table.socket(*f, 16, 4)).collect();
        assert_eq!(again, first);
    }

    #[test]
    fn one_socket_or_a_shrunken_pool_is_handled() {
        let table = FlowSockets::new(64);
        let f = hash(&tcp4(3, 0));
        assert_eq!(table.socket(f, 1, 0), 0);
        assert_eq!(table.socket(f, 0, 0), 0);
        for _ in 0..5 {
            let _ = table.socket(hash(&tcp4(9, 0)), 16, 0);
        }
        let index = table.socket(f, 16, 0);
        assert!(
            table.socket(f, 2, 0) < 2,
            "an index beyond the pool is reassigned"
        );
        assert!(index < 16);
    }

    #[test]
    fn workers_racing_for_new_flows_agree_on_each_flows_socket() {
        let table = std::sync::Arc::new(FlowSockets::new(1024));
        let flows: Vec<u32> = (0..256).map(|p| hash(&tcp4(p, 0))).collect();
        let picks: Vec<Vec<usize>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (table, flows) = (&table, &flows);
                    s.spawn(move || flows.iter().map(|f| table.socket(*f, 16, 5)).collect())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Flows that got a slot of their own: every worker saw the same
        // socket, and it is the one the table holds now.
        for (i, f) in flows.iter().enumerate() {
            let now = table.socket(*f, 16, 5);
            let fallback = *f as usize % 16;
            for p in &picks {
                assert!(p[i] == now || p[i] == fallback, "flow {i}: {p:?} vs {now}");
            }
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        for len in 0..80 {
            let f = vec![0x45u8; len];
            let _ = hash(&f);
        }
    }
}
