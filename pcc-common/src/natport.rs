//! Which source ports the NAT may hand out, and the order it tries them in.

/// Ports `min..=max` (host byte order). The whole range, the hosts' ephemeral ports
/// included, so a host's own port is kept whenever it is free (RFC 4787 REQ-1's port
/// preservation). The router's own sockets need no window of their own: the TC egress hook on
/// each WAN records their tuples in the conntrack table, where a mapping's `BPF_NOEXIST`
/// insert finds them taken.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPortRange {
    pub min: u16,
    pub max: u16,
}

impl Default for NatPortRange {
    fn default() -> Self {
        // The unprivileged ports: below 1024 only a host's own well-known services bind,
        // and a mapping there could pass for one of them.
        Self {
            min: 1024,
            max: 65535,
        }
    }
}

/// How many ports the dataplane tries for one new connection before it gives up and counts a
/// `nat_ports_exhausted` drop. Bounded for the verifier; 16 random tries still find a free
/// port with probability 1 - 0.7^16 > 99.6 % when 70 % of the ports towards that remote
/// endpoint are taken.
pub const NAT_PORT_TRIES: u32 = 16;

impl NatPortRange {
    /// Number of ports the NAT may use.
    #[inline(always)]
    pub fn len(&self) -> u32 {
        if self.min > self.max {
            return 0;
        }
        u32::from(self.max) - u32::from(self.min) + 1
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        port >= self.min && port <= self.max
    }

    /// The `i`-th usable port (`i < len()`).
    #[inline(always)]
    pub fn nth(&self, i: u32) -> u16 {
        (u32::from(self.min) + i) as u16
    }

    /// The port to try on `attempt` (0-based) for a connection from `orig_port`, given a
    /// fresh random number: first the host's own port when allowed (as Cilium and Linux do,
    /// so port-sensitive protocols see what the host chose), then random ports of the same
    /// parity (RFC 4787 REQ-4: RTP on an even port, RTCP on the next odd one), then any.
    #[inline(always)]
    pub fn candidate(&self, orig_port: u16, attempt: u32, random: u32) -> u16 {
        if attempt == 0 && self.contains(orig_port) {
            return orig_port;
        }
        let len = self.len();
        if len == 0 {
            return orig_port;
        }
        let port = self.nth(random % len);
        let same_parity = port ^ ((port ^ orig_port) & 1);
        // Parity first; the later tries take any port, so a range whose ports of one parity
        // are gone still has the others.
        if attempt < NAT_PORT_TRIES / 2 && self.contains(same_parity) {
            same_parity
        } else {
            port
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn default_is_every_unprivileged_port() {
        let r = NatPortRange::default();
        assert_eq!(r.len(), 65535 - 1024 + 1);
        // Linux's ephemeral range included: a host's port there is kept when free.
        assert!(r.contains(1024) && r.contains(32768) && r.contains(60999) && r.contains(65535));
        assert!(!r.contains(1023));
        assert_eq!(r.nth(0), 1024);
        assert_eq!(r.nth(r.len() - 1), 65535);
    }

    #[test]
    fn keeps_original_port_when_allowed() {
        let r = NatPortRange::default();
        assert_eq!(r.candidate(5000, 0, 12345), 5000);
        assert_eq!(
            r.candidate(40000, 0, 12345),
            40000,
            "an ephemeral port is kept too"
        );
        let p = r.candidate(80, 0, 12345);
        assert!(r.contains(p) && p != 80, "a privileged port is not");
        assert!(r.contains(r.candidate(5000, 1, 999)));
    }

    #[test]
    fn collisions_find_a_free_port_within_the_tries() {
        // Two hosts on the same source port to the same server: the second must get another
        // port. Simulate with a set of taken ports and a simple PRNG.
        let r = NatPortRange {
            min: 10000,
            max: 10099,
        };
        let mut taken = std::collections::HashSet::new();
        let mut seed = 1u32;
        for _ in 0..70 {
            let mut got = None;
            for attempt in 0..NAT_PORT_TRIES {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let p = r.candidate(10000, attempt, seed >> 8);
                if taken.insert(p) {
                    got = Some(p);
                    break;
                }
            }
            assert!(
                got.is_some(),
                "no port found with {} of 100 taken",
                taken.len()
            );
        }
        assert!(
            taken.contains(&10000),
            "the first connection keeps its port"
        );
    }

    #[test]
    fn random_ports_keep_the_hosts_parity() {
        let r = NatPortRange::default();
        for orig in [5004u16, 5005] {
            for random in 0..2000u32 {
                let p = r.candidate(orig, 1, random.wrapping_mul(2_654_435_761));
                assert!(r.contains(p));
                assert_eq!(p & 1, orig & 1, "{orig} mapped to {p}");
            }
        }
        // A one-port range of the other parity still yields its port.
        let one = NatPortRange {
            min: 7000,
            max: 7000,
        };
        assert_eq!(one.candidate(5005, 1, 3), 7000);
    }

    #[test]
    fn empty_range() {
        let r = NatPortRange {
            min: 2000,
            max: 1000,
        };
        assert_eq!(r.len(), 0);
        assert_eq!(r.candidate(7, 3, 9), 7);
    }

    proptest! {
        #[test]
        fn nth_enumerates_exactly_the_allowed_ports(min in 1u16..4000, span in 0u16..3000) {
            let r = NatPortRange { min, max: min.saturating_add(span) };
            let by_nth: Vec<u16> = (0..r.len()).map(|i| r.nth(i)).collect();
            let by_filter: Vec<u16> = (r.min..=r.max).filter(|&p| r.contains(p)).collect();
            prop_assert_eq!(by_nth, by_filter);
        }
    }
}
