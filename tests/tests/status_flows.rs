//! `pcc-ctl status` and `pcc-ctl flows` against a running controller: tables and JSON, the
//! filters, and agreement with /metrics.

use std::time::Duration;

use pcc_tests::{Lab, require_root};

fn pcc_cli(lab: &Lab, args: &[&str]) -> String {
    let bin = pcc_tests::pcc_ctl_path().expect("pcc-ctl binary");
    let mut full = vec![bin.to_str().expect("utf-8 path")];
    full.extend_from_slice(args);
    let out = lab.exec("router", &full).expect("running pcc-ctl");
    assert!(
        out.status.success(),
        "pcc-ctl {args:?}: {}",
        pcc_tests::proc::describe(&out)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn status_and_flows_agree_with_metrics() {
    require_root!();
    let lab = Lab::builder()
        .clients(2)
        .servers(4)
        .build()
        .expect("building the lab");
    lab.start_http().expect("HTTP server");
    lab.start_udp_echo().expect("UDP echo");
    let file = lab.http_file(256 << 10).expect("test file");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let api = pcc.metrics_addr().to_string();
    lab.download("c1", lab.server_addr(0), &file, &[])
        .expect("download");
    lab.udp_probe("c2", lab.server_addr(1), 7, 5353, 3)
        .expect("UDP through pcc");
    // The active-flow figures come from the conntrack walk, every 2 s.
    std::thread::sleep(Duration::from_millis(2500));

    let status: serde_json::Value =
        serde_json::from_str(&pcc_cli(&lab, &["status", "--api", &api, "--json"]))
            .expect("status JSON");
    let wans = status["wans"].as_array().expect("wans");
    assert_eq!(wans.len(), 2, "{status}");
    for w in wans {
        assert_eq!(w["state"], "up", "{w}");
        assert!(
            w["rtt_seconds"].as_f64().is_some_and(|r| r > 0.0),
            "RTT measured: {w}"
        );
    }
    let metrics = pcc.metrics().expect("metrics");
    assert_eq!(
        status["flows_active"].as_f64(),
        metrics.get("pcc_flows_active", &[]),
        "status and /metrics agree on active connections"
    );

    let flows: serde_json::Value =
        serde_json::from_str(&pcc_cli(&lab, &["flows", "--api", &api, "--json"]))
            .expect("flows JSON");
    let flows = flows.as_array().expect("a list");
    let c2 = lab.client_addr(2).to_string();
    let udp = flows
        .iter()
        .find(|f| f["proto"] == "udp" && f["lan_host"] == c2.as_str())
        .expect("c2's UDP flow listed");
    assert_eq!(udp["lan_port"], 5353);
    assert!(
        udp["bytes"].as_u64().unwrap() > 0 && udp["packets"].as_u64().unwrap() >= 2,
        "{udp} of {flows:?}"
    );
    let wan = udp["wan"].as_str().unwrap().to_string();
    let only_c2: serde_json::Value = serde_json::from_str(&pcc_cli(
        &lab,
        &["flows", "--api", &api, "--json", "--host", &c2],
    ))
    .unwrap();
    assert!(
        only_c2
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["lan_host"] == c2.as_str()),
        "host filter: {only_c2}"
    );
    let on_wan: serde_json::Value = serde_json::from_str(&pcc_cli(
        &lab,
        &["flows", "--api", &api, "--json", "--wan", &wan],
    ))
    .unwrap();
    assert!(
        on_wan
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["wan"] == wan.as_str()),
        "wan filter: {on_wan}"
    );

    let table = pcc_cli(&lab, &["status", "--api", &api]);
    assert!(
        table.contains("wan0") && table.contains("wan1") && table.contains("GATEWAY"),
        "{table}"
    );
    let table = pcc_cli(&lab, &["flows", "--api", &api]);
    assert!(table.contains(&format!("{c2}:5353")), "{table}");
}
