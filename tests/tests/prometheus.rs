//! The metrics endpoint is valid Prometheus exposition (`promtool check metrics`) with a series
//! for every dataplane counter, and a real Prometheus server scrapes it, answers a query for
//! `pcc_wan_up` and returns data for every query of the Grafana dashboard.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use pcc_common::Counter;
use pcc_tests::{Lab, Metrics, require_root};

#[test]
fn promtool_accepts_and_prometheus_scrapes() {
    require_root!();
    let lab = Lab::with(1, 2);
    lab.start_http().expect("HTTP server");
    let file = lab.http_file(64 << 10).expect("test file");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    lab.download("c1", lab.server_addr(0), &file, &[])
        .expect("download");
    let text = pcc.metrics_text().expect("metrics");

    let out = lab
        .exec_opts(
            "router",
            &["promtool", "check", "metrics"],
            Some(text.as_bytes()),
            Duration::from_secs(20),
        )
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}",
        pcc_tests::proc::describe(&out)
    );
    for name in [
        "pcc_wan_up",
        "pcc_wan_rx_bytes_total",
        "pcc_wan_tx_bytes_total",
        "pcc_wan_rx_packets_total",
        "pcc_wan_tx_packets_total",
        "pcc_wan_rtt_seconds",
        "pcc_wan_jitter_seconds",
        "pcc_wan_loss_ratio",
        "pcc_wan_state_changes_total",
        "pcc_flows_active",
        "pcc_flows_created_total",
        "pcc_nat_ports_in_use",
        "pcc_drops_total",
        "pcc_build_info",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} missing from /metrics"
        );
    }

    every_counter_exported(&text);

    // A real Prometheus in the router namespace, scraping every second.
    let dir = lab.dir().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pcc\n    static_configs:\n      - targets: ['{}']\n",
            pcc.metrics_addr()
        ),
    )
    .unwrap();
    let _prometheus = lab
        .spawn(
            "router",
            &[
                "prometheus",
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", dir.join("data").display()),
                "--web.listen-address=127.0.0.1:9190",
            ],
        )
        .expect("starting prometheus");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let out = lab
            .exec(
                "router",
                &[
                    "curl",
                    "-s",
                    "--max-time",
                    "2",
                    "http://127.0.0.1:9190/api/v1/query?query=pcc_wan_up",
                ],
            )
            .expect("curl");
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&last) else {
            continue;
        };
        let series = v["data"]["result"].as_array().cloned().unwrap_or_default();
        if series.len() == 2 {
            let wans: Vec<&str> = series
                .iter()
                .filter_map(|s| s["metric"]["wan"].as_str())
                .collect();
            assert!(wans.contains(&"wan0") && wans.contains(&"wan1"), "{last}");
            assert!(
                series.iter().all(|s| s["value"][1] == "1"),
                "both WANs up: {last}"
            );
            check_dashboard(&lab, &text);
            return;
        }
    }
    panic!("Prometheus never answered pcc_wan_up for both WANs; last answer: {last}");
}

/// One `pcc_drops_total{reason}` series per drop reason of the dataplane and no other, one
/// `pcc_packets_total{action,reason}` per packet counter and one
/// `pcc_icmp_prohibited_total{outcome}` per event counter, zeros included (the list is the
/// dataplane's own, `pcc_common::Counter::ALL`).
fn every_counter_exported(text: &str) {
    let metrics = Metrics::parse(text).expect("parsing /metrics");
    let series = |name: &str| -> Vec<&BTreeMap<String, String>> {
        metrics
            .samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| &s.labels)
            .collect()
    };
    let mut drops: Vec<&str> = series("pcc_drops_total")
        .iter()
        .map(|l| l["reason"].as_str())
        .collect();
    drops.sort_unstable();
    let mut want: Vec<&str> = Counter::ALL
        .iter()
        .filter(|c| c.is_drop())
        .map(|c| c.reason())
        .collect();
    want.sort_unstable();
    assert!(want.len() >= 10, "drop reasons: {want:?}");
    assert_eq!(drops, want, "pcc_drops_total reasons");
    let packets = series("pcc_packets_total");
    let (events, fates): (Vec<Counter>, Vec<Counter>) =
        Counter::ALL.into_iter().partition(|c| c.is_event());
    assert_eq!(packets.len(), fates.len(), "{packets:?}");
    let answers = series("pcc_icmp_prohibited_total");
    assert_eq!(answers.len(), events.len(), "{answers:?}");
    for c in events {
        assert!(
            answers
                .iter()
                .any(|l| l.get("outcome").map(String::as_str) == Some(c.reason())),
            "pcc_icmp_prohibited_total for {c:?} missing: {answers:?}"
        );
    }
    for c in fates {
        assert!(
            packets
                .iter()
                .any(|l| l.get("action").map(String::as_str) == Some(c.action())
                    && l.get("reason").map(String::as_str) == Some(c.reason())),
            "pcc_packets_total for {c:?} missing: {packets:?}"
        );
    }
}

/// Asks the lab's Prometheus for `expr` now and returns `data.result` (an error for anything
/// but a successful vector or matrix answer).
fn prom_query(lab: &Lab, expr: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let query = format!("query={expr}");
    let args = [
        "curl",
        "-s",
        "--max-time",
        "5",
        "-G",
        "http://127.0.0.1:9190/api/v1/query",
        "--data-urlencode",
        &query,
    ];
    let out = lab.exec("router", &args)?;
    let answer = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(&answer).map_err(|e| anyhow::anyhow!("`{expr}`: {e}: {answer}"))?;
    anyhow::ensure!(v["status"] == "success", "`{expr}` -> {answer}");
    v["data"]["result"]
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("`{expr}`: no result list: {answer}"))
}

/// The window the test puts in place of Grafana's `$__rate_interval` (scrapes are 1 s apart).
const RATE_WINDOW: &str = "10s";

/// Every query of the Grafana dashboard names only metrics pcc exports and returns data from
/// the live Prometheus (an empty answer is a broken panel: a join that matches nothing, say),
/// with a series for each WAN where it has a `wan` label; the sample Prometheus config is valid.
fn check_dashboard(lab: &Lab, metrics_text: &str) {
    let root = pcc_tests::workspace_root();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("dashboards/grafana-pcc.json")).unwrap(),
    )
    .expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels.len() >= 6,
        "throughput, share, RTT, jitter, loss, state, drops"
    );
    // rate() needs two samples in its window: wait for three scrapes inside it.
    let window = format!("count_over_time(pcc_flows_active[{RATE_WINDOW}])");
    pcc_tests::health::wait_until(
        "three scrapes in the rate window",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let r = prom_query(lab, &window)?;
            let n = r
                .first()
                .and_then(|s| s["value"][1].as_str())
                .and_then(|v| v.parse::<f64>().ok());
            Ok(n.is_some_and(|n| n >= 3.0).then_some(()))
        },
    )
    .expect("Prometheus keeps scraping pcc");
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", RATE_WINDOW);
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("pcc_") {
                    assert!(
                        metrics_text.contains(&format!("# TYPE {word} ")),
                        "dashboard uses {word}, which pcc does not export"
                    );
                }
            }
            let title = &panel["title"];
            let result = prom_query(lab, &expr).unwrap_or_else(|e| panic!("panel {title}: {e:#}"));
            assert!(
                !result.is_empty(),
                "panel {title}: `{expr}` returns no series from a Prometheus scraping pcc"
            );
            let wans: std::collections::BTreeSet<&str> = result
                .iter()
                .filter_map(|s| s["metric"]["wan"].as_str())
                .collect();
            assert!(
                wans.is_empty() || wans == ["wan0", "wan1"].into(),
                "panel {title}: `{expr}` has series for {wans:?}, not both WANs: {result:?}"
            );
        }
    }
    let config = root.join("dashboards/prometheus.yml");
    let out = lab
        .exec(
            "router",
            &["promtool", "check", "config", config.to_str().unwrap()],
        )
        .expect("promtool");
    assert!(
        out.status.success(),
        "sample config: {}",
        pcc_tests::proc::describe(&out)
    );
}
