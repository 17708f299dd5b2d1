//! Building and checking Ethernet/IPv4 frames on the host: the controller's failover resets
//! ([`crate::failover::reset_frame`]) and the fixtures of the program tests, benchmarks and
//! fuzzers. Checksums are computed in full here, never incrementally, so they are an
//! independent check on the dataplane's RFC 1624 updates. What only tests use (fragmenting,
//! reassembling, parsing and checking frames, raw IPv4 packets, MSS options) is behind the
//! `testing` feature, which only the test and benchmark crates enable.
use std::net::Ipv4Addr;

use crate::{
    csum,
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// The transport part of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    /// `checksum: false` sends 0 ("no checksum", RFC 768).
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        checksum: bool,
    },
    /// TCP with every header field chosen: options (padded to 32-bit words), sequence and
    /// acknowledgment numbers, window.
    TcpFull(TcpSegment),
    /// Any ICMP message: echo (`rest` = id, seq), or an error (`rest` = unused/MTU word,
    /// `payload` = the quoted datagram).
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
        payload: Vec<u8>,
    },
}

/// An IPv4 packet in an Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Type of service (DSCP and ECN): no router on the way changes it.
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    pub l4: L4,
}

/// A TCP segment for [`L4::TcpFull`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpSegment {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Raw option bytes, zero-padded to a multiple of 4.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl TcpSegment {
    /// The segment with a valid checksum for `src` -> `dst`.
    pub fn bytes(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut options = self.options.clone();
        options.resize(options.len().div_ceil(4) * 4, 0);
        let mut s = vec![0u8; 20];
        s[0..2].copy_from_slice(&self.sport.to_be_bytes());
        s[2..4].copy_from_slice(&self.dport.to_be_bytes());
        s[4..8].copy_from_slice(&self.seq.to_be_bytes());
        s[8..12].copy_from_slice(&self.ack.to_be_bytes());
        s[12] = (((20 + options.len()) / 4) as u8) << 4;
        s[13] = self.flags;
        s[14..16].copy_from_slice(&self.window.to_be_bytes());
        s.extend_from_slice(&options);
        s.extend_from_slice(&self.payload);
        let c = csum::l4_checksum(src.octets(), dst.octets(), IPPROTO_TCP, &s);
        s[16..18].copy_from_slice(&c.to_be_bytes());
        s
    }
}

#[cfg(feature = "testing")]
/// The TCP option carrying a maximum segment size (RFC 879).
pub fn mss_option(mss: u16) -> [u8; 4] {
    let [hi, lo] = mss.to_be_bytes();
    [2, 4, hi, lo]
}

impl L4 {
    pub fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } | L4::TcpFull(_) => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::Icmp { .. } => IPPROTO_ICMP,
        }
    }

    /// The transport segment with a valid checksum for `src` -> `dst`.
    pub fn bytes(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        match self {
            L4::Tcp {
                sport,
                dport,
                flags,
                payload,
            } => {
                let mut s = vec![0u8; 20];
                s[0..2].copy_from_slice(&sport.to_be_bytes());
                s[2..4].copy_from_slice(&dport.to_be_bytes());
                s[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
                s[12] = 5 << 4;
                s[13] = *flags;
                s[14..16].copy_from_slice(&64240u16.to_be_bytes());
                s.extend_from_slice(payload);
                let c = csum::l4_checksum(src.octets(), dst.octets(), IPPROTO_TCP, &s);
                s[16..18].copy_from_slice(&c.to_be_bytes());
                s
            }
            L4::TcpFull(seg) => seg.bytes(src, dst),
            L4::Udp {
                sport,
                dport,
                payload,
                checksum,
            } => {
                let mut s = vec![0u8; 8];
                s[0..2].copy_from_slice(&sport.to_be_bytes());
                s[2..4].copy_from_slice(&dport.to_be_bytes());
                s[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                s.extend_from_slice(payload);
                if *checksum {
                    let c = match csum::l4_checksum(src.octets(), dst.octets(), IPPROTO_UDP, &s) {
                        0 => 0xffff,
                        c => c,
                    };
                    s[6..8].copy_from_slice(&c.to_be_bytes());
                }
                s
            }
            L4::Icmp {
                kind,
                code,
                rest,
                payload,
            } => {
                let mut s = vec![*kind, *code, 0, 0];
                s.extend_from_slice(rest);
                s.extend_from_slice(payload);
                let c = csum::checksum(&s);
                s[2..4].copy_from_slice(&c.to_be_bytes());
                s
            }
        }
    }
}

#[cfg(feature = "testing")]
/// An IPv4 header (type of service 0) plus `payload`, with a valid header checksum.
pub fn ipv4_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    id: u16,
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    ipv4_packet_tos(src, dst, 0, ttl, id, proto, payload)
}

/// [`ipv4_packet`] with type of service `tos`.
fn ipv4_packet_tos(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    tos: u8,
    ttl: u8,
    id: u16,
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[1] = tos;
    p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6] = 0x40; // DF, as hosts doing path-MTU discovery send
    p[8] = ttl;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = csum::checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

impl Frame {
    /// The IPv4 packet (no Ethernet header).
    pub fn ip_bytes(&self) -> Vec<u8> {
        ipv4_packet_tos(
            self.src,
            self.dst,
            self.tos,
            self.ttl,
            self.id,
            self.l4.proto(),
            &self.l4.bytes(self.src, self.dst),
        )
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(64);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        f.extend_from_slice(&self.ip_bytes());
        f
    }
}

#[cfg(feature = "testing")]
impl Frame {
    /// The frame split into IP fragments of at most `chunk` payload bytes each (rounded down
    /// to the 8-byte unit of fragment offsets, RFC 791), each with a valid header checksum.
    pub fn fragments(&self, chunk: usize) -> Vec<Vec<u8>> {
        let chunk = (chunk / 8).max(1) * 8;
        let segment = self.l4.bytes(self.src, self.dst);
        let pieces: Vec<&[u8]> = segment.chunks(chunk).collect();
        let last = pieces.len() - 1;
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let mut ip = ipv4_packet_tos(
                    self.src,
                    self.dst,
                    self.tos,
                    self.ttl,
                    self.id,
                    self.l4.proto(),
                    piece,
                );
                let units = (i * chunk / 8) as u16;
                let mf = if i < last { 0x2000 } else { 0 };
                ip[6..8].copy_from_slice(&(mf | units).to_be_bytes());
                ip[10..12].copy_from_slice(&[0, 0]);
                let c = csum::checksum(&ip[..20]);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                let mut f = Vec::with_capacity(14 + ip.len());
                f.extend_from_slice(&self.dst_mac);
                f.extend_from_slice(&self.src_mac);
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                f.extend_from_slice(&ip);
                f
            })
            .collect()
    }
}

#[cfg(feature = "testing")]
/// Reassembles the frames of one fragmented datagram (any order) into a single unfragmented
/// frame, to [`parse`] and check as a whole. `None` if a header is not IPv4, the fragments
/// disagree on addresses, protocol or ID, or a piece is missing.
pub fn reassemble(frames: &[Vec<u8>]) -> Option<Vec<u8>> {
    let first = frames.first()?;
    if first.len() < 34 {
        return None;
    }
    let ident = |f: &[u8]| {
        (
            f[14 + 4..14 + 6].to_vec(),
            f[14 + 9],
            f[14 + 12..14 + 20].to_vec(),
        )
    };
    let mut pieces = Vec::new();
    for f in frames {
        if f.len() < 34 || be16(f, 12) != ETH_P_IP || f[14] != 0x45 || ident(f) != ident(first) {
            return None;
        }
        let tot = usize::from(be16(f, 16));
        let frag = be16(f, 20);
        let data = f.get(34..14 + tot)?;
        pieces.push((
            usize::from(frag & 0x1fff) * 8,
            frag & 0x2000 != 0,
            data.to_vec(),
        ));
    }
    pieces.sort_by_key(|p| p.0);
    let mut payload = Vec::new();
    for (offset, _, data) in &pieces {
        if *offset != payload.len() {
            return None;
        }
        payload.extend_from_slice(data);
    }
    if pieces.last()?.1 {
        return None;
    }
    let hdr = &first[14..34];
    let src = Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]);
    let dst = Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]);
    let mut f = first[..14].to_vec();
    f.extend_from_slice(&ipv4_packet_tos(
        src,
        dst,
        hdr[1],
        hdr[8],
        be16(hdr, 4),
        hdr[9],
        &payload,
    ));
    Some(f)
}

#[cfg(feature = "testing")]
/// What a frame says, with every checksum verified from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    /// TCP/UDP ports; ICMP: (id, 0).
    pub sport: u16,
    pub dport: u16,
    pub ip_checksum_ok: bool,
    /// TCP/UDP over the pseudo-header, ICMP over the message; a UDP checksum of 0 is "ok".
    pub l4_checksum_ok: bool,
    pub udp_checksum_zero: bool,
    /// The transport segment (header and payload).
    pub l4: Vec<u8>,
}

#[cfg(feature = "testing")]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[cfg(feature = "testing")]
/// Parses an Ethernet/IPv4 frame (no options); `None` if it is not one.
pub fn parse(frame: &[u8]) -> Option<Parsed> {
    if frame.len() < 34 || be16(frame, 12) != ETH_P_IP || frame[14] != 0x45 {
        return None;
    }
    let ip = &frame[14..];
    let tot = usize::from(be16(ip, 2));
    if tot > ip.len() || tot < 20 {
        return None;
    }
    let (hdr, l4) = (&ip[..20], &ip[20..tot]);
    let src = Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]);
    let dst = Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]);
    let proto = hdr[9];
    let (sport, dport, l4_ok, zero) = match proto {
        IPPROTO_TCP if l4.len() >= 20 => (
            be16(l4, 0),
            be16(l4, 2),
            csum::l4_checksum(src.octets(), dst.octets(), IPPROTO_TCP, l4) == 0,
            false,
        ),
        IPPROTO_UDP if l4.len() >= 8 => {
            let zero = be16(l4, 6) == 0;
            (
                be16(l4, 0),
                be16(l4, 2),
                zero || csum::l4_checksum(src.octets(), dst.octets(), IPPROTO_UDP, l4) == 0,
                zero,
            )
        }
        IPPROTO_ICMP if l4.len() >= 8 => (be16(l4, 4), 0, csum::checksum(l4) == 0, false),
        _ => (0, 0, false, false),
    };
    Some(Parsed {
        dst_mac: frame[0..6].try_into().ok()?,
        src_mac: frame[6..12].try_into().ok()?,
        src,
        dst,
        ttl: hdr[8],
        proto,
        sport,
        dport,
        ip_checksum_ok: csum::checksum(hdr) == 0,
        l4_checksum_ok: l4_ok,
        udp_checksum_zero: zero,
        l4: l4.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::TCP_SYN;

    #[test]
    fn built_frames_parse_back_with_valid_checksums() {
        let a = Ipv4Addr::new(198, 19, 10, 11);
        let b = Ipv4Addr::new(203, 0, 113, 10);
        for l4 in [
            L4::Tcp {
                sport: 40000,
                dport: 80,
                flags: TCP_SYN,
                payload: vec![],
            },
            L4::Udp {
                sport: 5000,
                dport: 53,
                payload: b"hello".to_vec(),
                checksum: true,
            },
            L4::Udp {
                sport: 5000,
                dport: 53,
                payload: b"hello".to_vec(),
                checksum: false,
            },
            L4::Icmp {
                kind: 8,
                code: 0,
                rest: [0x12, 0x34, 0, 1],
                payload: vec![0; 16],
            },
        ] {
            let f = Frame {
                dst_mac: [1; 6],
                src_mac: [2; 6],
                src: a,
                dst: b,
                tos: 0,
                ttl: 64,
                id: 7,
                l4,
            };
            let p = parse(&f.bytes()).expect("parses");
            assert!(p.ip_checksum_ok && p.l4_checksum_ok, "{p:?}");
            assert_eq!((p.src, p.dst, p.ttl), (a, b, 64));
        }
    }

    #[test]
    fn fragments_reassemble_to_the_whole_datagram() {
        let f = Frame {
            dst_mac: [1; 6],
            src_mac: [2; 6],
            src: Ipv4Addr::new(198, 19, 10, 11),
            dst: Ipv4Addr::new(203, 0, 113, 10),
            tos: 0xb8,
            ttl: 64,
            id: 0x4242,
            l4: L4::Udp {
                sport: 5000,
                dport: 7,
                payload: (0..4000u32).map(|i| i as u8).collect(),
                checksum: true,
            },
        };
        let mut frags = f.fragments(1480);
        assert_eq!(frags.len(), 3);
        for (i, fr) in frags.iter().enumerate() {
            assert_eq!(
                csum::checksum(&fr[14..34]),
                0,
                "fragment {i} header checksum"
            );
            assert_eq!(be16(fr, 20) & 0x2000 != 0, i < 2, "MF of fragment {i}");
        }
        frags.reverse();
        let joined = reassemble(&frags).expect("reassembles");
        assert!(
            frags.iter().all(|fr| fr[15] == 0xb8),
            "each fragment keeps the TOS"
        );
        assert_eq!(joined[15], 0xb8, "and so does the whole");
        let whole = parse(&joined).expect("parses");
        assert!(whole.l4_checksum_ok);
        assert_eq!((whole.sport, whole.dport, whole.l4.len()), (5000, 7, 4008));
        assert!(reassemble(&frags[..2]).is_none(), "a missing piece");
    }
}
