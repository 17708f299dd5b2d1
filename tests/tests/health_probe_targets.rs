//! `--probe wan0=ADDR --probe wan1=ADDR` probes hosts beyond the ISP instead of the gateway, so
//! an ISP that lost its upstream while its own router still answers ("modem alive, internet
//! dead" one hop further) takes the WAN down.

use std::time::Duration;

use pcc_tests::{
    Lab,
    health::{health_summary, wait_metrics, wait_wan_state, wait_wans_up},
    require_root,
};

#[test]
fn probe_targets_beyond_the_gateway() {
    require_root!();
    let lab = Lab::with(1, 4);
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

/// Two targets on wan0, its gateway and a host beyond the ISP, and the upstream cut so only
/// the gateway answers: with `--probe-quorum 2` the WAN goes down, with the default quorum of
/// 1 it stays up; either way each target's own state and RTT are in the metrics.
#[test]
fn probe_quorum_decides_with_several_targets() {
    require_root!();
    let lab = Lab::with(1, 2);
    let gateway = lab.isp_addr(0).to_string();
    let beyond = lab.server_addr(0).to_string();
    let probe = format!("wan0={gateway},{beyond}");
    let target_up = |m: &pcc_tests::metrics::Metrics, t: &str| {
        m.get("pcc_probe_up", &[("wan", "wan0"), ("target", t)])
    };
    for quorum in ["2", "1"] {
        let pcc = lab
            .start_pcc(&["--probe", &probe, "--probe-quorum", quorum])
            .expect("starting pcc-ctl with two targets on wan0");
        wait_wans_up(&pcc, &["wan0", "wan1"], Duration::from_secs(10)).expect("both WANs up");
        wait_metrics(&pcc, "both targets measured", Duration::from_secs(3), |m| {
            [&gateway, &beyond].iter().all(|t| {
                target_up(m, t) == Some(1.0)
                    && m.get("pcc_probe_rtt_seconds", &[("wan", "wan0"), ("target", t)])
                        .is_some_and(|r| r > 0.0)
            })
        })
        .expect("per-target metrics");

        lab.cut_isp_inet(0).expect("cutting isp0's upstream");
        let (m, _) = wait_metrics(&pcc, "the far target down", Duration::from_secs(3), |m| {
            target_up(m, &beyond) == Some(0.0)
        })
        .expect("pcc_probe_up of the far target");
        assert_eq!(
            target_up(&m, &gateway),
            Some(1.0),
            "the gateway still answers"
        );
        if quorum == "2" {
            wait_wan_state(&pcc, "wan0", false, Duration::from_secs(2))
                .expect("wan0 down: one target of two is below the quorum");
        } else {
            std::thread::sleep(Duration::from_secs(1));
            let m = pcc.metrics().unwrap();
            assert_eq!(
                m.get("pcc_wan_up", &[("wan", "wan0")]),
                Some(1.0),
                "one answering target keeps wan0 up with quorum 1: {}",
                health_summary(&m)
            );
        }
        lab.restore_isp_inet(0).expect("restoring isp0's upstream");
        wait_wan_state(&pcc, "wan0", true, Duration::from_secs(5)).expect("wan0 up");
        let exit = pcc.stop().expect("stopping pcc-ctl");
        assert_eq!(exit.code(), Some(0), "{}", exit.describe());
    }
}
