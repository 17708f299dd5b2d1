//! TCP arithmetic the dataplane relies on: the MSS a path allows and the reset window check.

/// IPv4 (20) plus TCP (20) header bytes without options: what an MSS leaves out of the MTU
/// (RFC 879, RFC 6691).
pub const TCP_IPV4_HEADERS: u16 = 40;

/// The largest MSS a connection may announce over a path whose smallest MTU is `mtu`, as the
/// kernel's `TCPMSS --clamp-mss-to-pmtu` computes it. An MTU below the IPv4 minimum of 68
/// (RFC 791) is treated as 68.
#[inline(always)]
pub const fn mss_for_mtu(mtu: u16) -> u16 {
    let mtu = if mtu < 68 { 68 } else { mtu };
    mtu - TCP_IPV4_HEADERS
}

/// The MSS option value after clamping `announced` to `limit`: never raised.
#[inline(always)]
pub const fn clamp_mss(announced: u16, limit: u16) -> u16 {
    if announced > limit { limit } else { announced }
}

/// The receive window in bytes for a header's 16-bit `window` and the sender's `wscale`
/// (RFC 7323: shift counts above 14 are treated as 14).
#[inline(always)]
pub const fn scaled_window(window: u16, wscale: u8) -> u32 {
    let shift = if wscale > 14 { 14 } else { wscale };
    (window as u32) << shift
}

/// Whether a reset with sequence number `seq` may end a connection whose LAN host last
/// acknowledged `ack` with a receive window of `window` bytes: RFC 5961 section 3.2 accepts a
/// reset only inside [RCV.NXT, RCV.NXT + RCV.WND) (the host itself then wants it exact, and
/// challenges the rest); a blind spoof outside must not end or shorten anything. A zero
/// window still accepts the exact `ack`, as RFC 793 does.
#[inline(always)]
pub const fn rst_in_window(seq: u32, ack: u32, window: u32) -> bool {
    let offset = seq.wrapping_sub(ack);
    offset == 0 || offset < window
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mss_follows_the_mtu() {
        assert_eq!(mss_for_mtu(1500), 1460);
        assert_eq!(mss_for_mtu(1492), 1452, "PPPoE");
        assert_eq!(mss_for_mtu(1400), 1360);
        assert_eq!(mss_for_mtu(0), 28, "nonsense MTUs stay above zero");
        assert_eq!(clamp_mss(1460, 1452), 1452);
        assert_eq!(clamp_mss(1200, 1452), 1200, "a smaller MSS is kept");
    }

    #[test]
    fn window_scale_is_capped_at_14() {
        assert_eq!(scaled_window(1000, 0), 1000);
        assert_eq!(scaled_window(1000, 7), 128_000);
        assert_eq!(scaled_window(0xffff, 20), 0xffff << 14);
    }

    #[test]
    fn resets_count_only_inside_the_window() {
        let ack = 1_000_000;
        assert!(rst_in_window(ack, ack, 65_535), "exact");
        assert!(
            rst_in_window(ack + 65_534, ack, 65_535),
            "last byte of the window"
        );
        assert!(!rst_in_window(ack + 65_535, ack, 65_535), "just past it");
        assert!(!rst_in_window(ack - 1, ack, 65_535), "just before it");
        assert!(
            !rst_in_window(ack.wrapping_add(1 << 31), ack, 65_535),
            "far away"
        );
        assert!(
            rst_in_window(ack, ack, 0),
            "zero window: the exact number only"
        );
        assert!(!rst_in_window(ack + 1, ack, 0));
        let wrap = u32::MAX - 10;
        assert!(
            rst_in_window(20, wrap, 100),
            "across the sequence space wrap"
        );
    }
}
