//! Header layouts and bounds-checked access to packet bytes.
//!
//! Fields are kept exactly as on the wire (network byte order); callers compare them with
//! constants converted once at compile time (`u16::to_be`).
use aya_ebpf::programs::XdpContext;
use pcc_common::{Counter, csum};

pub const ETH_LEN: usize = 14;
pub const IP_LEN: usize = 20;
pub const L4_OFF: usize = ETH_LEN + IP_LEN;
pub const ETH_P_IP: u16 = 0x0800_u16.to_be();
/// More-fragments flag and fragment offset: any of them set means a fragment.
pub const IP_MF_OFFSET: u16 = 0x3fff_u16.to_be();
/// The fragment offset alone: non-zero in every fragment but the first.
pub const IP_OFFSET: u16 = 0x1fff_u16.to_be();

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

/// Whether two MACs are equal, byte by byte: an array comparison may compile to a `memcmp`
/// call, which BPF lacks (and unaligned wide reads become byte loads in BPF anyway).
#[inline(always)]
pub fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    let mut differ = 0u8;
    for i in 0..6 {
        differ |= a[i] ^ b[i];
    }
    differ == 0
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

/// Where a packet sits in its datagram (RFC 791).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    Whole,
    /// Offset 0, more fragments follow: carries the transport header.
    First,
    /// Offset > 0: payload only, no transport header.
    Later,
}

/// A parsed IPv4 packet the fast path may translate. Addresses and `ip_id` as on the wire.
pub struct Ipv4 {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    pub tot_len: u16,
    pub ip_id: u16,
    pub fragment: Fragment,
}

/// The frame's Ethernet and IPv4 headers, checked the way the kernel's `ip_rcv_core` checks
/// them (a header the kernel would drop is dropped here, counted). Options go to the kernel,
/// and so does TTL <= 1 (it answers "time exceeded").
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<Ipv4, Counter> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Counter::DropRunt)?;
    // SAFETY: bounds-checked by ptr_at.
    if unsafe { (*eth).ether_type } != ETH_P_IP {
        return Err(Counter::PassNotIpv4);
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN).ok_or(Counter::DropRunt)?;
    // SAFETY: bounds-checked by ptr_at.
    let h = unsafe { &*ip };
    let (version_ihl, tot_len) = (h.version_ihl, u16::from_be(h.tot_len));
    let ihl_bytes = u16::from(version_ihl & 0xf) * 4;
    if version_ihl >> 4 != 4 || ihl_bytes < IP_LEN as u16 || tot_len < ihl_bytes {
        return Err(Counter::DropBadIpHeader);
    }
    if u64::from(tot_len) + ETH_LEN as u64 > frame_len(ctx) {
        return Err(Counter::DropBadIpHeader);
    }
    if ihl_bytes != IP_LEN as u16 {
        return Err(Counter::PassIpOptions);
    }
    // A header whose checksum is wrong was damaged on the way: `ip_rcv_core` drops it, and
    // an incremental update would carry the damage on with a valid-looking checksum.
    let words = ptr_at::<[u32; 5]>(ctx, ETH_LEN).ok_or(Counter::DropRunt)?;
    // SAFETY: bounds-checked by ptr_at.
    if !csum::ipv4_header_ok(unsafe { &*words }) {
        return Err(Counter::DropBadIpChecksum);
    }
    if h.ttl <= 1 {
        return Err(Counter::PassTtl);
    }
    let fragment = if h.frag_off & IP_MF_OFFSET == 0 {
        Fragment::Whole
    } else if h.frag_off & IP_OFFSET == 0 {
        Fragment::First
    } else {
        Fragment::Later
    };
    Ok(Ipv4 {
        eth,
        ip,
        src: h.src,
        dst: h.dst,
        proto: h.proto,
        tot_len,
        ip_id: h.id,
        fragment,
    })
}

/// The TCP header of a whole packet or first fragment. The first fragment must hold the
/// whole header (RFC 1858: tiny fragments are an attack on filters).
#[inline(always)]
pub fn tcp(ctx: &XdpContext, p: &Ipv4) -> Result<*mut TcpHdr, Counter> {
    let th = ptr_at::<TcpHdr>(ctx, L4_OFF).ok_or(Counter::DropBadTransportHeader)?;
    // SAFETY: bounds-checked by ptr_at.
    let data_offset = u16::from(unsafe { (*th).off_res } >> 4) * 4;
    if data_offset < 20 || data_offset > p.tot_len - IP_LEN as u16 {
        return Err(Counter::DropBadTransportHeader);
    }
    Ok(th)
}

/// The UDP header of a whole packet or first fragment. Its length covers the whole datagram,
/// so only a whole packet can be held to it.
#[inline(always)]
pub fn udp(ctx: &XdpContext, p: &Ipv4) -> Result<*mut UdpHdr, Counter> {
    let uh = ptr_at::<UdpHdr>(ctx, L4_OFF).ok_or(Counter::DropBadTransportHeader)?;
    // SAFETY: bounds-checked by ptr_at.
    let len = u16::from_be(unsafe { (*uh).len });
    let payload = p.tot_len - IP_LEN as u16;
    if len < 8 || payload < 8 || (p.fragment == Fragment::Whole && len > payload) {
        return Err(Counter::DropBadTransportHeader);
    }
    Ok(uh)
}

/// The ICMP header of a whole packet or first fragment.
#[inline(always)]
pub fn icmp(ctx: &XdpContext, p: &Ipv4) -> Result<*mut IcmpHdr, Counter> {
    let ih = ptr_at::<IcmpHdr>(ctx, L4_OFF).ok_or(Counter::DropBadTransportHeader)?;
    if p.tot_len < (IP_LEN + size_of::<IcmpHdr>()) as u16 {
        return Err(Counter::DropBadTransportHeader);
    }
    Ok(ih)
}
