//! When a connection has ended. The dataplane decides, in its sweep (`crate::expiry`); the
//! controller only reads the same arithmetic for its census.
use crate::{
    CT_TCP_FIN, CT_TCP_RST, CtIn, CtOut, LAN_ROUTER,
    proto::{IPPROTO_TCP, IPPROTO_UDP},
};

/// Idle timeouts in seconds. A NAT that forgets a mapping too early breaks the connection
/// behind it, so every default meets the floor the IETF set for NATs (RFC 5382 for TCP, RFC
/// 4787 for UDP, RFC 5508 for ICMP); established TCP follows Linux nf_conntrack. The closed-TCP
/// grace is shorter than Linux's 120 s TIME_WAIT: a NAT only needs to absorb the last
/// retransmitted FIN/ACK, and returning the port sooner matters when guests open thousands of
/// short connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Established TCP (nf_conntrack_tcp_timeout_established: 5 days; RFC 5382 REQ-5: at
    /// least 2 h 4 min).
    pub tcp_established: u32,
    /// TCP that has not been answered yet (SYN_SENT), or is half-closed (FIN one way): RFC
    /// 5382 REQ-5's "transitory" state, at least 4 min.
    pub tcp_opening: u32,
    /// After an in-window RST, or FIN both ways.
    pub tcp_close: u32,
    /// UDP seen one way only: RFC 4787 REQ-5, at least 2 min.
    pub udp: u32,
    /// UDP with replies: RFC 4787 REQ-5 recommends 5 min.
    pub udp_stream: u32,
    /// ICMP echo: RFC 5508 REQ-2, at least 60 s.
    pub icmp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established: 432_000,
            tcp_opening: 240,
            tcp_close: 10,
            udp: 120,
            udp_stream: 300,
            icmp: 60,
        }
    }
}

impl Timeouts {
    /// Seconds a connection in this state may stay idle.
    #[inline(always)]
    pub fn idle_limit(&self, proto: u8, out: &CtOut, reply: &CtIn) -> u32 {
        match proto {
            IPPROTO_TCP => {
                let flags = out.tcp_flags | reply.tcp_flags;
                if flags & CT_TCP_RST != 0
                    || (out.tcp_flags & CT_TCP_FIN != 0 && reply.tcp_flags & CT_TCP_FIN != 0)
                {
                    self.tcp_close
                } else if flags & CT_TCP_FIN != 0 || reply.packets == 0 {
                    self.tcp_opening
                } else {
                    self.tcp_established
                }
            }
            IPPROTO_UDP if reply.packets > 0 => self.udp_stream,
            IPPROTO_UDP => self.udp,
            _ => self.icmp,
        }
    }

    /// Nanoseconds until a connection idle since the later of both sides' last packets
    /// expires, or `None` once it has.
    #[inline(always)]
    pub fn remaining_ns(&self, proto: u8, out: &CtOut, reply: &CtIn, now_ns: u64) -> Option<u64> {
        let last = if out.last_seen_ns > reply.last_seen_ns {
            out.last_seen_ns
        } else {
            reply.last_seen_ns
        };
        let deadline = last + u64::from(self.idle_limit(proto, out, reply)) * 1_000_000_000;
        if now_ns >= deadline {
            None
        } else {
            Some(deadline - now_ns)
        }
    }

    /// Whether a connection idle since the later of both sides' last packets has expired.
    pub fn expired(&self, proto: u8, out: &CtOut, reply: &CtIn, now_ns: u64) -> bool {
        self.remaining_ns(proto, out, reply, now_ns).is_none()
    }
}

impl Timeouts {
    /// Whether a tuple of the router's own (`CT_IN` entry with `lan_id ==` [`LAN_ROUTER`])
    /// has been idle too long: with the same timeouts as a mapping, so no mapping takes a
    /// tuple the router's socket may still use. Its `tcp_flags` gather both sides' flags, so
    /// a FIN of either side counts as half-closed (the opening timeout, longer than the
    /// socket's own TIME_WAIT) and only a reset ends it at once.
    pub fn router_tuple_expired(&self, proto: u8, entry: &CtIn, now_ns: u64) -> bool {
        self.router_tuple_remaining_ns(proto, entry, now_ns)
            .is_none()
    }

    /// Nanoseconds until a tuple of the router's own expires (see
    /// [`Self::router_tuple_expired`]), or `None` once it has.
    #[inline(always)]
    pub fn router_tuple_remaining_ns(&self, proto: u8, entry: &CtIn, now_ns: u64) -> Option<u64> {
        debug_assert_eq!(entry.lan_id, LAN_ROUTER);
        let limit = match proto {
            IPPROTO_TCP if entry.tcp_flags & CT_TCP_RST != 0 => self.tcp_close,
            IPPROTO_TCP if entry.tcp_flags & CT_TCP_FIN != 0 || entry.packets == 0 => {
                self.tcp_opening
            }
            IPPROTO_TCP => self.tcp_established,
            IPPROTO_UDP if entry.packets > 0 => self.udp_stream,
            IPPROTO_UDP => self.udp,
            _ => self.icmp,
        };
        let deadline = entry.last_seen_ns + u64::from(limit) * 1_000_000_000;
        if now_ns > deadline {
            None
        } else {
            Some(deadline - now_ns + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CT_TCP_SYN, proto::IPPROTO_ICMP};

    const S: u64 = 1_000_000_000;

    fn pair(out_flags: u8, in_flags: u8, replies: u64) -> (CtOut, CtIn) {
        (
            CtOut {
                tcp_flags: out_flags,
                last_seen_ns: 100 * S,
                packets: 1,
                ..Default::default()
            },
            CtIn {
                tcp_flags: in_flags,
                last_seen_ns: 100 * S,
                packets: replies,
                ..Default::default()
            },
        )
    }

    #[test]
    fn tcp_states() {
        let t = Timeouts::default();
        let (o, i) = pair(CT_TCP_SYN, 0, 0);
        assert_eq!(t.idle_limit(IPPROTO_TCP, &o, &i), 240, "unanswered SYN");
        let (o, i) = pair(CT_TCP_SYN, CT_TCP_SYN, 1);
        assert_eq!(t.idle_limit(IPPROTO_TCP, &o, &i), 432_000, "established");
        let (o, i) = pair(CT_TCP_FIN, 0, 3);
        assert_eq!(t.idle_limit(IPPROTO_TCP, &o, &i), 240, "half closed");
        let (o, i) = pair(CT_TCP_FIN, CT_TCP_FIN, 3);
        assert_eq!(t.idle_limit(IPPROTO_TCP, &o, &i), 10, "closed both ways");
        let (o, i) = pair(0, CT_TCP_RST, 3);
        assert_eq!(t.idle_limit(IPPROTO_TCP, &o, &i), 10, "reset");
    }

    #[test]
    fn udp_and_icmp() {
        let t = Timeouts::default();
        let (o, i) = pair(0, 0, 0);
        assert_eq!(t.idle_limit(IPPROTO_UDP, &o, &i), 120);
        assert_eq!(t.idle_limit(IPPROTO_ICMP, &o, &i), 60);
        let (o, i) = pair(0, 0, 2);
        assert_eq!(t.idle_limit(IPPROTO_UDP, &o, &i), 300);
    }

    #[test]
    fn expiry_uses_the_latest_packet_of_either_side() {
        let t = Timeouts::default();
        let (o, mut i) = pair(0, 0, 1);
        assert!(!t.expired(IPPROTO_UDP, &o, &i, 399 * S));
        assert_eq!(t.remaining_ns(IPPROTO_UDP, &o, &i, 399 * S), Some(S));
        assert!(t.expired(IPPROTO_UDP, &o, &i, 400 * S));
        i.last_seen_ns = 150 * S;
        assert!(
            !t.expired(IPPROTO_UDP, &o, &i, 401 * S),
            "a recent reply keeps it alive"
        );
    }
}

#[cfg(test)]
mod router_tuples {
    use super::*;
    use crate::{CT_TCP_ACK, CT_TCP_SYN, proto::IPPROTO_ICMP};

    const S: u64 = 1_000_000_000;

    fn tuple(tcp_flags: u8, packets: u64) -> CtIn {
        CtIn {
            lan_id: LAN_ROUTER,
            tcp_flags,
            packets,
            last_seen_ns: 100 * S,
            ..Default::default()
        }
    }

    /// The second a tuple idle since 100 s expires right after, by state.
    fn lives_until(proto: u8, e: &CtIn) -> u32 {
        let t = Timeouts::default();
        (100..1_000_000u32)
            .find(|&s| t.router_tuple_expired(proto, e, u64::from(s) * S + 1))
            .expect("expires")
    }

    #[test]
    fn router_tuples_expire_like_mappings() {
        let t = Timeouts::default();
        assert_eq!(lives_until(IPPROTO_UDP, &tuple(0, 0)), 100 + t.udp);
        assert_eq!(lives_until(IPPROTO_UDP, &tuple(0, 3)), 100 + t.udp_stream);
        assert_eq!(lives_until(IPPROTO_ICMP, &tuple(0, 1)), 100 + t.icmp);
        assert_eq!(
            lives_until(IPPROTO_TCP, &tuple(CT_TCP_SYN, 0)),
            100 + t.tcp_opening,
            "no answer yet"
        );
        assert_eq!(
            lives_until(IPPROTO_TCP, &tuple(CT_TCP_SYN | CT_TCP_ACK | CT_TCP_FIN, 9)),
            100 + t.tcp_opening,
            "a FIN of either side: half-closed"
        );
        assert_eq!(
            lives_until(IPPROTO_TCP, &tuple(CT_TCP_ACK | CT_TCP_RST, 9)),
            100 + t.tcp_close
        );
        assert_eq!(
            lives_until(IPPROTO_TCP, &tuple(CT_TCP_SYN | CT_TCP_ACK, 9)),
            100 + t.tcp_established
        );
    }
}

#[cfg(test)]
mod rfc_floors {
    use super::Timeouts;

    #[test]
    fn defaults_meet_the_rfc_floors() {
        let t = Timeouts::default();
        assert!(t.tcp_established >= 2 * 3600 + 4 * 60, "RFC 5382 REQ-5");
        assert!(t.tcp_opening >= 4 * 60, "RFC 5382 REQ-5 transitory");
        assert!(t.udp >= 120 && t.udp_stream >= 120, "RFC 4787 REQ-5");
        assert!(t.icmp >= 60, "RFC 5508 REQ-2");
    }
}
