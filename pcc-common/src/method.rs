//! How a new connection's WAN is chosen (`--method`); every method keeps a connection on its
//! WAN for its whole life (the conntrack entry pins it).

/// Balancing methods.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Method {
    /// MikroTik's per-connection classifier: a hash of the classifier's fields picks a slot
    /// of the weighted table, so the same fields always give the same WAN.
    #[default]
    Pcc = 0,
    /// MikroTik's `nth`: new connections go to the WANs in turn, weights as repeats.
    Nth = 1,
    /// The kernel's layer-4 multipath hash (`fib_multipath_hash_policy=1`): the 5-tuple,
    /// protocol included, whatever `--classifier` says.
    Ecmp = 2,
    /// New connections follow spare capacity: the controller sets the slot-table weights from
    /// each line's configured rate minus its measured throughput, once a second.
    LeastLoaded = 3,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::Pcc, Method::Nth, Method::Ecmp, Method::LeastLoaded];

    pub const fn from_u8(v: u8) -> Method {
        match v {
            1 => Method::Nth,
            2 => Method::Ecmp,
            3 => Method::LeastLoaded,
            _ => Method::Pcc,
        }
    }

    /// As taken by `--method`.
    pub const fn name(self) -> &'static str {
        match self {
            Method::Pcc => "pcc",
            Method::Nth => "nth",
            Method::Ecmp => "ecmp",
            Method::LeastLoaded => "least-loaded",
        }
    }

    pub fn from_name(name: &str) -> Option<Method> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

#[cfg(feature = "std")]
/// Weights for `least-loaded`: each WAN's spare capacity (configured rate minus measured
/// throughput, bits per second), at least 5 % of its rate so a busy line still takes a share
/// and the table never empties, scaled to integers 1..=1000. WANs without a rate (0) or down
/// get weight 0.
pub fn spare_weights<const N: usize>(
    rates: &[u64; N],
    used: &[u64; N],
    up: &[bool; N],
) -> [u32; N] {
    let mut spare = [0f64; N];
    for i in 0..N {
        if up[i] && rates[i] > 0 {
            let floor = rates[i] as f64 * 0.05;
            spare[i] = (rates[i] as f64 - used[i] as f64).max(floor);
        }
    }
    let max = spare.iter().copied().fold(0.0, f64::max);
    let mut w = [0u32; N];
    if max > 0.0 {
        for i in 0..N {
            if spare[i] > 0.0 {
                w[i] = ((spare[i] / max * 1000.0).round() as u32).max(1);
            }
        }
    }
    w
}

#[cfg(feature = "std")]
/// Smooth weighted round-robin (nginx's): the order `nth` hands WANs out in, spread evenly
/// (2:1 gives a, b, a, a, b, a, … not a, a, b), written into `out` slot after slot.
pub fn round_robin_order(weights: &[u32], out: &mut [u8], none: u8) {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = [0i64; 16];
    for slot in out.iter_mut() {
        if total == 0 {
            *slot = none;
            continue;
        }
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate().take(16) {
            current[i] += i64::from(w);
            if current[i] > current[best] || weights[best] == 0 {
                best = i;
            }
        }
        current[best] -= total;
        *slot = best as u8;
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::from_name(m.name()), Some(m));
            assert_eq!(Method::from_u8(m as u8), m);
        }
    }

    #[test]
    fn spare_capacity_sets_weights() {
        // 20 and 10 Mbit/s lines, idle: 2:1.
        let w = spare_weights(&[20_000_000, 10_000_000], &[0, 0], &[true, true]);
        assert_eq!(w, [1000, 500]);
        // The fast line is full: the slow one takes most, the full one keeps 5 %.
        let w = spare_weights(
            &[20_000_000, 10_000_000],
            &[25_000_000, 2_000_000],
            &[true, true],
        );
        assert_eq!(w, [125, 1000]);
        // Down or without a rate: nothing.
        let w = spare_weights(&[20_000_000, 0], &[0, 0], &[false, true]);
        assert_eq!(w, [0, 0]);
    }

    #[test]
    fn round_robin_is_smooth_and_weighted() {
        let mut out = [0u8; 9];
        round_robin_order(&[2, 1], &mut out, 0xff);
        assert_eq!(out, [0, 1, 0, 0, 1, 0, 0, 1, 0]);
        let mut out = [0u8; 4];
        round_robin_order(&[0, 3, 0, 1], &mut out, 0xff);
        assert_eq!(out, [1, 1, 3, 1]);
        round_robin_order(&[0, 0], &mut out, 0xff);
        assert_eq!(out, [0xff; 4]);
    }
}
