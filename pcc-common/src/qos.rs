//! QoS figures as network studies publish them: throughput, packet loss, delay and jitter,
//! each with its TIPHON category (ETSI TIPHON, as used by the PCC load-balancing studies):
//!
//! | category | index | throughput (of capacity) | packet loss | delay | jitter |
//! | --- | --- | --- | --- | --- | --- |
//! | very good | 4 | >= 100 % | 0-2 % | < 150 ms | 0 ms |
//! | good | 3 | >= 75 % | 3-14 % | 150-300 ms | 0-75 ms |
//! | fair | 2 | >= 50 % | 15-24 % | 300-450 ms | 75-125 ms |
//! | poor | 1 | < 50 % | >= 25 % | > 450 ms | 125-225 ms (and worse) |
//!
//! Boundaries between the table's integer steps go to the better category (2.5 % loss is
//! "good", as the next step up is 3 %). Jitter "0 ms" is read as under 1 ms.

/// A TIPHON category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tiphon {
    Poor = 1,
    Fair = 2,
    Good = 3,
    VeryGood = 4,
}

impl Tiphon {
    pub fn name(self) -> &'static str {
        match self {
            Tiphon::VeryGood => "very good",
            Tiphon::Good => "good",
            Tiphon::Fair => "fair",
            Tiphon::Poor => "poor",
        }
    }

    pub fn index(self) -> u8 {
        self as u8
    }

    /// Throughput as a fraction of the capacity it is measured against.
    pub fn throughput(ratio: f64) -> Tiphon {
        match ratio {
            r if r >= 0.995 => Tiphon::VeryGood,
            r if r >= 0.75 => Tiphon::Good,
            r if r >= 0.50 => Tiphon::Fair,
            _ => Tiphon::Poor,
        }
    }

    /// Packet loss as a fraction (0..1).
    pub fn packet_loss(loss: f64) -> Tiphon {
        match loss * 100.0 {
            p if p < 3.0 => Tiphon::VeryGood,
            p if p < 15.0 => Tiphon::Good,
            p if p < 25.0 => Tiphon::Fair,
            _ => Tiphon::Poor,
        }
    }

    /// One-way or round-trip delay in milliseconds, as the study measured it.
    pub fn delay(ms: f64) -> Tiphon {
        match ms {
            d if d < 150.0 => Tiphon::VeryGood,
            d if d <= 300.0 => Tiphon::Good,
            d if d <= 450.0 => Tiphon::Fair,
            _ => Tiphon::Poor,
        }
    }

    pub fn jitter(ms: f64) -> Tiphon {
        match ms {
            j if j < 1.0 => Tiphon::VeryGood,
            j if j <= 75.0 => Tiphon::Good,
            j if j <= 125.0 => Tiphon::Fair,
            _ => Tiphon::Poor,
        }
    }
}

/// Mean delay and RFC 3550-style jitter (mean absolute difference of successive delays) of
/// a series of round-trip times in ms; `None` entries are lost probes.
pub fn delay_and_jitter(rtts_ms: &[Option<f64>]) -> (f64, f64, f64) {
    let got: Vec<f64> = rtts_ms.iter().flatten().copied().collect();
    let loss = if rtts_ms.is_empty() {
        0.0
    } else {
        1.0 - got.len() as f64 / rtts_ms.len() as f64
    };
    if got.is_empty() {
        return (f64::NAN, f64::NAN, loss);
    }
    let delay = got.iter().sum::<f64>() / got.len() as f64;
    let jitter = if got.len() < 2 {
        0.0
    } else {
        got.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (got.len() - 1) as f64
    };
    (delay, jitter, loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_the_tiphon_table() {
        assert_eq!(Tiphon::packet_loss(0.0), Tiphon::VeryGood);
        assert_eq!(Tiphon::packet_loss(0.02), Tiphon::VeryGood);
        assert_eq!(Tiphon::packet_loss(0.03), Tiphon::Good);
        assert_eq!(Tiphon::packet_loss(0.14), Tiphon::Good);
        assert_eq!(Tiphon::packet_loss(0.15), Tiphon::Fair);
        assert_eq!(Tiphon::packet_loss(0.25), Tiphon::Poor);
        assert_eq!(Tiphon::delay(149.0), Tiphon::VeryGood);
        assert_eq!(Tiphon::delay(150.0), Tiphon::Good);
        assert_eq!(Tiphon::delay(300.0), Tiphon::Good);
        assert_eq!(Tiphon::delay(450.0), Tiphon::Fair);
        assert_eq!(Tiphon::delay(451.0), Tiphon::Poor);
        assert_eq!(Tiphon::jitter(0.5), Tiphon::VeryGood);
        assert_eq!(Tiphon::jitter(75.0), Tiphon::Good);
        assert_eq!(Tiphon::jitter(100.0), Tiphon::Fair);
        assert_eq!(Tiphon::jitter(200.0), Tiphon::Poor);
        assert_eq!(Tiphon::throughput(1.0), Tiphon::VeryGood);
        assert_eq!(Tiphon::throughput(0.8), Tiphon::Good);
        assert_eq!(Tiphon::throughput(0.5), Tiphon::Fair);
        assert_eq!(Tiphon::throughput(0.2), Tiphon::Poor);
        assert_eq!((Tiphon::VeryGood.index(), Tiphon::Poor.name()), (4, "poor"));
    }

    #[test]
    fn delay_jitter_and_loss_of_a_probe_series() {
        let (d, j, l) = delay_and_jitter(&[Some(10.0), Some(20.0), None, Some(10.0)]);
        assert!((d - 40.0 / 3.0).abs() < 1e-9);
        assert!((j - 10.0).abs() < 1e-9);
        assert!((l - 0.25).abs() < 1e-9);
        let (d, _, l) = delay_and_jitter(&[None, None]);
        assert!(d.is_nan() && l == 1.0);
    }
}
