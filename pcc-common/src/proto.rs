//! IP protocol numbers and TCP header flags as they are on the wire: the one definition the
//! dataplane, the controller and the tests share. (Conntrack keeps its own, smaller set of
//! flag bits, `CT_TCP_*`, for the flags it has seen.)

/// IPv4 protocol numbers (IANA; Linux's `IPPROTO_*`).
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// TCP header flags (RFC 9293 section 3.1), in the header's flags byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
