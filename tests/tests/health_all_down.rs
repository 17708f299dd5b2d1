//! Both ISPs dead: packets from the LAN are dropped and counted as `no_wan_up`, nothing with a
//! LAN source address leaves on either ISP; one ISP back and the traffic resumes over it by
//! itself.

use std::time::Duration;

use pcc_tests::{
    Lab, Metrics,
    health::{
        as_refs, flow_pairs, health_summary, mono_now, wait_route, wait_until, wait_wan_state,
        wait_wans_up,
    },
    require_root,
};

const S: fn(u64) -> Duration = Duration::from_secs;

fn no_wan_up(m: &Metrics) -> f64 {
    m.get("pcc_drops_total", &[("reason", "no_wan_up")])
        .unwrap_or(0.0)
}

#[test]
fn all_down_then_one_back() {
    require_root!();
    let lab = Lab::with(2, 8);
    for i in 0..2 {
        lab.watch_lan_sources(i).expect("LAN-source counters");
    }
    lab.start_udp_echo().expect("UDP echo server");
    let mut pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    wait_wans_up(&pcc, &["wan0", "wan1"], S(10)).expect("both WANs up after start");
    let pairs = flow_pairs(&lab, 2, 2);
    let mut flows = lab
        .start_udp_flows(&as_refs(&pairs), Duration::from_millis(50), S(40))
        .expect("starting UDP flows");
    flows.wait_replies(5, S(10)).expect("UDP flows answered");

    lab.cut_isp(0).expect("cutting isp0");
    lab.cut_isp(1).expect("cutting isp1");
    wait_wan_state(&pcc, "wan0", false, S(3)).expect("wan0 down within 3 s");
    wait_wan_state(&pcc, "wan1", false, S(3)).expect("wan1 down within 3 s");
    let t_all_down = mono_now();
    let d0 = no_wan_up(&pcc.metrics().unwrap());
    std::thread::sleep(Duration::from_millis(1500));
    let m = pcc.metrics().unwrap();
    let d1 = no_wan_up(&m);
    eprintln!(
        "all_down: no_wan_up drops {d0} -> {d1} in 1.5 s; {}",
        health_summary(&m)
    );
    assert!(
        d1 >= d0 + 20.0,
        "pcc_drops_total{{reason=\"no_wan_up\"}} grew only {d0} -> {d1} while 4 flows sent 80 packets/s: {}",
        health_summary(&m)
    );
    let snap = flows.snapshot();
    let late: Vec<_> = snap
        .flows
        .iter()
        .filter(|f| f.between(t_all_down + 0.3, f64::MAX).count() > 0)
        .map(pcc_tests::health::FlowRecord::name)
        .collect();
    assert!(
        late.is_empty(),
        "replies while every WAN was down: {late:?}"
    );

    let t_restore = mono_now();
    lab.restore_isp(1).expect("restoring isp1");
    wait_wan_state(&pcc, "wan1", true, S(5)).expect("wan1 up within 5 s of isp1 recovering");
    wait_until(
        "every flow answers over wan1 again",
        S(5),
        Duration::from_millis(50),
        || {
            let s = flows.snapshot();
            Ok(s.flows
                .iter()
                .all(|f| f.between(t_restore, f64::MAX).any(|r| r.wan == Some(1)))
                .then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", flows.snapshot().describe()));
    let m = pcc.metrics().unwrap();
    assert_eq!(
        m.get("pcc_wan_up", &[("wan", "wan0")]),
        Some(0.0),
        "wan0 is still cut: {}",
        health_summary(&m)
    );
    wait_route(&lab, lab.server_addr(0), "wan1", S(3))
        .expect("router's own route on wan1 while only wan1 is up");
    std::thread::sleep(S(1));
    let end = flows.stop();
    for f in &end.flows {
        let after: Vec<_> = f.between(t_restore, f64::MAX).collect();
        assert!(
            after.len() >= 10 && after.iter().all(|r| r.wan == Some(1)),
            "{}: after isp1 recovered {} replies, want >= 10 all over wan1:\n{}",
            f.name(),
            after.len(),
            end.describe()
        );
    }
    assert!(pcc.is_running(), "pcc-ctl exited");
    for i in 0..2 {
        let (lan, all) = lab.lan_source_packets(i).expect("LAN-source counter");
        assert_eq!(
            lan, 0,
            "isp{i} received {lan} packets with a LAN (un-NATed) source address"
        );
        assert!(
            all > 0,
            "isp{i}'s counter saw no IPv4 at all: counter broken?"
        );
    }
    lab.restore_isp(0).expect("restoring isp0");
    wait_wan_state(&pcc, "wan0", true, S(5)).expect("wan0 up within 5 s of isp0 recovering");
}
