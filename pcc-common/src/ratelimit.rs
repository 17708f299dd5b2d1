//! A token bucket for the ICMP errors the dataplane sends of its own accord, so a scanning
//! host cannot make the router answer every one of its refused connections.
//!
//! The kernel limits its own ICMP errors twice: globally to `net.ipv4.icmp_msgs_per_sec`
//! (1000) with a burst of `net.ipv4.icmp_msgs_burst` (50), and per destination to one per
//! `net.ipv4.icmp_ratelimit` (1000 ms) with a burst of 6 (`icmp_global_allow`,
//! `inet_peer_xrlim_allow`). pcc takes the global numbers for each CPU's own bucket: a bucket
//! shared by every CPU would need an atomic on a cache line all of them write.

/// One answer per millisecond: the kernel's `icmp_msgs_per_sec` (1000), per CPU.
pub const ICMP_ANSWER_INTERVAL_NS: u64 = 1_000_000;
/// Answers sent back to back after a quiet spell: the kernel's `icmp_msgs_burst` (50).
pub const ICMP_ANSWER_BURST: u64 = 50;

/// Credit, counted in nanoseconds of the refill clock as the kernel's `xrlim_allow` counts it
/// in jiffies: time adds to it up to `burst` answers' worth, each answer takes `interval`.
/// The all-zero value (a fresh map slot) is a full bucket at the first call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub credit_ns: u64,
    /// The clock (`bpf_ktime_get_ns`) at the last call.
    pub last_ns: u64,
}

impl TokenBucket {
    /// Whether one more answer may go out at `now_ns`; takes its cost if so. A clock that
    /// reads earlier than the last call adds nothing (it never does on one CPU).
    #[inline(always)]
    pub fn allow(&mut self, now_ns: u64, interval_ns: u64, burst: u64) -> bool {
        let Self { credit_ns, last_ns } = self;
        let cap = interval_ns.saturating_mul(burst);
        let credit = credit_ns.saturating_add(now_ns.saturating_sub(*last_ns));
        let credit = if credit > cap { cap } else { credit };
        if now_ns > *last_ns {
            *last_ns = now_ns;
        }
        if credit >= interval_ns {
            *credit_ns = credit - interval_ns;
            true
        } else {
            *credit_ns = credit;
            false
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MS: u64 = 1_000_000;

    fn allow(b: &mut TokenBucket, now: u64) -> bool {
        b.allow(now, ICMP_ANSWER_INTERVAL_NS, ICMP_ANSWER_BURST)
    }

    #[test]
    fn a_fresh_bucket_gives_the_burst_then_one_an_interval() {
        let mut b = TokenBucket::default();
        let t0 = 5_000 * MS;
        let sent = (0..200).filter(|_| allow(&mut b, t0)).count();
        assert_eq!(sent as u64, ICMP_ANSWER_BURST);
        assert!(
            !allow(&mut b, t0 + MS / 2),
            "half an interval is not enough"
        );
        assert!(allow(&mut b, t0 + MS), "one interval later: one more");
        assert!(!allow(&mut b, t0 + MS));
        // A quiet second refills the burst, never more.
        let t1 = t0 + 1_000 * MS;
        let sent = (0..200).filter(|_| allow(&mut b, t1)).count();
        assert_eq!(sent as u64, ICMP_ANSWER_BURST);
    }

    #[test]
    fn a_clock_going_back_adds_nothing() {
        let mut b = TokenBucket::default();
        let t0 = 10_000 * MS;
        while allow(&mut b, t0) {}
        assert!(!allow(&mut b, t0 - 500 * MS));
        assert!(
            !allow(&mut b, t0 + MS / 2),
            "the earlier reading did not move the clock"
        );
        assert!(allow(&mut b, t0 + MS));
    }

    proptest! {
        /// Over any run of calls, no more answers go out than the burst plus one an interval
        /// elapsed, and calls spaced by at least an interval are always answered.
        #[test]
        fn never_more_than_the_burst_plus_the_rate(
            start in 0u64..1u64 << 50,
            gaps in proptest::collection::vec(0u64..3 * MS, 1..2000),
        ) {
            let mut b = TokenBucket::default();
            let mut now = start;
            let mut sent = 0u64;
            for gap in &gaps {
                now += gap;
                let spaced = *gap >= ICMP_ANSWER_INTERVAL_NS;
                let ok = allow(&mut b, now);
                prop_assert!(ok || !spaced, "an interval's gap always brings an answer");
                sent += u64::from(ok);
            }
            let elapsed = now - start;
            prop_assert!(sent <= ICMP_ANSWER_BURST + elapsed / ICMP_ANSWER_INTERVAL_NS);
            prop_assert!(b.credit_ns <= ICMP_ANSWER_INTERVAL_NS * ICMP_ANSWER_BURST);
        }
    }
}
