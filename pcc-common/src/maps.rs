//! Map keys and values (`#[repr(C)]`, shared with the eBPF side).

/// Most WAN links one router handles.
pub const MAX_WANS: usize = 8;
/// Most LAN ports one router handles.
pub const MAX_LANS: usize = 4;
/// Hosts of each LAN whose connections are counted (`HOST_CONNECTIONS`): a /16 of hosts.
pub const HOSTS_PER_LAN: u32 = 65_536;
/// `HOST_CONNECTIONS`'s size: [`HOSTS_PER_LAN`] counts for each LAN.
pub const HOST_COUNT_SLOTS: u32 = MAX_LANS as u32 * HOSTS_PER_LAN;
/// Entries of the weighted slot table new connections are hashed into. A prime, so
/// `hash % SLOT_TABLE_SIZE` uses every bit of the hash; with 8 WANs each still owns hundreds
/// of slots, so weights resolve to better than 1 %.
pub const SLOT_TABLE_SIZE: usize = 4093;
/// A slot that belongs to no WAN (no WAN is up).
pub const NO_WAN: u8 = 0xff;
/// `CtIn::lan_id` of a tuple one of the router's own sockets uses on a WAN (or the kernel's
/// masquerade of a LAN packet it forwarded), recorded by the TC egress hook: no mapping may
/// take it, and what arrives on it is the kernel's.
pub const LAN_ROUTER: u8 = 0xfe;
/// Source-subnet policies (`SLOTS[1..=MAX_POLICIES]`); `SLOTS[0]` serves every other host.
pub const MAX_POLICIES: usize = 16;
/// Subnets the policies may name in all (`POLICIES` LPM trie entries).
pub const MAX_POLICY_SUBNETS: u32 = 256;
/// `DEVMAP` index of `wan_id`: `wan_id`; of `lan_id`: `LAN_DEVMAP_BASE + lan_id`.
pub const LAN_DEVMAP_BASE: u32 = MAX_WANS as u32;
pub const DEVMAP_SIZE: u32 = (MAX_WANS + MAX_LANS) as u32;
/// Default conntrack capacity (connections): a small office with 100+ guests, each with a few
/// hundred connections open, fits with room to spare.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 65_536;
/// Default for the connections one LAN host may hold at once. A busy laptop (a browser with
/// many tabs, a sync client, a video call) holds a few hundred, a BitTorrent client one or two
/// thousand; a host scanning a network opens one per probe and gets no more than 1/16 of the
/// default table.
pub const DEFAULT_MAX_CONNECTIONS_PER_HOST: u32 = 4096;

/// How an inbound packet that matches no connection is filtered (RFC 4787 section 5).
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NatFiltering {
    /// Only replies from the remote address and port the host sent to pass (RFC 4787's
    /// "address and port-dependent filtering"): nothing unsolicited reaches the LAN.
    #[default]
    AddressAndPortDependent = 0,
    /// Anything sent to a live mapping reaches its host ("full cone"): what game consoles and
    /// peer-to-peer apps ask for (RFC 4787 REQ-8 allows it where transparency matters).
    EndpointIndependent = 1,
}

/// Global dataplane settings (single entry of `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// A [`crate::Classifier`] as `u8`.
    pub classifier: u8,
    /// `LANS[..lan_count]` and `WANS[..wan_count]` are in use: the dataplane's loops over
    /// them stop there.
    pub lan_count: u8,
    pub wan_count: u8,
    /// A [`crate::Method`] as `u8`.
    pub method: u8,
    pub hash_seed: u32,
    /// Source NAT ports the dataplane may hand out (host byte order).
    pub nat_ports: crate::NatPortRange,
    /// Source-subnet policies in `POLICIES`: with none, new connections skip the trie.
    pub policy_count: u8,
    /// A [`NatFiltering`] as `u8`.
    pub nat_filtering: u8,
    pub _pad: [u8; 2],
    /// Connections one LAN host may hold at once (`HOST_CONNECTIONS`).
    pub max_connections_per_host: u32,
    /// Idle timeouts, enforced by the dataplane's sweep.
    pub timeouts: crate::conntrack::Timeouts,
    /// The sweep's sizes (`EXPIRY_SLOTS`), from the table's.
    pub sweep: crate::expiry::Sweep,
}

pub const WAN_FLAG_UP: u16 = 1;

/// One WAN link (`WANS[wan_id]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WanInfo {
    pub ifindex: u32,
    /// The WAN's own IPv4 address: the source NAT address (network byte order).
    pub addr: u32,
    pub mac: [u8; 6],
    pub gateway_mac: [u8; 6],
    /// Largest IPv4 packet the link carries; bigger ones go to the kernel, which fragments or
    /// answers "fragmentation needed" (RFC 1191).
    pub mtu: u16,
    /// `WAN_FLAG_*`.
    pub flags: u16,
}

impl WanInfo {
    pub fn is_up(&self) -> bool {
        self.flags & WAN_FLAG_UP != 0
    }
}

/// One LAN port (`LANS[lan_id]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LanInfo {
    pub ifindex: u32,
    /// The router's address on this LAN (network byte order).
    pub addr: u32,
    /// Network byte order; `addr & netmask` is the LAN subnet.
    pub netmask: u32,
    pub mac: [u8; 6],
    /// Largest IPv4 packet the LAN port carries; bigger replies go to the kernel.
    pub mtu: u16,
}

impl LanInfo {
    /// Whether `ip` (network byte order) is inside this LAN's subnet.
    #[inline(always)]
    pub fn contains(&self, ip: u32) -> bool {
        self.ifindex != 0 && ip & self.netmask == self.addr & self.netmask
    }

    /// Where `ip` (network byte order), a host of LAN `lan_id` (this one), is counted in
    /// `HOST_CONNECTIONS`: by its offset in the subnet, so the count is an array element and
    /// not a hash lookup on every new connection. `None` for an address outside the subnet or
    /// beyond its first [`HOSTS_PER_LAN`] (not held to the per-host limit).
    #[inline(always)]
    pub fn host_index(&self, lan_id: u8, ip: u32) -> Option<u32> {
        if !self.contains(ip) {
            return None;
        }
        let offset = u32::from_be(ip & !self.netmask);
        if offset >= HOSTS_PER_LAN || usize::from(lan_id) >= MAX_LANS {
            return None;
        }
        Some(u32::from(lan_id) * HOSTS_PER_LAN + offset)
    }

    /// Whether `ip` (network byte order) names one host of this LAN: inside the subnet and
    /// neither its network nor its broadcast address (a /31 or /32 has neither, RFC 3021).
    /// ICMP errors go only to such a source (RFC 1812 4.3.2.7).
    #[inline(always)]
    pub fn is_host(&self, ip: u32) -> bool {
        let host = ip & !self.netmask;
        let point_to_point = u32::from_be(self.netmask) >= 0xffff_fffe;
        self.contains(ip) && (point_to_point || (host != 0 && host != !self.netmask))
    }
}

/// The weighted slot table (single entry of `SLOTS`): slot -> `wan_id` or [`NO_WAN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotTable {
    pub slots: [u8; SLOT_TABLE_SIZE],
    /// Bit `wan_id` set: the WANs this table's hosts may use at all (a policy's WANs and its
    /// fallback). When a slot's WAN went down since the controller last rebuilt the table,
    /// the dataplane falls back to the first live WAN of this set only.
    pub allowed: u8,
    pub _pad: [u8; 2],
}

impl Default for SlotTable {
    fn default() -> Self {
        Self {
            slots: [NO_WAN; SLOT_TABLE_SIZE],
            allowed: u8::MAX,
            _pad: [0; 2],
        }
    }
}

/// A connection as one side sees it. `CT_OUT` keys are LAN-side (src = LAN host, dst = remote);
/// `CT_IN` keys are WAN-side (src = remote, dst = WAN address, dst_port = NAT port). For ICMP
/// echo the identifier plays the host's port and the remote port is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    // Two scalar pads, not `[u8; 3]`: zeroing a 3-byte array compiles to a call of a `memset`
    // subprogram in BPF, on every packet.
    pad0: u8,
    pad1: u16,
}

/// Datagrams whose fragments are in flight at once, per direction of arrival (`FRAGS`).
pub const FRAG_TRACK_SIZE: u32 = 8192;

/// One fragmented datagram as it arrived (before translation): RFC 791 identifies a datagram
/// by source, destination, protocol and identification.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub ip_id: u16,
    pub proto: u8,
    pad0: u8,
}

impl FragKey {
    #[inline(always)]
    pub const fn new(src_addr: u32, dst_addr: u32, ip_id: u16, proto: u8) -> Self {
        FragKey {
            src_addr,
            dst_addr,
            ip_id,
            proto,
            pad0: 0,
        }
    }
}

/// The transport ports of a fragmented datagram (network byte order), learned from its first
/// fragment: later fragments carry no transport header (Cilium's `ipv4_frag_l4ports`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub src_port: u16,
    pub dst_port: u16,
}

/// TCP flags seen on a connection, one side's view (`tcp_flags` in the values).
pub const CT_TCP_SYN: u8 = 1;
pub const CT_TCP_FIN: u8 = 2;
pub const CT_TCP_RST: u8 = 4;
pub const CT_TCP_ACK: u8 = 8;

/// `CtOut::flags`: the connection was pinned to its WAN by a route more specific than a
/// default route (a WAN's connected subnet, a static route), not balanced. Its packets check
/// that route and look its next hop up, instead of taking the WAN's gateway MAC.
pub const CT_FLAG_ROUTED: u8 = 1;

/// `CtOut::flags`: the connection has no endpoint-independent binding of its own (another CPU
/// created the host's binding at the same moment, or the binding's port was taken towards
/// this remote by the router itself): closing it releases no binding.
pub const CT_FLAG_UNBOUND: u8 = 2;

/// `CtOut::flags`: opened from outside, by a packet to a live mapping (endpoint-independent
/// filtering); unanswered until the LAN host sends.
pub const CT_FLAG_INBOUND: u8 = 4;

/// `CtOut::flags`: the remote end is another LAN endpoint's public one (hairpinning, RFC 4787
/// REQ-9): translated twice and delivered on the LAN, never sent out of the WAN.
pub const CT_FLAG_HAIRPIN: u8 = 8;

/// `NAT_BIND_OUT` key: a LAN endpoint (address, port: network byte order) on one WAN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BindKey {
    pub lan_addr: u32,
    pub lan_port: u16,
    pub proto: u8,
    pub wan_id: u8,
}

/// `NAT_BIND_OUT` value: the endpoint-independent mapping of a LAN endpoint on a WAN (RFC
/// 4787 REQ-1) that could not keep the host's port: every connection from that endpoint
/// through that WAN uses it, whatever the remote end. A binding that kept the host's port is
/// found on that port in `NAT_BIND_IN` and has no entry here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    pub nat_addr: u32,
    pub nat_port: u16,
    pub _pad: u16,
}

/// `NAT_BIND_IN` key: a public endpoint (network byte order). Held by one LAN endpoint at a
/// time, which is what makes a mapping endpoint independent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PublicKey {
    pub nat_addr: u32,
    pub nat_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl PublicKey {
    /// Address and port in network byte order, as on the wire.
    #[inline(always)]
    pub const fn new(nat_addr: u32, nat_port: u16, proto: u8) -> Self {
        Self {
            nat_addr,
            nat_port,
            proto,
            _pad: 0,
        }
    }
}

/// `NAT_BIND_IN` value: the LAN endpoint holding a public endpoint, for inbound packets no
/// connection expects (endpoint-independent filtering) and for hairpinning.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub lan_addr: u32,
    pub lan_port: u16,
    pub lan_id: u8,
    pub wan_id: u8,
    pub lan_mac: [u8; 6],
    pub _pad: u16,
    /// Connections using the binding; the last one to go removes it. 64 bits: BPF has
    /// atomic adds of 32 and 64 bits, but Rust's BPF target only offers the 64-bit one.
    pub refs: u64,
}

/// `CT_OUT` value: how a LAN-side connection is translated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtOut {
    /// Source NAT address: the WAN's address (network byte order).
    pub nat_addr: u32,
    pub nat_port: u16,
    pub wan_id: u8,
    /// `CT_TCP_*` seen from the LAN host.
    pub tcp_flags: u8,
    /// The source MAC of the host's latest packet: when it differs (a host that changed its
    /// NIC but kept its address), the reply entry's `lan_mac` is updated, so replies follow.
    pub lan_mac: [u8; 6],
    /// `CT_FLAG_*`.
    pub flags: u8,
    /// The LAN host's TCP window scale (RFC 7323), from its SYN; 0 without the option. Used
    /// even when the server did not agree to scaling: that only widens the window the RST
    /// check accepts, never rejects a valid reset.
    pub lan_wscale: u8,
    /// TCP: the last acknowledgment number the LAN host sent (host byte order), where its
    /// receive window starts (RFC 793 RCV.NXT as the remote end last learnt it).
    pub lan_ack: u32,
    /// TCP: the receive window in bytes the LAN host advertised with `lan_ack`.
    pub lan_window: u32,
    pub created_ns: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the last packet from the LAN host.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// The connection's slot in `EXPIRY_SLOTS`, where the dataplane's sweep finds it.
    pub expiry_slot: u32,
    /// The token of that slot's owner word (`crate::expiry::slot_owner`): whoever forgets the
    /// connection frees the slot only while it still holds this token.
    pub expiry_token: u32,
}

/// `EXPIRY_SLOTS` value: a tuple the sweep looks at. `owner` is [`crate::expiry::SLOT_FREE`],
/// [`crate::expiry::SLOT_BUSY`] or a ready owner word; the dataplane claims a slot with a
/// compare-and-exchange on it, as CPUs open connections at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpirySlot {
    pub owner: u64,
    /// A `CT_OUT` key, or a `CT_IN` key for a router tuple.
    pub key: FlowKey,
}

/// `SWEEP[0]`: the sweep's timer and where it goes on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepState {
    pub timer: bpf_timer,
    /// The next slot to look at.
    pub cursor: u32,
    /// 1 once the timer runs (the first new tuple starts it).
    pub armed: u32,
}

/// The kernel's `struct bpf_timer`, opaque. The verifier finds a timer in a map value by this
/// BTF type name and size, so the name must stay as the kernel spells it.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct bpf_timer {
    // Two scalars, not `[u64; 2]`: zeroing an array compiles to a `memset` subprogram call in
    // BPF, a byte loop the verifier walks at every new connection.
    opaque0: u64,
    opaque1: u64,
}

/// `CT_IN` value: how replies are translated back to the LAN host. With `lan_id ==
/// LAN_ROUTER` the tuple is the router's own: nothing is translated, `lan_addr`, `lan_port` and
/// `lan_mac` are 0, `tcp_flags` gathers both sides' flags and `packets` counts what arrived.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtIn {
    pub lan_addr: u32,
    pub lan_port: u16,
    /// The LAN the host is on, or [`LAN_ROUTER`].
    pub lan_id: u8,
    /// `CT_TCP_*` seen from the remote end.
    pub tcp_flags: u8,
    /// The host's MAC, learnt from the frame that opened the connection: the host itself
    /// said where it lives, so replies need no ARP on the fast path.
    pub lan_mac: [u8; 6],
    pub wan_id: u8,
    pub _pad: u8,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Per-CPU, per-WAN traffic counters (`WAN_STATS[wan_id]`). rx = arrived on the WAN for the
/// LAN, tx = left through the WAN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WanCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub flows_created: u64,
}

const _: () = {
    assert!(size_of::<Config>() == 52);
    assert!(size_of::<BindKey>() == 8);
    assert!(size_of::<Binding>() == 8);
    assert!(size_of::<PublicKey>() == 8);
    assert!(size_of::<Owner>() == 24);
    assert!(size_of::<WanInfo>() == 24);
    assert!(size_of::<LanInfo>() == 20);
    assert!(size_of::<FlowKey>() == 16);
    assert!(size_of::<CtOut>() == 64);
    assert!(size_of::<ExpirySlot>() == 24);
    assert!(size_of::<CtIn>() == 40);
    assert!(size_of::<SlotTable>().is_multiple_of(4));
};

// SAFETY: all of these are `#[repr(C)]` plain data with explicit padding fields, so every byte
// pattern is a valid value.
#[cfg(feature = "user")]
impl_pod!(
    Config,
    WanInfo,
    LanInfo,
    SlotTable,
    FlowKey,
    CtOut,
    CtIn,
    WanCounters,
    FragKey,
    FragPorts,
    BindKey,
    Binding,
    PublicKey,
    Owner,
    ExpirySlot,
    SweepState,
);

impl FlowKey {
    /// Addresses and ports in network byte order, as on the wire.
    #[inline(always)]
    pub const fn new(
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
        proto: u8,
    ) -> Self {
        FlowKey {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            proto,
            pad0: 0,
            pad1: 0,
        }
    }

    /// The `CT_IN` key of the replies to this `CT_OUT` connection once it is NATed to
    /// `nat_addr:nat_port`.
    #[inline(always)]
    pub fn reply_key(&self, nat_addr: u32, nat_port: u16) -> FlowKey {
        FlowKey::new(self.dst_addr, nat_addr, self.dst_port, nat_port, self.proto)
    }

    /// The `CT_OUT` key of the connection a `CT_IN` entry (`self` is its key) translates to.
    #[inline(always)]
    pub fn original_key(&self, lan_addr: u32, lan_port: u16) -> FlowKey {
        FlowKey::new(lan_addr, self.src_addr, lan_port, self.src_port, self.proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_and_original_keys_round_trip() {
        let out = FlowKey::new(1, 2, 3, 4, 6);
        let reply = out.reply_key(9, 10);
        assert_eq!(reply, FlowKey::new(2, 9, 4, 10, 6));
        assert_eq!(reply.original_key(1, 3), out);
    }

    #[test]
    fn lan_contains_its_subnet_only() {
        let lan = LanInfo {
            ifindex: 3,
            addr: u32::from_ne_bytes([198, 19, 10, 1]),
            netmask: u32::from_ne_bytes([255, 255, 255, 0]),
            ..Default::default()
        };
        assert!(lan.contains(u32::from_ne_bytes([198, 19, 10, 200])));
        assert!(!lan.contains(u32::from_ne_bytes([198, 19, 11, 1])));
        assert!(
            !LanInfo::default().contains(0),
            "an unconfigured LAN contains nothing"
        );
    }

    #[test]
    fn a_lan_host_is_neither_its_network_nor_its_broadcast_address() {
        let lan = |mask: [u8; 4]| LanInfo {
            ifindex: 3,
            addr: u32::from_ne_bytes([198, 19, 10, 1]),
            netmask: u32::from_ne_bytes(mask),
            ..Default::default()
        };
        let ip = |last: u8| u32::from_ne_bytes([198, 19, 10, last]);
        let slash24 = lan([255, 255, 255, 0]);
        assert!(slash24.is_host(ip(11)) && slash24.is_host(ip(254)));
        assert!(!slash24.is_host(ip(0)) && !slash24.is_host(ip(255)));
        assert!(!slash24.is_host(u32::from_ne_bytes([198, 19, 11, 11])));
        let slash31 = lan([255, 255, 255, 254]);
        assert!(slash31.is_host(ip(0)) && slash31.is_host(ip(1)));
        assert!(lan([255; 4]).is_host(ip(1)));
    }

    #[test]
    fn hosts_are_counted_by_their_offset_in_the_subnet() {
        let lan = |addr: [u8; 4], mask: [u8; 4]| LanInfo {
            ifindex: 3,
            addr: u32::from_ne_bytes(addr),
            netmask: u32::from_ne_bytes(mask),
            ..Default::default()
        };
        let slash24 = lan([198, 19, 10, 1], [255, 255, 255, 0]);
        let host = u32::from_ne_bytes([198, 19, 10, 11]);
        assert_eq!(slash24.host_index(2, host), Some(2 * HOSTS_PER_LAN + 11));
        assert_eq!(
            slash24.host_index(0, u32::from_ne_bytes([198, 19, 11, 11])),
            None
        );
        let slash8 = lan([10, 0, 0, 1], [255, 0, 0, 0]);
        let near = u32::from_ne_bytes([10, 0, 255, 255]);
        let far = u32::from_ne_bytes([10, 1, 0, 0]);
        assert_eq!(slash8.host_index(3, near), Some(3 * HOSTS_PER_LAN + 0xffff));
        assert_eq!(
            slash8.host_index(3, far),
            None,
            "beyond the first /16: not counted"
        );
        assert_eq!(slash24.host_index(MAX_LANS as u8, host), None);
        const { assert!(3 * HOSTS_PER_LAN + 0xffff < HOST_COUNT_SLOTS) };
    }
}
