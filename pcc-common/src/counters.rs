//! Dataplane event counters (`STATS[counter]`, per CPU). Every packet the programs see ends in
//! exactly one of them, so `forwarded + passed + dropped` accounts for all traffic.

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
    /// LAN -> WAN, of a connection pinned to its WAN by a route more specific than a default
    /// route (the WAN's connected subnet, a static route): translated, sent to its next hop.
    FwdRouted,
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
    /// Bigger than the WAN's MTU: the kernel fragments or answers "fragmentation needed".
    PassMtu,
    /// Arrived on a WAN and matches no connection: the kernel decides (it never reaches the LAN
    /// through the dataplane).
    PassUntracked,
    /// The next hop's MAC is not known yet (the WAN's gateway, or a route's next hop, which
    /// the controller is then asked to resolve).
    PassNoNeighbour,
    /// The kernel's route for the destination goes through no WAN (a VPN, a tunnel, another
    /// LAN, a branch router), or drops it: the kernel's business, untouched.
    PassKernelRoute,
    /// Shorter than its Ethernet header, or than an IPv4 header after it.
    DropRunt,
    /// IPv4 header invalid: version, IHL < 5 or past the total length, total length shorter
    /// than the header or past the frame.
    DropBadIpHeader,
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
}

impl Counter {
    pub const COUNT: usize = Counter::DropRedirect as usize + 1;
    pub const ALL: [Counter; Self::COUNT] = [
        Counter::FwdOut,
        Counter::FwdIn,
        Counter::FwdIcmpError,
        Counter::FwdRouted,
        Counter::PassNotIpv4,
        Counter::PassLocal,
        Counter::PassTtl,
        Counter::PassUnsupported,
        Counter::PassIpOptions,
        Counter::PassFragment,
        Counter::PassMtu,
        Counter::PassUntracked,
        Counter::PassNoNeighbour,
        Counter::PassKernelRoute,
        Counter::DropRunt,
        Counter::DropBadIpHeader,
        Counter::DropBadTransportHeader,
        Counter::DropFragmentUntracked,
        Counter::DropSpoofed,
        Counter::DropNoWan,
        Counter::DropPolicyNoWan,
        Counter::DropConntrackFull,
        Counter::DropNatPortsExhausted,
        Counter::DropRedirect,
    ];

    /// Whether the packet is dropped (else forwarded or passed to the kernel).
    pub const fn is_drop(self) -> bool {
        self as u32 >= Counter::DropRunt as u32
    }

    /// What the packet's fate was: "forwarded", "passed" (to the kernel) or "dropped".
    pub const fn action(self) -> &'static str {
        match self {
            Counter::FwdOut | Counter::FwdIn | Counter::FwdIcmpError | Counter::FwdRouted => {
                "forwarded"
            }
            Counter::PassNotIpv4
            | Counter::PassLocal
            | Counter::PassTtl
            | Counter::PassUnsupported
            | Counter::PassIpOptions
            | Counter::PassFragment
            | Counter::PassMtu
            | Counter::PassUntracked
            | Counter::PassNoNeighbour
            | Counter::PassKernelRoute => "passed",
            _ => "dropped",
        }
    }

    /// The `reason` label value.
    pub const fn reason(self) -> &'static str {
        match self {
            Counter::FwdOut => "lan_to_wan",
            Counter::FwdIn => "wan_to_lan",
            Counter::FwdIcmpError => "icmp_error",
            Counter::FwdRouted => "lan_to_wan_routed",
            Counter::PassNotIpv4 => "not_ipv4",
            Counter::PassLocal => "local",
            Counter::PassTtl => "ttl_expired",
            Counter::PassUnsupported => "unsupported",
            Counter::PassIpOptions => "ip_options",
            Counter::PassFragment => "fragment",
            Counter::PassMtu => "over_mtu",
            Counter::PassUntracked => "untracked",
            Counter::PassNoNeighbour => "no_neighbour",
            Counter::PassKernelRoute => "kernel_route",
            Counter::DropRunt => "runt",
            Counter::DropBadIpHeader => "bad_ip_header",
            Counter::DropBadTransportHeader => "bad_transport_header",
            Counter::DropFragmentUntracked => "fragment_untracked",
            Counter::DropSpoofed => "spoofed_source",
            Counter::DropNoWan => "no_wan_up",
            Counter::DropPolicyNoWan => "policy_no_wan",
            Counter::DropConntrackFull => "conntrack_full",
            Counter::DropNatPortsExhausted => "nat_ports_exhausted",
            Counter::DropRedirect => "redirect_failed",
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
