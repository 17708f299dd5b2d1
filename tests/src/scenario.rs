//! Traffic patterns shared by several tests.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Result, ensure};

use crate::{
    lab::{Lab, WAN_NAMES, wan_of_addr},
    metrics::Metrics,
    pcc::PccHandle,
    services::HttpLogEntry,
};

/// How many connections went out over each WAN.
#[derive(Clone, Debug)]
pub struct Spread {
    /// Connections per WAN as the HTTP server saw them (by source address).
    pub per_wan: [usize; 2],
    /// `pcc_flows_created_total{wan}` growth during the run (when a pcc handle was given).
    pub flows_created: Option<[f64; 2]>,
    /// Requests the server saw from neither WAN address (should be none).
    pub stray: Vec<HttpLogEntry>,
}

impl Spread {
    pub fn total(&self) -> usize {
        self.per_wan[0] + self.per_wan[1]
    }

    /// Share (0..=1) of the connections that used WAN `i`, from the server log.
    pub fn share(&self, i: usize) -> f64 {
        self.per_wan[i] as f64 / self.total().max(1) as f64
    }

    /// Share of WAN `i` in `pcc_flows_created_total`.
    pub fn flows_share(&self, i: usize) -> Option<f64> {
        let f = self.flows_created?;
        let sum = f[0] + f[1];
        (sum > 0.0).then(|| f[i] / sum)
    }

    pub fn summary(&self) -> String {
        format!(
            "server log: wan0 {} ({:.1}%), wan1 {} ({:.1}%), stray {}; flows_created delta: {:?}",
            self.per_wan[0],
            100.0 * self.share(0),
            self.per_wan[1],
            100.0 * self.share(1),
            self.stray.len(),
            self.flows_created
        )
    }
}

fn flows(m: &Metrics) -> [f64; 2] {
    WAN_NAMES.map(|w| m.wan("pcc_flows_created_total", w))
}

/// Every client opens one HTTP connection to every server address (clients run at the same
/// time, 8 connections in flight each) and fetches a small file. Errors unless every transfer
/// succeeded and the server logged exactly one request per connection.
pub fn connection_spread(lab: &Lab, pcc: Option<&PccHandle>) -> Result<Spread> {
    lab.start_http()?;
    let file = lab.http_file(1024)?;
    lab.clear_http_log()?;
    let before = pcc.map(PccHandle::metrics).transpose()?;
    let urls: Vec<String> = lab
        .server_addrs()
        .iter()
        .map(|a| lab.url(*a, &file))
        .collect();
    let clients = lab.client_names();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| {
                let urls = &urls;
                s.spawn(move || (c.clone(), lab.curl_many(c, urls, 8, 10)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failed = Vec::new();
    for (client, r) in results {
        for t in r? {
            if t.code != 200 || t.bytes != file.size {
                failed.push(format!(
                    "{client}: {} -> HTTP {} ({} bytes)",
                    t.url, t.code, t.bytes
                ));
            }
        }
    }
    ensure!(
        failed.is_empty(),
        "{} of {} transfers failed, e.g.:\n{}",
        failed.len(),
        clients.len() * urls.len(),
        failed
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::thread::sleep(Duration::from_millis(200));
    let log = lab.http_log()?;
    let conns: BTreeSet<_> = log
        .iter()
        .map(|e| (e.client, e.client_port, e.server))
        .collect();
    let expected = clients.len() * urls.len();
    ensure!(
        log.len() == expected && conns.len() == expected,
        "server logged {} requests on {} distinct connections, expected {expected}",
        log.len(),
        conns.len()
    );
    let mut per_wan = [0usize; 2];
    let mut stray = Vec::new();
    for e in log {
        match wan_of_addr(e.client) {
            Some(i) => per_wan[i] += 1,
            None => stray.push(e),
        }
    }
    let flows_created = match (pcc, before) {
        (Some(p), Some(b)) => {
            let (a, b) = (flows(&p.metrics()?), flows(&b));
            Some([a[0] - b[0], a[1] - b[1]])
        }
        _ => None,
    };
    Ok(Spread {
        per_wan,
        flows_created,
        stray,
    })
}
