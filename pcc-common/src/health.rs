//! Gateway health from ICMP probes: RTT, jitter, loss and an up/down state with hysteresis.
//!
//! Pure and clocked by the caller (milliseconds on any monotonic clock), so the failure
//! detector's behaviour — how fast it sees a dead line, how rarely a lossy one flaps — is
//! tested here on simulated hours of traffic.
use std::collections::VecDeque;

/// Probe settings. The defaults detect a dead line in ~0.6 s and keep a line with 20 %
/// random loss up for thousands of hours (see README, "Health checking").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeParams {
    /// Time between probes to one target.
    pub interval_ms: u64,
    /// Down after this many probes in a row went out with no reply arriving.
    pub down_after: u32,
    /// Up again after this many answered probes in a row.
    pub up_after: u32,
    /// Loss, RTT and jitter are measured over this window.
    pub window_ms: u64,
    /// A reply later than this counts as lost for the loss ratio.
    pub reply_timeout_ms: u64,
    /// Optional: a target whose loss over the window exceeds this (0..1) is taken out.
    pub max_loss: Option<f64>,
    /// Optional: a target whose smoothed RTT exceeds this is taken out.
    pub max_rtt_ms: Option<f64>,
}

impl ProbeParams {
    pub const DEFAULT: Self = Self {
        interval_ms: 50,
        down_after: 12,
        up_after: 20,
        window_ms: 10_000,
        reply_timeout_ms: 1_000,
        max_loss: None,
        max_rtt_ms: None,
    };
}

impl Default for ProbeParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A threshold-based exit is only lifted below this fraction of the threshold, so a line
/// hovering at the limit does not flap.
const THRESHOLD_HYSTERESIS: f64 = 0.8;

#[derive(Clone, Copy, Debug)]
struct Probe {
    seq: u16,
    sent_ms: u64,
    rtt_ms: Option<f64>,
}

/// Why a target is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownReason {
    NoReplies,
    /// The link under the target went away (carrier, address, interface).
    LinkDown,
    Loss,
    Latency,
}

impl DownReason {
    pub fn describe(self) -> &'static str {
        match self {
            DownReason::NoReplies => "no replies",
            DownReason::LinkDown => "link down",
            DownReason::Loss => "loss over threshold",
            DownReason::Latency => "latency over threshold",
        }
    }
}

/// One probe target's health.
#[derive(Clone, Debug)]
pub struct TargetHealth {
    params: ProbeParams,
    probes: VecDeque<Probe>,
    /// Probes sent since the last reply arrived.
    unanswered: u32,
    down: Option<DownReason>,
    /// When the target last went down: only probes sent after it can bring it back.
    down_at_ms: u64,
    pub rtt_last_ms: Option<f64>,
    /// RFC 6298 smoothed RTT (alpha 1/8).
    pub srtt_ms: Option<f64>,
    /// RFC 3550 interarrival jitter of the RTT (gain 1/16).
    pub jitter_ms: f64,
    pub state_changes: u64,
}

impl TargetHealth {
    /// Starts up: a line is trusted until its probes say otherwise.
    pub fn new(params: ProbeParams) -> Self {
        Self {
            params,
            probes: VecDeque::new(),
            unanswered: 0,
            down: None,
            down_at_ms: 0,
            rtt_last_ms: None,
            srtt_ms: None,
            jitter_ms: 0.0,
            state_changes: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.down.is_none()
    }

    pub fn down_reason(&self) -> Option<DownReason> {
        self.down
    }

    /// The link went down under the target: it counts as down until `up_after` probes in a row
    /// are answered again, so a flapping carrier cannot flap the WAN faster than that.
    pub fn force_down(&mut self, now_ms: u64) {
        if self.is_up() {
            self.state_changes += 1;
        }
        self.down = Some(DownReason::LinkDown);
        self.down_at_ms = now_ms;
    }

    /// A probe went out. Returns whether the up/down state changed.
    pub fn on_sent(&mut self, seq: u16, now_ms: u64) -> bool {
        self.probes.push_back(Probe {
            seq,
            sent_ms: now_ms,
            rtt_ms: None,
        });
        self.expire(now_ms);
        self.unanswered += 1;
        self.evaluate(now_ms)
    }

    /// A reply to probe `seq` arrived after `rtt_ms`. Returns whether the state changed.
    pub fn on_reply(&mut self, seq: u16, rtt_ms: f64, now_ms: u64) -> bool {
        let Some(p) = self
            .probes
            .iter_mut()
            .rev()
            .find(|p| p.seq == seq && p.rtt_ms.is_none())
        else {
            return false;
        };
        if rtt_ms > self.params.reply_timeout_ms as f64 {
            return false;
        }
        p.rtt_ms = Some(rtt_ms);
        if let Some(last) = self.rtt_last_ms {
            self.jitter_ms += ((rtt_ms - last).abs() - self.jitter_ms) / 16.0;
        }
        self.rtt_last_ms = Some(rtt_ms);
        self.srtt_ms = Some(match self.srtt_ms {
            Some(s) => s + (rtt_ms - s) / 8.0,
            None => rtt_ms,
        });
        self.unanswered = 0;
        self.expire(now_ms);
        self.evaluate(now_ms)
    }

    /// Probes are kept for the loss window and for as long as a run of `up_after` answers
    /// takes: with slow probes (`1000 ms × 20`) that run is longer than the window, and a
    /// pruned run could never bring the target back.
    fn expire(&mut self, now_ms: u64) {
        let p = self.params;
        let run_ms = u64::from(p.up_after) * p.interval_ms;
        let horizon = p.window_ms.max(run_ms) + p.reply_timeout_ms;
        while self
            .probes
            .front()
            .is_some_and(|p| now_ms.saturating_sub(p.sent_ms) > horizon)
        {
            self.probes.pop_front();
        }
    }

    /// Loss over the window: probes old enough to have been answered, that were not.
    pub fn loss_ratio(&self, now_ms: u64) -> f64 {
        let timeout = self.params.reply_timeout_ms;
        let (mut sent, mut lost) = (0u32, 0u32);
        for p in &self.probes {
            let age = now_ms.saturating_sub(p.sent_ms);
            if age >= timeout && age <= timeout + self.params.window_ms {
                sent += 1;
                if p.rtt_ms.is_none() {
                    lost += 1;
                }
            }
        }
        if sent == 0 {
            0.0
        } else {
            f64::from(lost) / f64::from(sent)
        }
    }

    /// Answered probes in a row since the target went down, newest first, skipping those
    /// still in flight (a slow line has several out at once; only a probe past the reply
    /// timeout breaks the streak).
    fn answered_streak(&self, now_ms: u64) -> u32 {
        let mut n = 0;
        for p in self
            .probes
            .iter()
            .rev()
            .take_while(|p| p.sent_ms > self.down_at_ms)
        {
            match p.rtt_ms {
                Some(_) => n += 1,
                None if now_ms.saturating_sub(p.sent_ms) < self.params.reply_timeout_ms => {}
                None => break,
            }
        }
        n
    }

    fn evaluate(&mut self, now: u64) -> bool {
        let loss = self.loss_ratio(now);
        let p = self.params;
        let over_loss = |factor: f64| p.max_loss.is_some_and(|m| loss > m * factor);
        let over_rtt = |factor: f64| {
            p.max_rtt_ms
                .is_some_and(|m| self.srtt_ms.is_some_and(|s| s > m * factor))
        };
        let was_up = self.is_up();
        if was_up {
            if self.unanswered >= p.down_after {
                self.down = Some(DownReason::NoReplies);
            } else if over_loss(1.0) {
                self.down = Some(DownReason::Loss);
            } else if over_rtt(1.0) {
                self.down = Some(DownReason::Latency);
            }
        } else if self.answered_streak(now) >= p.up_after
            && !over_loss(THRESHOLD_HYSTERESIS)
            && !over_rtt(THRESHOLD_HYSTERESIS)
        {
            self.down = None;
        }
        let changed = was_up != self.is_up();
        if changed {
            self.state_changes += 1;
            if !self.is_up() {
                self.down_at_ms = now;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a target with probes every interval; `reply(i)` gives the RTT of probe i or
    /// None if it is lost. Returns (time of each state change, final health).
    fn simulate(
        params: ProbeParams,
        probes: u64,
        mut reply: impl FnMut(u64) -> Option<f64>,
    ) -> (Vec<(u64, bool)>, TargetHealth) {
        let mut t = TargetHealth::new(params);
        let mut changes = Vec::new();
        let mut pending: Vec<(u64, u16, f64)> = Vec::new(); // (arrival, seq, rtt)
        for i in 0..probes {
            let now = i * params.interval_ms;
            pending.sort_by_key(|p| p.0);
            while pending.first().is_some_and(|p| p.0 <= now) {
                let (at, seq, rtt) = pending.remove(0);
                if t.on_reply(seq, rtt, at) {
                    changes.push((at, t.is_up()));
                }
            }
            let seq = i as u16;
            if t.on_sent(seq, now) {
                changes.push((now, t.is_up()));
            }
            if let Some(rtt) = reply(i) {
                pending.push((now + rtt as u64, seq, rtt));
            }
        }
        (changes, t)
    }

    /// xorshift: a fixed, fast pseudo-random sequence.
    fn rng(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn a_dead_line_goes_down_in_well_under_a_second_and_comes_back() {
        let p = ProbeParams::default();
        // Alive 10 s, dead 5 s, alive again.
        let (changes, t) = simulate(p, 400, |i| {
            if (200..300).contains(&i) {
                None
            } else {
                Some(20.0)
            }
        });
        assert_eq!(changes.len(), 2, "{changes:?}");
        let (down_at, up) = changes[0];
        assert!(!up);
        let detect = down_at - 200 * p.interval_ms;
        assert!(detect <= 650, "down {detect} ms after the line died");
        let (up_at, up) = changes[1];
        assert!(up);
        let recover = up_at - 300 * p.interval_ms;
        assert!(
            (900..=1100).contains(&recover),
            "up {recover} ms after the line came back"
        );
        assert!(t.is_up());
        assert_eq!(t.state_changes, 2);
    }

    /// The flap test behind the defaults: 20 % random loss for 10 simulated hours, RTT with
    /// jitter, never declared down.
    #[test]
    fn twenty_percent_loss_does_not_flap_for_hours() {
        let p = ProbeParams::default();
        let hours = 10;
        let probes = hours * 3600 * 1000 / p.interval_ms;
        let mut r = rng(0x5eed);
        let (changes, t) = simulate(p, probes, |_| {
            let lost = r() < 0.20;
            (!lost).then(|| 15.0 + 30.0 * r())
        });
        assert!(
            changes.is_empty(),
            "flapped: {:?}",
            &changes[..changes.len().min(4)]
        );
        let loss = t.loss_ratio(probes * p.interval_ms);
        assert!((0.12..0.28).contains(&loss), "loss seen {loss}");
    }

    /// Bufferbloat: RTT rising to 400 ms under load is slow, not dead; and a slow line that
    /// was down comes back although several probes are always in flight.
    #[test]
    fn high_but_steady_latency_is_not_a_failure() {
        let (changes, t) = simulate(ProbeParams::default(), 2000, |i| {
            Some(20.0 + (i as f64).min(380.0))
        });
        assert!(changes.is_empty(), "{changes:?}");
        assert!(t.srtt_ms.unwrap() > 300.0);
        let (changes, t) = simulate(ProbeParams::default(), 600, |i| {
            (!(100..200).contains(&i)).then_some(400.0)
        });
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(t.is_up());
    }

    #[test]
    fn a_link_blip_needs_a_full_run_of_replies_to_come_back() {
        let mut t = TargetHealth::new(ProbeParams::default());
        for i in 0..10u16 {
            t.on_sent(i, u64::from(i) * 50);
            t.on_reply(i, 1.0, u64::from(i) * 50 + 1);
        }
        t.force_down(490);
        assert_eq!(t.down_reason(), Some(DownReason::LinkDown));
        for i in 10..29u16 {
            t.on_sent(i, u64::from(i) * 50);
            t.on_reply(i, 1.0, u64::from(i) * 50 + 1);
        }
        assert!(!t.is_up(), "19 replies are not enough");
        t.on_sent(29, 29 * 50);
        assert!(t.on_reply(29, 1.0, 29 * 50 + 1), "the 20th brings it back");
        assert_eq!(t.state_changes, 2);
    }

    /// Every combination of the settings must be able to come back, also when a run of
    /// `up_after` probes lasts longer than the loss window.
    #[test]
    fn slow_probes_with_a_long_run_to_come_back_still_recover() {
        for (interval_ms, up_after, window_ms) in
            [(1000, 20, 10_000), (500, 30, 10_000), (50, 50, 1_000)]
        {
            let p = ProbeParams {
                interval_ms,
                down_after: 3,
                up_after,
                window_ms,
                ..ProbeParams::default()
            };
            let dead = 10..20;
            let (changes, t) = simulate(p, 20 + u64::from(up_after) + 5, |i| {
                (!dead.contains(&i)).then_some(20.0)
            });
            assert_eq!(changes.len(), 2, "{p:?}: {changes:?}");
            assert!(t.is_up(), "{p:?} never came back");
            let up_at = changes[1].0;
            assert_eq!(
                up_at,
                (20 + u64::from(up_after) - 1) * interval_ms + 20,
                "{p:?}: up at the reply to the {up_after}th probe after the line returned"
            );
        }
    }

    #[test]
    fn rtt_and_jitter_follow_rfc_6298_and_3550() {
        let mut t = TargetHealth::new(ProbeParams::default());
        for (i, rtt) in [10.0, 30.0, 10.0, 30.0].into_iter().enumerate() {
            t.on_sent(i as u16, i as u64 * 50);
            t.on_reply(i as u16, rtt, i as u64 * 50 + 5);
        }
        assert_eq!(t.rtt_last_ms, Some(30.0));
        // srtt: 10 -> 12.5 -> 12.1875 -> 14.4140625
        assert!((t.srtt_ms.unwrap() - 14.414_062_5).abs() < 1e-9);
        // jitter: 0 -> 1.25 -> 2.421875 -> 3.52050781
        assert!((t.jitter_ms - 3.520_507_812_5).abs() < 1e-9);
        // A duplicate or unknown reply changes nothing.
        assert!(!t.on_reply(3, 99.0, 200));
        assert_eq!(t.rtt_last_ms, Some(30.0));
    }

    #[test]
    fn loss_and_latency_thresholds_take_a_line_out_and_back_with_hysteresis() {
        let p = ProbeParams {
            max_loss: Some(0.3),
            ..ProbeParams::default()
        };
        // 50 % loss for 20 s, then clean.
        let (changes, _) = simulate(p, 1200, |i| {
            if i < 400 && i % 2 == 0 {
                None
            } else {
                Some(20.0)
            }
        });
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(!changes[0].1 && changes[1].1);
        let p = ProbeParams {
            max_rtt_ms: Some(200.0),
            ..ProbeParams::default()
        };
        let (changes, t) = simulate(p, 400, |i| Some(if i < 200 { 20.0 } else { 300.0 }));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(t.down_reason(), Some(DownReason::Latency));
    }

    #[test]
    fn loss_ratio_counts_only_probes_old_enough() {
        let p = ProbeParams::default();
        let (_, t) = simulate(p, 400, |i| (i % 4 != 0).then_some(20.0));
        let loss = t.loss_ratio(400 * p.interval_ms);
        assert!((loss - 0.25).abs() < 0.02, "{loss}");
    }
}
