//! Dataplane event counters (`STATS[counter]`, per CPU). Every packet the programs see ends in
//! exactly one of them, so `forwarded + passed + dropped` accounts for all traffic; the few
//! [`Counter::is_event`] ones count what was done besides a packet's fate, never a packet. The
//! TC egress hook on each WAN counts only the router's own packets it records or drops.

/// What happened to a packet, and why.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// LAN -> WAN, translated and redirected.
    FwdOut = 0,
    /// WAN -> LAN reply, translated back and redirected.
    FwdIn,
    /// WAN -> LAN ICMP error about a tracked connection, translated back (inner header too).
    FwdIcmpError,
    /// LAN -> LAN through a public endpoint (hairpinning): translated out and in, delivered
    /// on the LAN.
    FwdHairpin,
    /// LAN -> WAN ICMP error (port unreachable, time exceeded, fragmentation needed from a LAN
    /// router) about a tracked connection, translated out like the connection (RFC 5508 REQ-4).
    FwdIcmpErrorOut,
    /// LAN -> WAN, of a connection pinned to its WAN by a route more specific than a default
    /// route (the WAN's connected subnet, a static route): translated, sent to its next hop.
    FwdRouted,
    /// Over the MTU of the port it would leave by, with DF set: dropped, and the sender gets
    /// an ICMP "fragmentation needed" with that MTU, built by the dataplane (RFC 1191).
    AnsweredFragNeeded,
    /// Not a packet's fate but the answer to one: a refused new connection (counted under
    /// why: `DropConntrackFull`, `DropNatPortsExhausted`) answered with ICMP "communication
    /// administratively prohibited" (RFC 5508 REQ-8), so the host fails at once instead of
    /// retrying into silence.
    IcmpProhibitedSent,
    /// Not a packet's fate: a refused new connection left unanswered because the ICMP rate
    /// limit (`pcc_common::ratelimit`) was spent.
    IcmpProhibitedRateLimited,
    /// Not IPv4 (ARP, IPv6, ...): the kernel's business.
    PassNotIpv4,
    /// Addressed to the router itself, or broadcast/multicast.
    PassLocal,
    /// TTL <= 1: the kernel answers "time exceeded" (RFC 792).
    PassTtl,
    /// A protocol or ICMP type the fast path does not translate.
    PassUnsupported,
    /// IP options: the kernel's slow path (its forwarding is guarded, see the README).
    PassIpOptions,
    /// A fragment pcc does not translate (from a WAN, of a datagram whose first fragment
    /// matched no connection or was not seen yet): the kernel's business, never the LAN's.
    PassFragment,
    /// Arrived on a WAN and matches no connection: the kernel decides (it never reaches the LAN
    /// through the dataplane).
    PassUntracked,
    /// The next hop's MAC is not known yet (the WAN's gateway, or a route's next hop, which
    /// the controller is then asked to resolve).
    PassNoNeighbour,
    /// A TCP segment from the LAN that is not a SYN and matches no connection (a SYN-ACK of a
    /// server, a mid-stream ACK after failover): only a SYN opens a mapping, as in
    /// nf_conntrack; the kernel decides (its forwarding guard drops what it cannot track).
    PassTcpNotSyn,
    /// Larger than the port it arrived on allows: a super-frame (a veth peer's unsegmented
    /// TSO/GSO packet in generic mode, a driver's LRO); the kernel segments it.
    PassOversize,
    /// Not addressed to the router's MAC on the port it arrived on: a frame a promiscuous
    /// port (tcpdump, a bridge member) sees for another host. The kernel discards it too
    /// (`PACKET_OTHERHOST`).
    PassOtherHost,
    /// The kernel's route for the destination goes through no WAN (a VPN, a tunnel, another
    /// LAN, a branch router), or drops it: the kernel's business, untouched.
    PassKernelRoute,
    /// Arrived on a WAN for one of the router's own sockets (a tuple the TC egress hook
    /// recorded), or an ICMP error quoting one: the kernel's, never taken for a LAN host's.
    PassRouterOwn,
    /// TC egress: left a WAN from the router itself (its own sockets, or the kernel's
    /// masquerade of a LAN packet it forwarded), its tuple recorded so no mapping takes it.
    PassRouterOwnOut,
    /// TC egress: the router's own packet left unrecorded, the conntrack table being full (the
    /// router's DNS and probes must not fail because LAN hosts filled the table).
    PassRouterOwnUnrecorded,
    /// Shorter than its Ethernet header, or than an IPv4 header after it.
    DropRunt,
    /// IPv4 header invalid: version, IHL < 5 or past the total length, total length shorter
    /// than the header or past the frame.
    DropBadIpHeader,
    /// IPv4 header checksum wrong (the kernel's `ip_rcv_core` drops these too).
    DropBadIpChecksum,
    /// Transport header cut short by the total length or the frame, TCP data offset < 5 or
    /// past the packet, UDP length below 8 or past the packet.
    DropBadTransportHeader,
    /// From the LAN: a later fragment of a datagram whose first fragment pcc did not
    /// translate (it came first, or never): without its ports it cannot be translated, and
    /// untranslated it would leak a LAN address.
    DropFragmentUntracked,
    /// From the LAN with a source address outside every LAN subnet (BCP 38).
    DropSpoofed,
    /// No WAN is up.
    DropNoWan,
    /// The source's policy allows no WAN that is up (and names no fallback that is).
    DropPolicyNoWan,
    /// The conntrack table is full.
    DropConntrackFull,
    /// Every NAT port tried towards this remote endpoint was taken.
    DropNatPortsExhausted,
    /// `bpf_redirect_map` refused the target port.
    DropRedirect,
    /// Over the MTU of the port it would leave by, without DF: pcc does not fragment, and
    /// the kernel would send it out of another WAN or not at all (README: "MTU").
    DropOverMtu,
    /// A reset from outside whose sequence number lies outside the window the LAN host
    /// advertised (RFC 5961 section 3): a blind spoof, which must not end the connection.
    DropRstOutOfWindow,
    /// A new connection from a LAN host that already holds `--max-connections-per-host`:
    /// refused, so one host (a scanner, a worm) cannot fill the table for everyone.
    DropHostConnectionLimit,
    /// LAN -> LAN through a public endpoint, unable to reach its holder: a fragment, a tuple
    /// of the router's own, a TCP segment whose receiver's connection is gone.
    DropHairpinFiltered,
    /// TC egress: the router's own packet on a tuple a LAN host's mapping holds (same WAN
    /// address and port towards the same remote address and port): its replies would reach
    /// the LAN host, so it does not leave. The router's socket retries or picks another port.
    DropRouterTupleTaken,
    /// From the LAN: TCP of a connection that stays on its WAN while the WAN is down (see
    /// `failover::stays_on_down_wan`), whose link is down too (no gateway MAC). The host
    /// retransmits until the link returns or `--failover-grace` ends with a reset; passed to
    /// the kernel instead, a forwarding router would send it out of another WAN, to a server
    /// that answers an address it does not know with a reset.
    DropWanLinkDown,
}

impl Counter {
    pub const COUNT: usize = Counter::DropWanLinkDown as usize + 1;
    pub const ALL: [Counter; Self::COUNT] = [
        Counter::FwdOut,
        Counter::FwdIn,
        Counter::FwdIcmpError,
        Counter::FwdHairpin,
        Counter::FwdIcmpErrorOut,
        Counter::FwdRouted,
        Counter::AnsweredFragNeeded,
        Counter::IcmpProhibitedSent,
        Counter::IcmpProhibitedRateLimited,
        Counter::PassNotIpv4,
        Counter::PassLocal,
        Counter::PassTtl,
        Counter::PassUnsupported,
        Counter::PassIpOptions,
        Counter::PassFragment,
        Counter::PassUntracked,
        Counter::PassNoNeighbour,
        Counter::PassTcpNotSyn,
        Counter::PassOversize,
        Counter::PassOtherHost,
        Counter::PassKernelRoute,
        Counter::PassRouterOwn,
        Counter::PassRouterOwnOut,
        Counter::PassRouterOwnUnrecorded,
        Counter::DropRunt,
        Counter::DropBadIpHeader,
        Counter::DropBadIpChecksum,
        Counter::DropBadTransportHeader,
        Counter::DropFragmentUntracked,
        Counter::DropSpoofed,
        Counter::DropNoWan,
        Counter::DropPolicyNoWan,
        Counter::DropConntrackFull,
        Counter::DropNatPortsExhausted,
        Counter::DropRedirect,
        Counter::DropOverMtu,
        Counter::DropRstOutOfWindow,
        Counter::DropHostConnectionLimit,
        Counter::DropHairpinFiltered,
        Counter::DropRouterTupleTaken,
        Counter::DropWanLinkDown,
    ];

    /// Whether the packet is dropped (else forwarded or passed to the kernel).
    pub const fn is_drop(self) -> bool {
        self as u32 >= Counter::DropRunt as u32
    }

    /// Whether this counts an answer rather than a packet: not part of `pcc_packets_total`.
    pub const fn is_event(self) -> bool {
        matches!(
            self,
            Counter::IcmpProhibitedSent | Counter::IcmpProhibitedRateLimited
        )
    }

    /// What the packet's fate was: "forwarded", "answered" (dropped, and an ICMP error sent
    /// back), "passed" (to the kernel) or "dropped".
    pub const fn action(self) -> &'static str {
        match self {
            Counter::FwdOut
            | Counter::FwdIn
            | Counter::FwdIcmpError
            | Counter::FwdHairpin
            | Counter::FwdIcmpErrorOut
            | Counter::FwdRouted => "forwarded",
            Counter::AnsweredFragNeeded => "answered",
            Counter::IcmpProhibitedSent | Counter::IcmpProhibitedRateLimited => "event",
            Counter::PassNotIpv4
            | Counter::PassLocal
            | Counter::PassTtl
            | Counter::PassUnsupported
            | Counter::PassIpOptions
            | Counter::PassFragment
            | Counter::PassUntracked
            | Counter::PassNoNeighbour
            | Counter::PassTcpNotSyn
            | Counter::PassOversize
            | Counter::PassOtherHost
            | Counter::PassKernelRoute
            | Counter::PassRouterOwn
            | Counter::PassRouterOwnOut
            | Counter::PassRouterOwnUnrecorded => "passed",
            _ => "dropped",
        }
    }

    /// The `reason` label value.
    pub const fn reason(self) -> &'static str {
        match self {
            Counter::FwdOut => "lan_to_wan",
            Counter::FwdIn => "wan_to_lan",
            Counter::FwdIcmpError => "icmp_error",
            Counter::FwdHairpin => "hairpin",
            Counter::FwdIcmpErrorOut => "icmp_error_out",
            Counter::AnsweredFragNeeded => "frag_needed",
            Counter::IcmpProhibitedSent => "sent",
            Counter::IcmpProhibitedRateLimited => "rate_limited",
            Counter::FwdRouted => "lan_to_wan_routed",
            Counter::PassNotIpv4 => "not_ipv4",
            Counter::PassLocal => "local",
            Counter::PassTtl => "ttl_expired",
            Counter::PassUnsupported => "unsupported",
            Counter::PassIpOptions => "ip_options",
            Counter::PassFragment => "fragment",
            Counter::PassUntracked => "untracked",
            Counter::PassNoNeighbour => "no_neighbour",
            Counter::PassTcpNotSyn => "tcp_not_syn",
            Counter::PassOversize => "over_ingress_mtu",
            Counter::PassOtherHost => "other_host",
            Counter::PassKernelRoute => "kernel_route",
            Counter::PassRouterOwn => "router_own",
            Counter::PassRouterOwnOut => "router_own_out",
            Counter::PassRouterOwnUnrecorded => "router_own_unrecorded",
            Counter::DropRunt => "runt",
            Counter::DropBadIpHeader => "bad_ip_header",
            Counter::DropBadIpChecksum => "bad_ip_checksum",
            Counter::DropBadTransportHeader => "bad_transport_header",
            Counter::DropFragmentUntracked => "fragment_untracked",
            Counter::DropSpoofed => "spoofed_source",
            Counter::DropNoWan => "no_wan_up",
            Counter::DropPolicyNoWan => "policy_no_wan",
            Counter::DropConntrackFull => "conntrack_full",
            Counter::DropNatPortsExhausted => "nat_ports_exhausted",
            Counter::DropRedirect => "redirect_failed",
            Counter::DropOverMtu => "over_mtu_no_df",
            Counter::DropRstOutOfWindow => "rst_out_of_window",
            Counter::DropHostConnectionLimit => "host_connection_limit",
            Counter::DropHairpinFiltered => "hairpin_filtered",
            Counter::DropRouterTupleTaken => "router_tuple_taken",
            Counter::DropWanLinkDown => "wan_link_down",
        }
    }
}

/// What happened to connections, apart from packets (`CT_EVENTS[event]`, per CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtEvent {
    /// Idle past its timeout: removed by the dataplane's sweep, and its NAT port returned.
    Expired = 0,
    /// The table was full: a connection that never got a reply was removed to make room
    /// (nf_conntrack's early drop).
    EarlyDropped,
    /// Opened from outside, by a packet to a live mapping (endpoint-independent filtering).
    OpenedInbound,
    /// The sweep's timer could not be started (the kernel allocates it without locks, which
    /// fails now and then under load); the next new tuple tries again.
    TimerFailed,
}

impl CtEvent {
    pub const COUNT: usize = CtEvent::TimerFailed as usize + 1;
    pub const ALL: [CtEvent; Self::COUNT] = [
        CtEvent::Expired,
        CtEvent::EarlyDropped,
        CtEvent::OpenedInbound,
        CtEvent::TimerFailed,
    ];

    /// The `event` label value.
    pub const fn label(self) -> &'static str {
        match self {
            CtEvent::Expired => "expired",
            CtEvent::EarlyDropped => "early_dropped",
            CtEvent::OpenedInbound => "opened_inbound",
            CtEvent::TimerFailed => "timer_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_counter_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} out of order");
        }
        for (i, e) in CtEvent::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i, "{e:?} out of order");
        }
        let mut reasons: Vec<_> = Counter::ALL.iter().map(|c| c.reason()).collect();
        reasons.sort();
        reasons.dedup();
        assert_eq!(
            reasons.len(),
            Counter::COUNT,
            "reason labels must be unique"
        );
    }
}
