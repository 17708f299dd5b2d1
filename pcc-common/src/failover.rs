//! Failover of connections already open: which keep leaving by a WAN that went down, and the
//! reset that tells a LAN host one of them is over once its WAN stayed down past the grace
//! (`--failover-grace`).
use crate::{CT_TCP_ACK, proto::IPPROTO_TCP};

/// Whether a balanced connection keeps leaving by its WAN while the WAN is down, instead of
/// being opened afresh on a live WAN at its next packet.
///
/// A TCP connection the LAN host has acknowledged something on does. Moved, its segments
/// would come from another address, which the peer does not know: it answers with a reset
/// (RFC 9293 section 3.10.7.1), so moving only breaks it. Kept, it survives a WAN that comes
/// back (an LTE or DSL blip) or still carries (health is about the internet beyond the
/// gateway); mwan3 keeps conntrack-marked connections on their interface the same way. One
/// whose SYN was never answered has nothing to lose and moves, like UDP and ICMP, whose
/// applications carry on from a new address (DNS retries, QUIC migrates, RTP restarts ICE).
#[inline(always)]
pub fn stays_on_down_wan(proto: u8, tcp_flags: u8) -> bool {
    proto == IPPROTO_TCP && tcp_flags & CT_TCP_ACK != 0
}

/// One end of a TCP connection on the LAN side of the router: MAC, address, port.
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub mac: [u8; 6],
    pub addr: std::net::Ipv4Addr,
    pub port: u16,
}

/// The Ethernet frame of a TCP reset to LAN host `host`, as if from the remote end `remote`
/// (the router's LAN port MAC as its source, as every frame the dataplane forwards has).
///
/// `seq` must be the host's RCV.NXT: RFC 5961 section 3.2 (Linux follows it) resets a
/// connection at once only when a reset's sequence number is exactly the next one expected;
/// any other in the window earns a challenge ACK, which the dead WAN would never answer. The
/// acknowledgment number the host last sent (`CtOut::lan_ack`) is that value as the remote
/// end learnt it. No ACK bit: a reset in a synchronized state is judged by its sequence number
/// alone (RFC 9293 section 3.10.7.4).
#[cfg(feature = "std")]
pub fn reset_frame(host: Endpoint, remote: Endpoint, seq: u32) -> Vec<u8> {
    use crate::{
        packet::{Frame, L4, TcpSegment},
        proto::TCP_RST,
    };
    Frame {
        dst_mac: host.mac,
        src_mac: remote.mac,
        src: remote.addr,
        dst: host.addr,
        tos: 0,
        ttl: 64,
        id: 0,
        l4: L4::TcpFull(TcpSegment {
            sport: remote.port,
            dport: host.port,
            seq,
            ack: 0,
            flags: TCP_RST,
            window: 0,
            options: Vec::new(),
            payload: Vec::new(),
        }),
    }
    .bytes()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        CT_TCP_FIN, CT_TCP_SYN,
        packet::parse,
        proto::{IPPROTO_ICMP, IPPROTO_UDP},
    };

    #[test]
    fn only_tcp_the_host_acknowledged_stays() {
        assert!(stays_on_down_wan(IPPROTO_TCP, CT_TCP_SYN | CT_TCP_ACK));
        assert!(
            stays_on_down_wan(IPPROTO_TCP, CT_TCP_ACK | CT_TCP_FIN),
            "closing"
        );
        assert!(
            !stays_on_down_wan(IPPROTO_TCP, CT_TCP_SYN),
            "SYN unanswered"
        );
        assert!(!stays_on_down_wan(IPPROTO_UDP, CT_TCP_ACK), "UDP");
        assert!(!stays_on_down_wan(IPPROTO_ICMP, 0), "ICMP");
    }

    #[test]
    fn the_reset_is_a_valid_segment_from_the_remote_end() {
        let host = Endpoint {
            mac: [2, 0, 0, 0, 0, 0x11],
            addr: Ipv4Addr::new(198, 19, 10, 11),
            port: 40000,
        };
        let remote = Endpoint {
            mac: [2, 0, 0, 0, 0, 1],
            addr: Ipv4Addr::new(203, 0, 113, 10),
            port: 443,
        };
        let frame = reset_frame(host, remote, 0xfedc_ba98);
        let p = parse(&frame).expect("an IPv4 frame");
        assert!(p.ip_checksum_ok && p.l4_checksum_ok, "{p:?}");
        assert_eq!((p.dst_mac, p.src_mac), (host.mac, remote.mac));
        assert_eq!(
            (p.src, p.sport, p.dst, p.dport),
            (remote.addr, 443, host.addr, 40000)
        );
        assert_eq!(p.proto, IPPROTO_TCP);
        assert_eq!(p.l4[4..8], 0xfedc_ba98u32.to_be_bytes(), "seq");
        assert_eq!(p.l4[13], 0x04, "RST alone");
        assert_eq!(p.l4.len(), 20, "no options, no payload");
    }
}
