//! `pcc-ctl status` and `pcc-ctl flows` against a running controller: tables and JSON, the
//! filters, and agreement with /metrics, per WAN and connection by connection.

use std::time::Duration;

use pcc_tests::{Lab, Metrics, WAN_NAMES, health::wait_metrics, require_root};
use serde_json::Value;

fn pcc_cli(lab: &Lab, args: &[&str]) -> String {
    lab.pcc_cli(args).expect("running pcc-ctl")
}

fn cli_json(lab: &Lab, args: &[&str]) -> Value {
    lab.pcc_cli_json(args).expect("pcc-ctl --json")
}

/// The series status and flows are compared with; a scrape before and one after the CLI reads
/// that agree on all of them mean no conntrack pass or state change fell in between.
const COMPARED: [&str; 5] = [
    "pcc_flows_active",
    "pcc_wan_flows_active",
    "pcc_wan_up",
    "pcc_wan_weight",
    "pcc_wan_state_since_seconds",
];

fn compared(m: &Metrics) -> Vec<&pcc_tests::metrics::Sample> {
    m.samples
        .iter()
        .filter(|s| COMPARED.contains(&s.name.as_str()))
        .collect()
}

/// What identifies a listed connection.
fn connection(f: &Value) -> String {
    let fields = [
        "proto",
        "lan_host",
        "lan_port",
        "remote",
        "remote_port",
        "wan",
        "nat_port",
    ];
    fields.map(|k| f[k].to_string()).join(" ")
}

/// `/metrics`, `status --json`, `flows --json` and `/metrics` again, until both scrapes agree
/// (a few tries at most).
fn snapshot(lab: &Lab, pcc: &pcc_tests::PccHandle) -> (Metrics, Value, Vec<Value>) {
    let api = pcc.metrics_addr();
    for _ in 0..5 {
        let before = pcc.metrics().expect("metrics");
        let status = cli_json(lab, &["status", "--api", api, "--json"]);
        let flows = cli_json(lab, &["flows", "--api", api, "--json"]);
        let after = pcc.metrics().expect("metrics");
        if compared(&before) == compared(&after) {
            let flows = flows.as_array().expect("a list of flows").clone();
            return (after, status, flows);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("/metrics changed during every one of 5 reads of status and flows");
}

#[test]
fn status_and_flows_agree_with_metrics() {
    require_root!();
    let lab = Lab::with(2, 4);
    lab.start_udp_echo().expect("UDP echo");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let api = pcc.metrics_addr().to_string();
    // Eight answered UDP flows (two clients, four servers): they idle out after 120 s, so
    // none opens or expires while the test reads. (A closed TCP download would expire 10 s
    // later and linger in the table until the next conntrack pass.)
    let mut opened = 0;
    for client in ["c1", "c2"] {
        for server in lab.server_addrs() {
            lab.udp_probe(client, server, 7, 5353, 3)
                .expect("UDP through pcc");
            opened += 1;
        }
    }
    // The active-flow figures come from the conntrack walk, every 2 s: wait for one that has
    // seen every flow, and nothing else runs through the dataplane after that.
    wait_metrics(&pcc, "every flow counted", Duration::from_secs(10), |m| {
        m.get("pcc_flows_active", &[]) == Some(f64::from(opened))
    })
    .expect("conntrack pass");

    let (metrics, status, flows) = snapshot(&lab, &pcc);
    let wans = status["wans"].as_array().expect("wans");
    let names: Vec<&str> = wans.iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(names, WAN_NAMES, "{status}");
    assert_eq!(
        status["flows_active"].as_f64(),
        metrics.get("pcc_flows_active", &[]),
        "status and /metrics agree on active connections"
    );
    for w in wans {
        let name = w["name"].as_str().unwrap();
        let metric = |m: &str| {
            metrics
                .get(m, &[("wan", name)])
                .unwrap_or_else(|| panic!("{m}{{wan=\"{name}\"}} missing"))
        };
        assert_eq!(w["state"], "up", "{w}");
        assert_eq!(metric("pcc_wan_up"), 1.0, "{name}: state up in both");
        assert_eq!(w["weight"].as_f64(), Some(metric("pcc_wan_weight")), "{w}");
        assert_eq!(
            w["active_flows"].as_f64(),
            Some(metric("pcc_wan_flows_active")),
            "{w}"
        );
        assert_eq!(
            w["since_unix"].as_f64(),
            Some(metric("pcc_wan_state_since_seconds")),
            "{w}"
        );
        assert!(
            w["rtt_seconds"].as_f64().is_some_and(|r| r > 0.0),
            "RTT measured: {w}"
        );
        // The flows list is the same table the conntrack pass counted.
        let listed = flows.iter().filter(|f| f["wan"] == name).count();
        assert!(
            listed > 0,
            "the eight flows use both WANs (the hash seed is fixed): {flows:?}"
        );
        assert_eq!(
            listed as f64,
            metric("pcc_wan_flows_active"),
            "flows --json on {name} vs pcc_wan_flows_active: {flows:?}"
        );
    }
    assert_eq!(
        Some(flows.len() as f64),
        metrics.get("pcc_flows_active", &[]),
        "flows --json vs pcc_flows_active: {flows:?}"
    );
    assert!(
        flows
            .iter()
            .all(|f| WAN_NAMES.contains(&f["wan"].as_str().unwrap())),
        "{flows:?}"
    );

    let c2 = lab.client_addr(2).to_string();
    let server1 = lab.server_addr(1).to_string();
    let is_probe = |f: &Value| {
        f["proto"] == "udp" && f["lan_host"] == c2.as_str() && f["remote"] == server1.as_str()
    };
    let udp = flows
        .iter()
        .find(|f| is_probe(f))
        .expect("c2's UDP flow listed");
    assert_eq!(udp["lan_port"], 5353);
    assert!(
        udp["bytes"].as_u64().unwrap() > 0 && udp["packets"].as_u64().unwrap() >= 2,
        "{udp} of {flows:?}"
    );
    let wan = udp["wan"].as_str().unwrap().to_string();

    // Filters: the flow asked for is there, and exactly the connections of the full list that
    // match (compared by tuple, WAN and NAT port: ages and counters move between reads).
    let filtered = |flag: &str, field: &str, value: &str| {
        let got = cli_json(&lab, &["flows", "--api", &api, "--json", flag, value]);
        let got: Vec<String> = got.as_array().unwrap().iter().map(connection).collect();
        let want: Vec<String> = flows
            .iter()
            .filter(|f| f[field] == value)
            .map(connection)
            .collect();
        assert!(
            got.contains(&connection(udp)),
            "{flag} {value} keeps c2's flow: {got:?}"
        );
        assert_eq!(
            got, want,
            "{flag} {value}: only and all flows with that {field}"
        );
    };
    filtered("--host", "lan_host", &c2);
    filtered("--wan", "wan", &wan);

    let table = pcc_cli(&lab, &["status", "--api", &api]);
    assert!(
        table.contains("wan0") && table.contains("wan1") && table.contains("GATEWAY"),
        "{table}"
    );
    let table = pcc_cli(&lab, &["flows", "--api", &api]);
    assert!(table.contains(&format!("{c2}:5353")), "{table}");
}
