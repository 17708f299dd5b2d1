//! Probing every WAN: ICMP echo out of that WAN only, to its gateway or configured targets.
//!
//! Uses `surge-ping` (maintained async ICMP on tokio) over a raw socket bound to the WAN
//! (SO_BINDTODEVICE) and to the WAN's address, so a probe can never leave by another WAN
//! and a dead line cannot be masked by a live one. The echo identifier lies below the NAT port
//! range, which no mapping has, and the TC egress hook records the probes as the router's own,
//! so a LAN host's ping translated by the dataplane can never be mistaken for a probe reply or
//! steal one.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use pcc_common::health::{ProbeParams, TargetHealth};
use surge_ping::{Client, Config, ICMP, PingIdentifier, PingSequence};
use tokio::sync::mpsc::UnboundedSender;

use crate::sync::lock;

/// 56 bytes of payload: 64-byte ICMP messages, like ping's default.
const PAYLOAD: [u8; 56] = [0; 56];

pub struct Target {
    pub addr: Ipv4Addr,
    pub health: TargetHealth,
}

/// One WAN's probe targets.
pub struct WanHealth {
    pub targets: Vec<Target>,
    /// Targets that must be up for the WAN to be up.
    pub quorum: usize,
}

impl WanHealth {
    pub fn new(targets: &[Ipv4Addr], quorum: usize, params: ProbeParams) -> Self {
        Self {
            targets: targets
                .iter()
                .map(|&addr| Target {
                    addr,
                    health: TargetHealth::new(params),
                })
                .collect(),
            quorum: quorum.clamp(1, targets.len().max(1)),
        }
    }

    pub fn is_up(&self) -> bool {
        self.targets.iter().filter(|t| t.health.is_up()).count() >= self.quorum
    }

    /// The WAN's link went down: every target must earn its way back (`--up-after`).
    pub fn force_down(&mut self, now_ms: u64) {
        for t in &mut self.targets {
            t.health.force_down(now_ms);
        }
    }

    /// Why the WAN is down, for the log.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .targets
            .iter()
            .map(|t| match t.health.down_reason() {
                Some(r) => format!("{} {}", t.addr, r.describe()),
                None => format!("{} up", t.addr),
            })
            .collect();
        parts.join(", ")
    }

    fn mean(&self, f: impl Fn(&Target) -> Option<f64>) -> Option<f64> {
        let values: Vec<f64> = self.targets.iter().filter_map(f).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    }

    /// Smoothed RTT in seconds, averaged over targets.
    pub fn rtt_seconds(&self) -> Option<f64> {
        self.mean(|t| t.health.srtt_ms).map(|ms| ms / 1000.0)
    }

    /// The latest reply's RTT in seconds, averaged over targets.
    pub fn rtt_last_seconds(&self) -> Option<f64> {
        self.mean(|t| t.health.rtt_last_ms).map(|ms| ms / 1000.0)
    }

    pub fn jitter_seconds(&self) -> Option<f64> {
        self.mean(|t| t.health.srtt_ms.map(|_| t.health.jitter_ms))
            .map(|ms| ms / 1000.0)
    }

    pub fn loss_ratio(&self, now_ms: u64) -> f64 {
        self.mean(|t| Some(t.health.loss_ratio(now_ms)))
            .unwrap_or(0.0)
    }
}

/// Every WAN's health, indexed like the controller's WAN list; shared with the metrics.
pub type HealthTable = Arc<Mutex<Vec<WanHealth>>>;

/// The clock probe times are measured on.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Self(Instant::now())
    }
    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a WAN's probes go out.
pub struct ProbeSource {
    pub index: usize,
    pub interface: String,
    pub addr: Ipv4Addr,
    pub ident: u16,
}

/// Starts probing one WAN. Every up/down change of one of its targets is signalled on
/// `changed` (the controller then recomputes the WAN's state).
pub fn spawn(
    source: &ProbeSource,
    params: ProbeParams,
    table: HealthTable,
    clock: Clock,
    changed: UnboundedSender<()>,
) -> Result<tokio::task::JoinHandle<()>> {
    let config = Config::builder()
        .kind(ICMP::V4)
        .sock_type_hint(socket2::Type::RAW)
        .interface(&source.interface)
        .bind(SocketAddr::new(IpAddr::V4(source.addr), 0))
        .build();
    let client = Client::new(&config).with_context(|| {
        format!(
            "cannot open an ICMP socket on {} for health probes",
            source.interface
        )
    })?;
    let targets: Vec<Ipv4Addr> = lock(&table)[source.index]
        .targets
        .iter()
        .map(|t| t.addr)
        .collect();
    let (index, ident) = (source.index, source.ident);
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(params.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq: u16 = 0;
        loop {
            tick.tick().await;
            for (t, &addr) in targets.iter().enumerate() {
                let mut pinger = client.pinger(IpAddr::V4(addr), PingIdentifier(ident)).await;
                pinger.timeout(Duration::from_millis(params.reply_timeout_ms));
                if lock(&table)[index].targets[t]
                    .health
                    .on_sent(seq, clock.now_ms())
                {
                    let _ = changed.send(());
                }
                let (table, changed) = (table.clone(), changed.clone());
                tokio::spawn(async move {
                    // An error (timeout, unreachable, link down) is a lost probe: nothing to record.
                    if let Ok((_, rtt)) = pinger.ping(PingSequence(seq), &PAYLOAD).await {
                        let rtt_ms = rtt.as_secs_f64() * 1000.0;
                        let mut table = lock(&table);
                        if table[index].targets[t]
                            .health
                            .on_reply(seq, rtt_ms, clock.now_ms())
                        {
                            let _ = changed.send(());
                        }
                    }
                });
            }
            seq = seq.wrapping_add(1);
        }
    }))
}

/// The running probers, one per WAN, restarted when a WAN's address changes (a DHCP renew
/// with a new lease): a probe socket is bound to the address it started with.
pub struct Probers {
    params: ProbeParams,
    table: HealthTable,
    clock: Clock,
    changed: UnboundedSender<()>,
    running: Vec<Option<(Ipv4Addr, tokio::task::JoinHandle<()>)>>,
}

impl Probers {
    pub fn new(
        params: ProbeParams,
        table: HealthTable,
        clock: Clock,
        changed: UnboundedSender<()>,
    ) -> Self {
        Self {
            params,
            table,
            clock,
            changed,
            running: Vec::new(),
        }
    }

    /// Starts WAN `index`'s prober from `addr`, unless it already runs from there.
    /// Stops a prober, so the next `ensure` starts it afresh.
    pub fn forget(&mut self, index: usize) {
        if let Some((_, task)) = self.running.get_mut(index).and_then(Option::take) {
            task.abort();
        }
    }

    pub fn ensure(
        &mut self,
        index: usize,
        interface: &str,
        addr: Ipv4Addr,
        ident: u16,
    ) -> Result<()> {
        if self.running.len() <= index {
            self.running.resize_with(index + 1, || None);
        }
        if let Some((current, _)) = &self.running[index]
            && *current == addr
        {
            return Ok(());
        }
        if let Some((_, task)) = self.running[index].take() {
            task.abort();
        }
        let source = ProbeSource {
            index,
            interface: interface.to_string(),
            addr,
            ident,
        };
        let task = spawn(
            &source,
            self.params,
            self.table.clone(),
            self.clock,
            self.changed.clone(),
        )?;
        self.running[index] = Some((addr, task));
        Ok(())
    }
}

impl Drop for Probers {
    fn drop(&mut self) {
        for (_, task) in self.running.drain(..).flatten() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const C: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

    /// Probes every target `n` times at 50 ms; `answers(target)` says whether it replies.
    fn probe(h: &mut WanHealth, start_ms: u64, n: u16, answers: impl Fn(Ipv4Addr) -> bool) {
        for i in 0..n {
            let now = start_ms + u64::from(i) * 50;
            for t in &mut h.targets {
                t.health.on_sent(i, now);
                if answers(t.addr) {
                    t.health.on_reply(i, 5.0, now + 5);
                }
            }
        }
    }

    #[test]
    fn a_wan_is_up_while_a_quorum_of_its_targets_answer() {
        let mut h = WanHealth::new(&[A, B, C], 2, ProbeParams::default());
        probe(&mut h, 0, 20, |_| true);
        assert!(h.is_up());
        // One target dead: two of three still answer.
        probe(&mut h, 1000, 20, |t| t != A);
        assert!(!h.targets[0].health.is_up());
        assert!(h.is_up(), "{}", h.describe());
        // A second one dead: below the quorum.
        probe(&mut h, 2000, 20, |t| t == C);
        assert!(!h.is_up(), "{}", h.describe());
        assert_eq!(
            h.describe(),
            "192.0.2.1 no replies, 192.0.2.2 no replies, 192.0.2.3 up"
        );
    }

    #[test]
    fn the_quorum_is_clamped_to_the_number_of_targets() {
        assert_eq!(WanHealth::new(&[A, B], 5, ProbeParams::default()).quorum, 2);
        assert_eq!(WanHealth::new(&[A], 0, ProbeParams::default()).quorum, 1);
        // With the default quorum of 1, one answering target keeps the WAN up.
        let mut h = WanHealth::new(&[A, B], 1, ProbeParams::default());
        probe(&mut h, 0, 20, |t| t == B);
        assert!(h.is_up());
    }

    #[test]
    fn wan_figures_are_the_mean_of_its_targets() {
        let mut h = WanHealth::new(&[A, B], 1, ProbeParams::default());
        for (i, t) in h.targets.iter_mut().enumerate() {
            t.health.on_sent(0, 0);
            t.health.on_reply(0, 10.0 * (i + 1) as f64, 20);
        }
        assert_eq!(h.rtt_last_seconds(), Some(0.015));
        assert_eq!(h.rtt_seconds(), Some(0.015));
    }
}
