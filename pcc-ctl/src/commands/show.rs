//! `pcc-ctl status` and `pcc-ctl flows`: ask the running controller's API and print.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
};

use anyhow::{Context as _, Result};

use crate::{
    balance::wan::unix_now,
    http::api::{Flow, Status},
};

fn get(api: SocketAddr, path: &str) -> Result<String> {
    let url = format!("http://{api}{path}");
    let mut response = ureq::get(&url).call().with_context(|| {
        format!("no pcc-ctl answers at {api} (is `pcc-ctl up` running with --metrics {api}?)")
    })?;
    response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("cannot read {url}"))
}

fn ago(since_unix: u64) -> String {
    let s = unix_now().saturating_sub(since_unix);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

fn ms(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{:.1}", s * 1000.0))
}

pub fn render_status(status: &Status) -> String {
    let mut out = format!(
        "pcc {} ({} classifier), {} active connections\n",
        status.version, status.classifier, status.flows_active
    );
    let _ = writeln!(
        out,
        "{:<10} {:<5} {:>8} {:<15} {:>6} {:>6} {:>6} {:>9} {:>9} {:>7} {:>7} {:>6} {:>15}",
        "WAN",
        "STATE",
        "SINCE",
        "GATEWAY",
        "WEIGHT",
        "FLOWS",
        "SHARE",
        "RX Mb/s",
        "TX Mb/s",
        "RTT ms",
        "JIT ms",
        "LOSS",
        "QUOTA GB"
    );
    for w in &status.wans {
        let name = if w.backup {
            format!("{} (b)", w.name)
        } else {
            w.name.clone()
        };
        let _ = writeln!(
            out,
            "{:<10} {:<5} {:>8} {:<15} {:>6} {:>6} {:>5.1}% {:>9.2} {:>9.2} {:>7} {:>7} {:>5.1}% {:>15}",
            name,
            w.state,
            ago(w.since_unix),
            w.gateway.to_string(),
            w.weight,
            w.active_flows,
            w.flow_share * 100.0,
            w.rx_bps / 1e6,
            w.tx_bps / 1e6,
            ms(w.rtt_seconds),
            ms(w.jitter_seconds),
            w.loss_ratio * 100.0,
            match (w.quota_used_bytes, w.quota_limit_bytes) {
                (Some(u), Some(l)) => format!("{:.1}/{:.0}", u as f64 / 1e9, l as f64 / 1e9),
                _ => "-".into(),
            }
        );
        // With several targets the WAN row is their mean: show each, so one dead target
        // behind a live gateway is visible.
        if w.targets.len() > 1 {
            for t in &w.targets {
                let _ = writeln!(
                    out,
                    "  probe {:<15} {:<22} RTT {} ms (last {}), jitter {} ms, loss {:.1}%",
                    t.addr.to_string(),
                    t.state,
                    ms(t.rtt_seconds),
                    ms(t.rtt_last_seconds),
                    ms(t.jitter_seconds),
                    t.loss_ratio * 100.0
                );
            }
        }
    }
    out
}

pub fn render_flows(flows: &[Flow]) -> String {
    let mut out = format!(
        "{:<5} {:<21} {:<21} {:<8} {:>8} {:>9} {:>12} {:>8}\n",
        "PROTO", "LAN HOST", "REMOTE", "WAN", "NAT PORT", "AGE s", "BYTES", "PACKETS"
    );
    for f in flows {
        let _ = writeln!(
            out,
            "{:<5} {:<21} {:<21} {:<8} {:>8} {:>9.1} {:>12} {:>8}",
            f.proto,
            format!("{}:{}", f.lan_host, f.lan_port),
            format!("{}:{}", f.remote, f.remote_port),
            f.wan,
            f.nat_port,
            f.age_seconds,
            f.bytes,
            f.packets
        );
    }
    out
}

/// `pcc-ctl status`: the running controller's WANs, from its API at `api`.
pub fn status(api: SocketAddr, json: bool) -> Result<()> {
    let body = get(api, "/api/status")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let status: Status =
        serde_json::from_str(&body).context("unexpected answer from /api/status")?;
    print!("{}", render_status(&status));
    Ok(())
}

/// Which connections `pcc-ctl flows` asks for.
pub struct FlowQuery {
    pub wan: Option<String>,
    pub host: Option<Ipv4Addr>,
    pub limit: usize,
}

/// `pcc-ctl flows`: the running controller's connections, from its API at `api`.
pub fn flows(api: SocketAddr, query: &FlowQuery, json: bool) -> Result<()> {
    let mut path = format!("/api/flows?limit={}", query.limit);
    if let Some(w) = &query.wan {
        path += &format!("&wan={w}");
    }
    if let Some(h) = &query.host {
        path += &format!("&host={h}");
    }
    let body = get(api, &path)?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let flows: Vec<Flow> =
        serde_json::from_str(&body).context("unexpected answer from /api/flows")?;
    print!("{}", render_flows(&flows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::api::{TargetStatus, WanStatus};

    fn target(addr: [u8; 4], state: &str, rtt_ms: Option<f64>) -> TargetStatus {
        TargetStatus {
            addr: addr.into(),
            state: state.into(),
            rtt_seconds: rtt_ms.map(|ms| ms / 1000.0),
            rtt_last_seconds: rtt_ms.map(|ms| ms / 1000.0),
            jitter_seconds: rtt_ms.map(|_| 0.0005),
            loss_ratio: if rtt_ms.is_some() { 0.0 } else { 1.0 },
        }
    }

    #[test]
    fn several_targets_get_a_line_each() {
        let wan = WanStatus {
            name: "eth0".into(),
            state: "up".into(),
            since_unix: unix_now(),
            gateway: [192, 0, 2, 1].into(),
            weight: 1,
            backup: false,
            active_flows: 3,
            flow_share: 1.0,
            rx_bps: 0.0,
            tx_bps: 0.0,
            rtt_seconds: Some(0.012),
            rtt_last_seconds: Some(0.011),
            jitter_seconds: Some(0.0005),
            loss_ratio: 0.5,
            targets: vec![
                target([192, 0, 2, 1], "up", Some(12.0)),
                target([198, 18, 0, 9], "no replies", None),
            ],
            quota_used_bytes: None,
            quota_limit_bytes: None,
        };
        let status = Status {
            version: "0".into(),
            classifier: "both-addresses".into(),
            flows_active: 3,
            wans: vec![wan.clone()],
        };
        let text = render_status(&status);
        assert!(text.contains("probe 192.0.2.1       up"), "{text}");
        assert!(
            text.contains("probe 198.18.0.9      no replies             RTT - ms (last -)"),
            "{text}"
        );
        // One target: the WAN row says it all.
        let single = Status {
            wans: vec![WanStatus {
                targets: vec![target([192, 0, 2, 1], "up", Some(12.0))],
                ..wan
            }],
            ..status
        };
        assert!(!render_status(&single).contains("probe "));
    }
}
