//! Prometheus metrics, read from the dataplane's per-CPU counters at scrape time, so counting
//! costs the fast path nothing beyond its own per-CPU increments.
//!
//! The registry is the endpoint's own (`http::Endpoint`): nothing else registers or counts.
use std::sync::atomic::Ordering;

use anyhow::Result;
use pcc_common::{Counter, CtEvent};
use prometheus::{
    Encoder as _, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{http::api::TargetStatus, shared::Shared, sync::lock};

pub struct Metrics {
    registry: Registry,
    wan_up: IntGaugeVec,
    wan_weight: IntGaugeVec,
    wan_rtt: GaugeVec,
    wan_rtt_last: GaugeVec,
    wan_jitter: GaugeVec,
    wan_loss: GaugeVec,
    /// Per probe target, labelled `wan` and `target`.
    probe_up: IntGaugeVec,
    probe_rtt: GaugeVec,
    probe_rtt_last: GaugeVec,
    probe_jitter: GaugeVec,
    probe_loss: GaugeVec,
    wan_state_changes: IntCounterVec,
    wan_since: IntGaugeVec,
    rx_bytes: IntCounterVec,
    tx_bytes: IntCounterVec,
    rx_packets: IntCounterVec,
    tx_packets: IntCounterVec,
    flows_created: IntCounterVec,
    flows_active: IntGauge,
    flows_active_per_wan: IntGaugeVec,
    nat_ports: IntGaugeVec,
    packets: IntCounterVec,
    drops: IntCounterVec,
    conntrack_events: IntCounterVec,
    nat_bindings: IntGauge,
    /// Answers to refused new connections, by outcome (the `Counter::is_event` counters).
    icmp_prohibited: IntCounterVec,
    quota_used: IntGaugeVec,
    quota_limit: IntGaugeVec,
    quota_cycle_start: IntGaugeVec,
    quota_threshold: IntGaugeVec,
    routes_mirrored: IntGauge,
    route_neighbours: IntGauge,
    failover_resets: IntCounterVec,
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn float_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// Raises a counter to an absolute value read from the dataplane (they only grow).
fn set_counter(c: &prometheus::IntCounter, value: u64) {
    let current = c.get();
    if value > current {
        c.inc_by(value - current);
    }
}

impl Metrics {
    pub fn new(classifier: &str) -> Result<Self> {
        let registry = Registry::new();
        let info = gauge_vec(
            &registry,
            "pcc_build_info",
            "pcc version and configuration",
            &["version", "classifier"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), classifier])
            .set(1);
        Ok(Self {
            wan_up: gauge_vec(
                &registry,
                "pcc_wan_up",
                "1 if the WAN takes new connections",
                &["wan"],
            )?,
            wan_weight: gauge_vec(
                &registry,
                "pcc_wan_weight",
                "Configured weight of the WAN",
                &["wan"],
            )?,
            wan_rtt: float_gauge_vec(
                &registry,
                "pcc_wan_rtt_seconds",
                "Smoothed probe round-trip time (RFC 6298)",
                &["wan"],
            )?,
            wan_rtt_last: float_gauge_vec(
                &registry,
                "pcc_wan_rtt_last_seconds",
                "Round-trip time of the latest probe reply",
                &["wan"],
            )?,
            probe_up: gauge_vec(
                &registry,
                "pcc_probe_up",
                "1 if the probe target answers well enough (the WAN is up while a quorum of targets are)",
                &["wan", "target"],
            )?,
            probe_rtt: float_gauge_vec(
                &registry,
                "pcc_probe_rtt_seconds",
                "Smoothed round-trip time to one probe target (RFC 6298)",
                &["wan", "target"],
            )?,
            probe_rtt_last: float_gauge_vec(
                &registry,
                "pcc_probe_rtt_last_seconds",
                "Round-trip time of one probe target's latest reply",
                &["wan", "target"],
            )?,
            probe_jitter: float_gauge_vec(
                &registry,
                "pcc_probe_jitter_seconds",
                "RTT jitter to one probe target (RFC 3550)",
                &["wan", "target"],
            )?,
            probe_loss: float_gauge_vec(
                &registry,
                "pcc_probe_loss_ratio",
                "Loss of one probe target's probes over the health window (0..1)",
                &["wan", "target"],
            )?,
            wan_jitter: float_gauge_vec(
                &registry,
                "pcc_wan_jitter_seconds",
                "Probe RTT jitter (RFC 3550)",
                &["wan"],
            )?,
            wan_loss: float_gauge_vec(
                &registry,
                "pcc_wan_loss_ratio",
                "Probe loss over the health window (0..1)",
                &["wan"],
            )?,
            wan_state_changes: counter_vec(
                &registry,
                "pcc_wan_state_changes_total",
                "Times the WAN went up or down",
                &["wan"],
            )?,
            wan_since: gauge_vec(
                &registry,
                "pcc_wan_state_since_seconds",
                "Unix time of the WAN's last state change",
                &["wan"],
            )?,
            rx_bytes: counter_vec(
                &registry,
                "pcc_wan_rx_bytes_total",
                "Bytes that arrived on the WAN for the LAN",
                &["wan"],
            )?,
            tx_bytes: counter_vec(
                &registry,
                "pcc_wan_tx_bytes_total",
                "Bytes the dataplane sent out of the WAN",
                &["wan"],
            )?,
            rx_packets: counter_vec(
                &registry,
                "pcc_wan_rx_packets_total",
                "Packets that arrived on the WAN for the LAN",
                &["wan"],
            )?,
            tx_packets: counter_vec(
                &registry,
                "pcc_wan_tx_packets_total",
                "Packets the dataplane sent out of the WAN",
                &["wan"],
            )?,
            flows_created: counter_vec(
                &registry,
                "pcc_flows_created_total",
                "Connections pinned to the WAN",
                &["wan"],
            )?,
            flows_active: gauge(
                &registry,
                "pcc_flows_active",
                "Connections in the conntrack table",
            )?,
            routes_mirrored: gauge(
                &registry,
                "pcc_routes_mirrored",
                "Routes of the main table the dataplane follows (default routes through WANs, which are balanced, not counted)",
            )?,
            route_neighbours: gauge(
                &registry,
                "pcc_route_neighbours",
                "Next-hop MACs of routes through WANs known to the dataplane",
            )?,
            nat_ports: gauge_vec(
                &registry,
                "pcc_nat_ports_in_use",
                "Distinct source NAT ports in use on the WAN",
                &["wan"],
            )?,
            flows_active_per_wan: gauge_vec(
                &registry,
                "pcc_wan_flows_active",
                "Connections pinned to the WAN now",
                &["wan"],
            )?,
            packets: counter_vec(
                &registry,
                "pcc_packets_total",
                "Packets seen by the dataplane by fate",
                &["action", "reason"],
            )?,
            drops: counter_vec(
                &registry,
                "pcc_drops_total",
                "Packets the dataplane dropped",
                &["reason"],
            )?,
            conntrack_events: counter_vec(
                &registry,
                "pcc_conntrack_events_total",
                "Connections expired by the dataplane's sweep, dropped unanswered to make room, opened from outside",
                &["event"],
            )?,
            nat_bindings: gauge(
                &registry,
                "pcc_nat_bindings",
                "Endpoint-independent mappings (LAN endpoint on a WAN) in use",
            )?,
            icmp_prohibited: counter_vec(
                &registry,
                "pcc_icmp_prohibited_total",
                "Refused new connections answered with ICMP administratively prohibited \
                 (outcome sent) or not, for the rate limit (outcome rate_limited)",
                &["outcome"],
            )?,
            quota_used: gauge_vec(
                &registry,
                "pcc_wan_quota_used_bytes",
                "Bytes through the WAN in this billing cycle",
                &["wan"],
            )?,
            quota_limit: gauge_vec(
                &registry,
                "pcc_wan_quota_limit_bytes",
                "The WAN's fair-usage quota per cycle",
                &["wan"],
            )?,
            quota_cycle_start: gauge_vec(
                &registry,
                "pcc_wan_quota_cycle_start_seconds",
                "Start of the current billing cycle (Unix time)",
                &["wan"],
            )?,
            quota_threshold: gauge_vec(
                &registry,
                "pcc_wan_quota_threshold",
                "Quota thresholds crossed (0: none)",
                &["wan"],
            )?,
            failover_resets: counter_vec(
                &registry,
                "pcc_failover_resets_total",
                "TCP resets sent to LAN hosts for connections of the WAN, which stayed down past --failover-grace",
                &["wan"],
            )?,
            registry,
        })
    }

    /// Reads the dataplane and renders the exposition text.
    pub fn render(&self, shared: &Shared) -> Result<String> {
        {
            let maps = lock(&shared.maps);
            let counters = maps.counters()?;
            for c in Counter::ALL {
                let v = counters[c as usize];
                if c.is_event() {
                    set_counter(&self.icmp_prohibited.with_label_values(&[c.reason()]), v);
                    continue;
                }
                set_counter(
                    &self.packets.with_label_values(&[c.action(), c.reason()]),
                    v,
                );
                if c.is_drop() {
                    set_counter(&self.drops.with_label_values(&[c.reason()]), v);
                }
            }
            let events = maps.ct_events()?;
            for e in CtEvent::ALL {
                set_counter(
                    &self.conntrack_events.with_label_values(&[e.label()]),
                    events[e as usize],
                );
            }
            let gc = *lock(&shared.gc);
            self.flows_active.set(gc.active as i64);
            self.nat_bindings.set(gc.bindings as i64);
            self.routes_mirrored
                .set(shared.routes_mirrored.load(Ordering::Relaxed) as i64);
            self.route_neighbours
                .set(shared.neighbours_mirrored.load(Ordering::Relaxed) as i64);
            let health = lock(&shared.health);
            let now_ms = shared.clock.now_ms();
            // A WAN's targets change with its gateway: series of former targets must go.
            for probe in [
                &self.probe_rtt,
                &self.probe_rtt_last,
                &self.probe_jitter,
                &self.probe_loss,
            ] {
                probe.reset();
            }
            self.probe_up.reset();
            for wan in lock(&shared.wans).iter() {
                let n = wan.name.as_str();
                if let Some(h) = health.get(wan.wan_id as usize) {
                    // NaN until the first reply: "no measurement", not zero.
                    self.wan_rtt
                        .with_label_values(&[n])
                        .set(h.rtt_seconds().unwrap_or(f64::NAN));
                    self.wan_rtt_last
                        .with_label_values(&[n])
                        .set(h.rtt_last_seconds().unwrap_or(f64::NAN));
                    self.wan_jitter
                        .with_label_values(&[n])
                        .set(h.jitter_seconds().unwrap_or(f64::NAN));
                    self.wan_loss
                        .with_label_values(&[n])
                        .set(h.loss_ratio(now_ms));
                    for t in &h.targets {
                        let s = TargetStatus::of(t, now_ms);
                        let target = s.addr.to_string();
                        let labels = [n, target.as_str()];
                        self.probe_up
                            .with_label_values(&labels)
                            .set(i64::from(t.health.is_up()));
                        for (gauge, value) in [
                            (&self.probe_rtt, s.rtt_seconds),
                            (&self.probe_rtt_last, s.rtt_last_seconds),
                            (&self.probe_jitter, s.jitter_seconds),
                            (&self.probe_loss, Some(s.loss_ratio)),
                        ] {
                            gauge
                                .with_label_values(&labels)
                                .set(value.unwrap_or(f64::NAN));
                        }
                    }
                }
                set_counter(
                    &self.wan_state_changes.with_label_values(&[n]),
                    wan.state_changes,
                );
                self.wan_since
                    .with_label_values(&[n])
                    .set(wan.since_unix as i64);
                let w = maps.wan_counters(wan.wan_id)?;
                set_counter(&self.rx_bytes.with_label_values(&[n]), w.rx_bytes);
                set_counter(&self.tx_bytes.with_label_values(&[n]), w.tx_bytes);
                set_counter(&self.rx_packets.with_label_values(&[n]), w.rx_packets);
                set_counter(&self.tx_packets.with_label_values(&[n]), w.tx_packets);
                set_counter(&self.flows_created.with_label_values(&[n]), w.flows_created);
                // Exported from 0, before the first reset.
                set_counter(
                    &self.failover_resets.with_label_values(&[n]),
                    shared.failover_resets[wan.wan_id as usize].load(Ordering::Relaxed),
                );
                self.wan_up.with_label_values(&[n]).set(i64::from(wan.up));
                self.wan_weight
                    .with_label_values(&[n])
                    .set(i64::from(wan.weight));
                self.flows_active_per_wan
                    .with_label_values(&[n])
                    .set(gc.active_per_wan[wan.wan_id as usize] as i64);
                self.nat_ports
                    .with_label_values(&[n])
                    .set(gc.nat_ports_per_wan[wan.wan_id as usize] as i64);
            }
        }
        if let Some(meter) = lock(&shared.quota).as_ref() {
            let wans = lock(&shared.wans);
            let crossed = meter.crossed();
            for ((q, u), (_, hit, _)) in meter.quotas.iter().zip(&meter.usage).zip(&crossed) {
                let Some(wan) = wans.iter().find(|w| w.wan_id == q.wan_id) else {
                    continue;
                };
                let n = wan.name.as_str();
                self.quota_used
                    .with_label_values(&[n])
                    .set(u.used_bytes as i64);
                self.quota_limit
                    .with_label_values(&[n])
                    .set(q.limit_bytes as i64);
                self.quota_cycle_start
                    .with_label_values(&[n])
                    .set(u.cycle_start_unix as i64);
                self.quota_threshold
                    .with_label_values(&[n])
                    .set(*hit as i64);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8(out)?)
    }
}
