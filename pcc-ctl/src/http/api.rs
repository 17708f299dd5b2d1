//! The local read-only API behind `pcc-ctl status` and `pcc-ctl flows`: JSON on the metrics
//! listener (loopback by default), so one port serves Prometheus and the CLI.
use std::{collections::HashMap, net::Ipv4Addr, sync::Arc};

use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
};
use pcc_common::{
    FlowKey,
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use serde::{Deserialize, Serialize};

use super::Endpoint;
use crate::{
    balance::health::{Target, WanHealth},
    kernel::conntrack::monotonic_ns,
    shared::Shared,
    sync::lock,
};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WanStatus {
    pub name: String,
    /// "up" or "down".
    pub state: String,
    pub since_unix: u64,
    pub gateway: Ipv4Addr,
    pub weight: u32,
    pub backup: bool,
    pub active_flows: usize,
    /// Share of the active connections (0..1).
    pub flow_share: f64,
    /// Bits per second over the last second: rx = arriving for the LAN, tx = sent out.
    pub rx_bps: f64,
    pub tx_bps: f64,
    /// Smoothed (RFC 6298) and latest probe RTT, jitter (RFC 3550) and loss over the
    /// window, averaged over the WAN's probe targets.
    pub rtt_seconds: Option<f64>,
    #[serde(default)]
    pub rtt_last_seconds: Option<f64>,
    pub jitter_seconds: Option<f64>,
    pub loss_ratio: f64,
    /// The same figures for each probe target.
    #[serde(default)]
    pub targets: Vec<TargetStatus>,
    /// Quota usage in this billing cycle and the quota, when one is configured.
    #[serde(default)]
    pub quota_used_bytes: Option<u64>,
    #[serde(default)]
    pub quota_limit_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TargetStatus {
    pub addr: Ipv4Addr,
    /// "up", or why it is down ("no replies", "link down", "loss over threshold", ...).
    pub state: String,
    pub rtt_seconds: Option<f64>,
    pub rtt_last_seconds: Option<f64>,
    pub jitter_seconds: Option<f64>,
    pub loss_ratio: f64,
}

impl TargetStatus {
    pub fn of(target: &Target, now_ms: u64) -> Self {
        let h = &target.health;
        Self {
            addr: target.addr,
            state: h.down_reason().map_or("up", |r| r.describe()).into(),
            rtt_seconds: h.srtt_ms.map(|ms| ms / 1000.0),
            rtt_last_seconds: h.rtt_last_ms.map(|ms| ms / 1000.0),
            jitter_seconds: h.srtt_ms.map(|_| h.jitter_ms / 1000.0),
            loss_ratio: h.loss_ratio(now_ms),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub version: String,
    pub classifier: String,
    pub flows_active: usize,
    pub wans: Vec<WanStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    pub proto: String,
    pub lan_host: Ipv4Addr,
    /// ICMP echo: the identifier.
    pub lan_port: u16,
    pub remote: Ipv4Addr,
    pub remote_port: u16,
    pub wan: String,
    pub nat_port: u16,
    pub age_seconds: f64,
    /// Both directions.
    pub bytes: u64,
    pub packets: u64,
}

#[derive(Debug, Default, Deserialize)]
pub struct FlowFilter {
    pub wan: Option<String>,
    pub host: Option<Ipv4Addr>,
    pub limit: Option<usize>,
}

fn proto_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        p => p.to_string(),
    }
}

fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

pub fn status(shared: &Shared) -> Status {
    let gc = *lock(&shared.gc);
    let rates = lock(&shared.rates).clone();
    let health = lock(&shared.health);
    let now_ms = shared.clock.now_ms();
    let quota: Vec<(u8, u64, u64)> = lock(&shared.quota)
        .as_ref()
        .map(|m| {
            m.quotas
                .iter()
                .zip(&m.usage)
                .map(|(q, u)| (q.wan_id, u.used_bytes, q.limit_bytes))
                .collect()
        })
        .unwrap_or_default();
    let wans = lock(&shared.wans)
        .iter()
        .map(|w| {
            let id = w.wan_id as usize;
            let h = health.get(id);
            let (rx_bps, tx_bps) = rates.get(id).copied().unwrap_or_default();
            WanStatus {
                name: w.name.clone(),
                state: if w.up { "up" } else { "down" }.into(),
                since_unix: w.since_unix,
                gateway: w.gateway,
                weight: w.weight,
                backup: w.backup,
                active_flows: gc.active_per_wan[id],
                flow_share: if gc.active == 0 {
                    0.0
                } else {
                    gc.active_per_wan[id] as f64 / gc.active as f64
                },
                rx_bps,
                tx_bps,
                rtt_seconds: h.and_then(WanHealth::rtt_seconds),
                rtt_last_seconds: h.and_then(WanHealth::rtt_last_seconds),
                jitter_seconds: h.and_then(WanHealth::jitter_seconds),
                loss_ratio: h.map_or(0.0, |h| h.loss_ratio(now_ms)),
                targets: h.map_or(Vec::new(), |h| {
                    h.targets
                        .iter()
                        .map(|t| TargetStatus::of(t, now_ms))
                        .collect()
                }),
                quota_used_bytes: quota.iter().find(|q| q.0 == w.wan_id).map(|q| q.1),
                quota_limit_bytes: quota.iter().find(|q| q.0 == w.wan_id).map(|q| q.2),
            }
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").into(),
        classifier: shared.classifier.clone(),
        flows_active: gc.active,
        wans,
    }
}

pub fn flows(shared: &Shared, filter: &FlowFilter) -> Vec<Flow> {
    let names: HashMap<u8, String> = lock(&shared.wans)
        .iter()
        .map(|w| (w.wan_id, w.name.clone()))
        .collect();
    let maps = lock(&shared.maps);
    let now = monotonic_ns();
    let mut out = Vec::new();
    for (key, entry) in maps.ct_out.iter().flatten() {
        let FlowKey {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            proto,
            ..
        } = key;
        let wan = names
            .get(&entry.wan_id)
            .cloned()
            .unwrap_or_else(|| entry.wan_id.to_string());
        if filter.wan.as_ref().is_some_and(|w| *w != wan)
            || filter.host.is_some_and(|h| h != addr(src_addr))
        {
            continue;
        }
        let reply = maps
            .ct_in
            .get(&key.reply_key(entry.nat_addr, entry.nat_port), 0)
            .unwrap_or_default();
        out.push(Flow {
            proto: proto_name(proto),
            lan_host: addr(src_addr),
            lan_port: u16::from_be(src_port),
            remote: addr(dst_addr),
            remote_port: u16::from_be(dst_port),
            wan,
            nat_port: u16::from_be(entry.nat_port),
            age_seconds: now.saturating_sub(entry.created_ns) as f64 / 1e9,
            bytes: entry.bytes + reply.bytes,
            packets: entry.packets + reply.packets,
        });
        // The first `limit` in listing order, not whichever the hash map yields first; trimming at
        // twice the limit keeps memory bounded on a table of a million connections.
        if let Some(l) = filter.limit
            && out.len() >= l.saturating_mul(2).max(1024)
        {
            sort_and_keep(&mut out, l);
        }
    }
    sort_and_keep(&mut out, filter.limit.unwrap_or(usize::MAX));
    out
}

fn sort_and_keep(flows: &mut Vec<Flow>, limit: usize) {
    flows.sort_by(|a, b| {
        (a.lan_host, a.lan_port, a.remote, a.remote_port).cmp(&(
            b.lan_host,
            b.lan_port,
            b.remote,
            b.remote_port,
        ))
    });
    flows.truncate(limit);
}

pub async fn status_handler(State(endpoint): State<Arc<Endpoint>>) -> Json<Status> {
    Json(status(&endpoint.shared))
}

pub async fn flows_handler(
    State(endpoint): State<Arc<Endpoint>>,
    Query(filter): Query<FlowFilter>,
) -> Result<Json<Vec<Flow>>, (StatusCode, String)> {
    Ok(Json(flows(&endpoint.shared, &filter)))
}
