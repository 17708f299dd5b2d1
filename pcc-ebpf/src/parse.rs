//! Header layouts and bounds-checked access to packet bytes.
//!
//! Fields are kept exactly as on the wire (network byte order); callers compare them with
//! constants converted once at compile time (`u16::to_be`).
use aya_ebpf::programs::XdpContext;

pub const ETH_LEN: usize = 14;
pub const IP_LEN: usize = 20;
pub const L4_OFF: usize = ETH_LEN + IP_LEN;
pub const ETH_P_IP: u16 = 0x0800_u16.to_be();
/// More-fragments flag and fragment offset: any of them set means a fragment.
pub const IP_MF_OFFSET: u16 = 0x3fff_u16.to_be();

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

/// The first 20 bytes of a TCP header (options are never touched).
#[repr(C)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub off_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg: u16,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

/// ICMP header; for echo, `id` plays the port (RFC 792).
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub id: u16,
    pub seq: u16,
}

/// A pointer to a `T` at `offset`, if the whole `T` lies inside the frame. The explicit
/// comparison against `data_end` is what the verifier needs to see before any access.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

/// Multicast (224.0.0.0/4) or limited broadcast: never forwarded.
#[inline(always)]
pub fn is_multicast_or_broadcast(addr_be: u32) -> bool {
    let first = u32::from_be(addr_be) >> 24;
    first >= 224 || addr_be == u32::MAX
}
