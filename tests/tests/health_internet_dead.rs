//! "Modem alive, internet dead" on isp0 (nftables drops everything from the router, ARP still
//! works): pcc-ctl's probes notice within seconds, wan0 leaves, the UDP flows pinned to it
//! continue over wan1 (and stay there after wan0 is back), the router's own traffic follows,
//! and new connections use both WANs again once isp0 recovers.

use std::time::Duration;

use pcc_tests::{
    Lab,
    health::{
        as_refs, flow_pairs, health_summary, mono_now, wait_route, wait_wan_state, wait_wans_up,
    },
    require_root, scenario,
};

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn internet_dead_fails_over_and_back() {
    require_root!();
    let lab = Lab::with(3, 50);
    lab.start_udp_echo().expect("UDP echo server");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    wait_wans_up(&pcc, &["wan0", "wan1"], S(10)).expect("both WANs up after start");
    let probe_dst = lab.server_addr(0);
    assert_eq!(
        lab.route_dev("router", probe_dst).unwrap(),
        "wan0",
        "the router's own traffic uses wan0 (metric 100) while both are up"
    );

    let pairs = flow_pairs(&lab, 3, 3);
    let mut flows = lab
        .start_udp_flows(&as_refs(&pairs), Duration::from_millis(50), S(40))
        .expect("starting UDP flows");
    let warm = flows.wait_replies(5, S(10)).expect("UDP flows answered");
    let t_cut = mono_now();
    let on0 = warm.on_wan_at(0, t_cut);
    let on1 = warm.on_wan_at(1, t_cut);
    assert!(
        !on0.is_empty() && !on1.is_empty(),
        "want flows on both WANs before the cut:\n{}",
        warm.describe()
    );

    lab.cut_isp(0).expect("cutting isp0");
    let t_down = wait_wan_state(&pcc, "wan0", false, S(3))
        .expect("wan0 down within 3 s of isp0 dropping everything");
    eprintln!(
        "internet_dead: wan0 down {:.2} s after the cut",
        t_down - t_cut
    );
    let m = pcc.metrics().unwrap();
    assert_eq!(
        m.get("pcc_wan_up", &[("wan", "wan1")]),
        Some(1.0),
        "wan1 stays up: {}",
        health_summary(&m)
    );
    wait_route(&lab, probe_dst, "wan1", S(2)).expect("router's own route moves to wan1");

    // The flows that were on wan0 answer over wan1 now; those on wan1 never stopped.
    flows
        .wait_answered_over("every wan0 flow answered over wan1", &on0, 1, t_cut, S(5))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", flows.snapshot().describe()));
    std::thread::sleep(S(1));
    let now = mono_now();
    let snap = flows.snapshot();
    for f in &snap.flows {
        let recent: Vec<_> = f.between(now - 1.0, now).collect();
        assert!(
            recent.len() >= 8,
            "{}: only {} replies in the last second after failover:\n{}",
            f.name(),
            recent.len(),
            snap.describe()
        );
        assert!(
            recent.iter().all(|r| r.wan == Some(1)),
            "{}: replies over wan0 while isp0 is cut: {recent:?}",
            f.name()
        );
    }
    let log = lab.udp_log().expect("UDP echo log");
    for &i in &on0 {
        let dst = snap.flows[i].dst;
        assert!(
            log.iter()
                .any(|e| e.server == dst && e.client == lab.wan_addr(1)),
            "echo server never saw {} from wan1's address {}",
            snap.flows[i].name(),
            lab.wan_addr(1)
        );
    }

    let t_restore = mono_now();
    lab.restore_isp(0).expect("restoring isp0");
    let t_up = wait_wan_state(&pcc, "wan0", true, S(5))
        .expect("wan0 up again within 5 s of isp0 recovering");
    eprintln!(
        "internet_dead: wan0 up {:.2} s after the restore",
        t_up - t_restore
    );
    wait_route(&lab, probe_dst, "wan0", S(2)).expect("router's own route back on wan0");
    std::thread::sleep(Duration::from_millis(1500));
    let end = flows.stop();
    for (i, f) in end.flows.iter().enumerate() {
        let after: Vec<_> = f.between(t_up, f64::MAX).collect();
        assert!(
            after.len() >= 10,
            "{}: only {} replies after wan0 came back:\n{}",
            f.name(),
            after.len(),
            end.describe()
        );
        // Moved flows stay where they are; wan1's flows were never touched.
        assert!(
            after.iter().all(|r| r.wan == Some(1)),
            "{} (on wan{} before the cut) went back to wan0 after the restore",
            f.name(),
            if on0.contains(&i) { 0 } else { 1 }
        );
    }

    let spread = scenario::connection_spread(&lab, Some(&pcc)).expect("150 new connections");
    eprintln!("internet_dead after restore: {}", spread.summary());
    assert!(
        spread.stray.is_empty(),
        "non-WAN sources: {:?}",
        spread.stray
    );
    assert!(
        (0.25..=0.75).contains(&spread.share(0)),
        "new connections after the restore should use both WANs: {}",
        spread.summary()
    );
    let m = pcc.metrics().unwrap();
    assert!(
        m.wan("pcc_wan_state_changes_total", "wan0") >= 2.0,
        "state changes of wan0: {}",
        health_summary(&m)
    );
    let exit = pcc.stop().expect("stopping pcc-ctl");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
    for needle in ["WAN wan0 is down", "WAN wan0 is up"] {
        assert!(
            exit.stderr.contains(needle),
            "pcc-ctl's log lacks {needle:?}:\n{}",
            exit.stderr
        );
    }
    let routes = lab.router_default_routes().unwrap();
    assert!(
        routes.iter().any(|r| r.dev == "wan0") && routes.iter().any(|r| r.dev == "wan1"),
        "both default routes after pcc-ctl exited: {routes:?}"
    );
}
