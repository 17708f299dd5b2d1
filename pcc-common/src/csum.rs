//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! The one's-complement sum does not depend on byte order as long as every word is read the
//! same way, so the dataplane passes fields exactly as loaded from the packet (network order
//! in memory) and stores the result back the same way: no byte swaps on the fast path.

/// A one's-complement sum of 16-bit words folded to 16 bits (end-around carries).
#[inline(always)]
pub(crate) fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Whether a 20-byte IPv4 header, read as five 32-bit words, sums to 0xffff with its checksum
/// (RFC 1071), as the kernel's `ip_rcv_core` checks it. Summing 32-bit words and folding gives
/// the same one's-complement sum as ten 16-bit words (RFC 1071 section 2(B)) in half the
/// instructions: the dataplane does this for every packet.
#[inline(always)]
pub fn ipv4_header_ok(words: &[u32; 5]) -> bool {
    let mut sum = 0u64;
    for w in words {
        sum += u64::from(*w);
    }
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    fold(sum as u32) == 0xffff
}

/// Checksum after one 16-bit word of the covered data changes from `old` to `new`:
/// RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`, which never produces the -0 of eqn. 2.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// Checksum after one 32-bit field (an IPv4 address) changes from `old` to `new`.
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!check)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!old as u16)
        + (new >> 16)
        + (new & 0xffff);
    !fold(sum)
}

/// A UDP checksum of 0 means "none" (RFC 768): it stays 0, and a computed 0 is sent as
/// 0xffff.
#[inline(always)]
pub fn udp_replace4(check: u16, old: u32, new: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace4(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

#[inline(always)]
pub fn udp_replace2(check: u16, old: u16, new: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace2(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// One's-complement sum of `data` as big-endian words (odd tail padded with zero), not
/// complemented. Host-side helper for building and verifying packets.
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// The Internet checksum of `data` (big-endian value, as written into a header).
pub fn checksum(data: &[u8]) -> u16 {
    !(sum(data, 0) as u16)
}

/// TCP/UDP checksum over the IPv4 pseudo-header and `segment` (whose checksum field must be
/// zero). Returns the big-endian value to write; a UDP caller maps 0 to 0xffff.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    !(sum(segment, sum(&pseudo, 0)) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_check_accepts_valid_headers_only() {
        let mut hdr = [
            0x45u8, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 198, 19, 10, 11, 203, 0, 113, 10,
        ];
        let c = checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let words = |h: &[u8; 20]| -> [u32; 5] {
            core::array::from_fn(|i| u32::from_ne_bytes(h[4 * i..4 * i + 4].try_into().unwrap()))
        };
        assert!(ipv4_header_ok(&words(&hdr)));
        for byte in 0..20 {
            let mut damaged = hdr;
            damaged[byte] ^= 0x10;
            assert!(!ipv4_header_ok(&words(&damaged)), "byte {byte} damaged");
        }
    }
    use proptest::prelude::*;

    fn word(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }
    fn dword(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    fn with_checksum(mut data: Vec<u8>, at: usize) -> Vec<u8> {
        data[at] = 0;
        data[at + 1] = 0;
        let c = checksum(&data);
        data[at..at + 2].copy_from_slice(&c.to_be_bytes());
        data
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data, 0), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_zero_result_becomes_ffff() {
        assert_eq!(udp_replace4(0, 1, 2), 0);
        assert_eq!(udp_replace2(0, 1, 2), 0);
        // Find an update whose plain result is 0 and check it is sent as 0xffff.
        let old = 0x1234u16;
        let check = 0x0001u16;
        let new = (0..=u16::MAX).find(|&n| replace2(check, old, n) == 0);
        if let Some(new) = new {
            assert_eq!(udp_replace2(check, old, new), 0xffff);
        }
    }

    proptest! {
        /// Incremental updates of a 16- and a 32-bit field agree with recomputing the whole
        /// checksum, wherever the field sits (even offsets, as in every header we touch).
        #[test]
        fn incremental_matches_full(
            mut data in proptest::collection::vec(any::<u8>(), 24..120),
            at16 in 0usize..10, at32 in 0usize..10, new16: u16, new32: u32,
        ) {
            let len = data.len() & !1;
            data.truncate(len);
            let csum_at = len - 2;
            let (at16, at32) = (2 * at16, 2 * at32 + 2 * 10);
            prop_assume!(at32 + 4 <= csum_at);
            let data = with_checksum(data, csum_at);
            let old_check = word(&data, csum_at);

            let mut d = data.clone();
            let old = word(&d, at16);
            d[at16..at16 + 2].copy_from_slice(&new16.to_ne_bytes());
            let inc = replace2(old_check, old, new16);
            // Valid when the sum over everything, checksum included, is all ones.
            let mut x = d.clone();
            x[csum_at..csum_at + 2].copy_from_slice(&inc.to_ne_bytes());
            prop_assert_eq!(sum(&x, 0), 0xffff);
            // And it equals the recomputed one (0x0000 and 0xffff are the same number).
            let full = word(&with_checksum(d, csum_at), csum_at);
            prop_assert!(inc == full || inc ^ full == 0xffff);

            let mut d = data.clone();
            let old = dword(&d, at32);
            d[at32..at32 + 4].copy_from_slice(&new32.to_ne_bytes());
            let inc = replace4(old_check, old, new32);
            let mut x = d.clone();
            x[csum_at..csum_at + 2].copy_from_slice(&inc.to_ne_bytes());
            prop_assert_eq!(sum(&x, 0), 0xffff);
        }

        /// A TCP segment's checksum stays valid when the source address and port are
        /// rewritten incrementally, as the NAT does.
        #[test]
        fn nat_rewrite_keeps_l4_checksum_valid(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            src: [u8; 4], dst: [u8; 4], nat: [u8; 4], sport: u16, nat_port: u16,
        ) {
            let mut seg = vec![0u8; 20];
            seg[0..2].copy_from_slice(&sport.to_be_bytes());
            seg[2..4].copy_from_slice(&443u16.to_be_bytes());
            seg[12] = 5 << 4;
            seg.extend_from_slice(&payload);
            let c = l4_checksum(src, dst, 6, &seg);
            seg[16..18].copy_from_slice(&c.to_be_bytes());

            let mut check = word(&seg, 16);
            check = replace4(check, u32::from_ne_bytes(src), u32::from_ne_bytes(nat));
            check = replace2(check, word(&seg, 0), nat_port.to_be());
            seg[0..2].copy_from_slice(&nat_port.to_be_bytes());
            seg[16..18].copy_from_slice(&check.to_ne_bytes());
            // Valid when the sum over pseudo-header and segment is all ones.
            let mut pseudo = [0u8; 12];
            pseudo[..4].copy_from_slice(&nat);
            pseudo[4..8].copy_from_slice(&dst);
            pseudo[9] = 6;
            pseudo[10..12].copy_from_slice(&(seg.len() as u16).to_be_bytes());
            prop_assert_eq!(sum(&seg, sum(&pseudo, 0)), 0xffff);
        }
    }
}
