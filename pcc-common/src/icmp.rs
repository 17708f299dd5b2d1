//! ICMP errors the dataplane builds itself: the fixed layout and its checksum.
//!
//! An error quotes the offending packet's IPv4 header and the first 8 bytes of its payload
//! (RFC 792): enough for the sender to find its socket (ports, or an echo identifier) and, for
//! "fragmentation needed", to lower its path MTU (RFC 1191); for "administratively
//! prohibited", to fail the connection that was refused.
use crate::csum;

/// Bytes quoted: an IPv4 header without options and 8 bytes of transport header.
pub const QUOTE_LEN: usize = 28;
/// ICMP header (type, code, checksum, 4 bytes of "rest") plus the quote.
pub const ICMP_ERROR_LEN: usize = 8 + QUOTE_LEN;

pub const ICMP_DEST_UNREACH: u8 = 3;
/// Destination unreachable: fragmentation needed and DF set (RFC 792, RFC 1191).
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// Destination unreachable: communication administratively prohibited (RFC 1812 5.2.7.1),
/// what a NAT that refuses a new mapping sends (RFC 5508 REQ-8).
pub const ICMP_ADMIN_PROHIBITED: u8 = 13;

/// The checksum of an ICMP error with `kind`, `code`, the 4 "rest" bytes (for fragmentation
/// needed: 2 unused, then the next-hop MTU) and the quote as its 16-bit words in memory order
/// (read straight from the packet: the sum does not depend on byte order when read and
/// written alike).
#[inline(always)]
pub fn error_checksum(kind: u8, code: u8, rest: [u8; 4], quote: &[u16; QUOTE_LEN / 2]) -> u16 {
    let mut sum = u32::from(u16::from_ne_bytes([kind, code]))
        + u32::from(u16::from_ne_bytes([rest[0], rest[1]]))
        + u32::from(u16::from_ne_bytes([rest[2], rest[3]]));
    let mut i = 0;
    while i < QUOTE_LEN / 2 {
        sum += u32::from(quote[i]);
        i += 1;
    }
    !csum::fold(sum)
}

/// The checksum of a 20-byte IPv4 header given as its ten 16-bit words in memory order, with
/// the checksum word 0.
#[inline(always)]
pub fn ipv4_header_checksum(words: &[u16; 10]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 {
        sum += u32::from(words[i]);
        i += 1;
    }
    !csum::fold(sum)
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::csum;

    #[test]
    fn error_checksum_matches_a_full_computation() {
        let quote: [u8; QUOTE_LEN] = core::array::from_fn(|i| (i * 37 + 5) as u8);
        let words: [u16; QUOTE_LEN / 2] =
            core::array::from_fn(|i| u16::from_ne_bytes([quote[2 * i], quote[2 * i + 1]]));
        let rest = [0, 0, 0x05, 0xd4];
        let check = error_checksum(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, rest, &words);
        let mut msg = vec![ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED];
        msg.extend_from_slice(&check.to_ne_bytes());
        msg.extend_from_slice(&rest);
        msg.extend_from_slice(&quote);
        assert_eq!(csum::checksum(&msg), 0);
    }

    #[test]
    fn header_checksum_matches_a_full_computation() {
        let mut hdr = [
            0x45u8, 0xc0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0, 198, 19, 10, 1, 198, 19, 10, 11,
        ];
        let words: [u16; 10] =
            core::array::from_fn(|i| u16::from_ne_bytes([hdr[2 * i], hdr[2 * i + 1]]));
        let check = ipv4_header_checksum(&words);
        hdr[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(csum::checksum(&hdr), 0);
    }
}
