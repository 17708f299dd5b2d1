//! `--probe wan0=ADDR --probe wan1=ADDR` probes hosts beyond the ISP instead of the gateway, so
//! an ISP that lost its upstream while its own router still answers ("modem alive, internet
//! dead" one hop further) takes the WAN down.

use std::time::Duration;

use pcc_tests::health::{health_summary, wait_metrics, wait_wan_state, wait_wans_up};
use pcc_tests::{Lab, require_root};

#[test]
fn probe_targets_beyond_the_gateway() {
    require_root!();
    let lab = Lab::builder()
        .clients(1)
        .servers(4)
        .build()
        .expect("building the lab");
    let p0 = format!("wan0={}", lab.server_addr(0));
    let p1 = format!("wan1={}", lab.server_addr(1));
    let pcc = lab
        .start_pcc(&["--probe", &p0, "--probe", &p1])
        .expect("starting pcc-ctl with probe targets");
    wait_wans_up(&pcc, &["wan0", "wan1"], Duration::from_secs(10))
        .expect("both WANs up with probes to the servers");
    let (m, _) = wait_metrics(
        &pcc,
        "RTT of both WANs measured",
        Duration::from_secs(3),
        |m| {
            m.wan("pcc_wan_rtt_seconds", "wan0") > 0.0 && m.wan("pcc_wan_rtt_seconds", "wan1") > 0.0
        },
    )
    .expect("pcc_wan_rtt_seconds");
    eprintln!("probe_targets: {}", health_summary(&m));

    lab.cut_isp_inet(0).expect("cutting isp0's upstream");
    wait_wan_state(&pcc, "wan0", false, Duration::from_secs(3))
        .expect("wan0 down within 3 s although its gateway still answers");
    let answered = lab.ping("router", lab.isp_addr(0), 3).expect("ping");
    assert!(
        answered >= 2,
        "the gateway should still answer while its upstream is cut: {answered}/3"
    );
    let m = pcc.metrics().unwrap();
    assert_eq!(
        m.get("pcc_wan_up", &[("wan", "wan1")]),
        Some(1.0),
        "wan1 unaffected: {}",
        health_summary(&m)
    );

    lab.restore_isp_inet(0).expect("restoring isp0's upstream");
    wait_wan_state(&pcc, "wan0", true, Duration::from_secs(5)).expect("wan0 up within 5 s");
}
