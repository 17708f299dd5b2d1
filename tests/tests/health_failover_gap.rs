//! How long UDP flows pinned to wan0 go without replies when isp0's internet dies: the longest
//! reply gap of each such flow stays under 3 s (generous: `cargo xtask bench failover` reports
//! the real figure), and flows on wan1 do not notice.

use std::time::Duration;

use pcc_tests::{
    Lab,
    health::{as_refs, flow_pairs, mono_now, wait_wans_up},
    require_root,
};

#[test]
fn failover_gap_is_short() {
    require_root!();
    let lab = Lab::with(3, 12);
    lab.start_udp_echo().expect("UDP echo server");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    wait_wans_up(&pcc, &["wan0", "wan1"], Duration::from_secs(10)).expect("both WANs up");
    let pairs = flow_pairs(&lab, 3, 4);
    let mut flows = lab
        .start_udp_flows(
            &as_refs(&pairs),
            Duration::from_millis(50),
            Duration::from_secs(30),
        )
        .expect("starting UDP flows");
    flows
        .wait_replies(5, Duration::from_secs(10))
        .expect("UDP flows answered");
    std::thread::sleep(Duration::from_secs(1));
    let t_cut = mono_now();
    lab.cut_isp(0).expect("cutting isp0");
    std::thread::sleep(Duration::from_secs(5));
    let t_end = mono_now();
    let r = flows.stop();
    lab.restore_isp(0).expect("restoring isp0");

    let on0 = r.on_wan_at(0, t_cut);
    let on1 = r.on_wan_at(1, t_cut);
    assert!(!on0.is_empty(), "no flow on wan0:\n{}", r.describe());
    let mut worst = 0.0f64;
    for &i in &on0 {
        let f = &r.flows[i];
        let gap = f.longest_gap(t_cut - 0.5, t_end);
        worst = worst.max(gap);
        eprintln!("failover_gap: {} (wan0) longest gap {gap:.3} s", f.name());
        assert!(
            gap < 3.0,
            "{}: {gap:.2} s without replies after isp0 died:\n{}",
            f.name(),
            r.describe()
        );
        assert!(
            f.between(t_cut, t_end).any(|x| x.wan == Some(1)),
            "{} never answered over wan1",
            f.name()
        );
    }
    for &i in &on1 {
        let f = &r.flows[i];
        let gap = f.longest_gap(t_cut - 0.5, t_end);
        eprintln!("failover_gap: {} (wan1) longest gap {gap:.3} s", f.name());
        assert!(
            gap < 1.5,
            "{} was on wan1, yet went {gap:.2} s without replies",
            f.name()
        );
    }
    eprintln!(
        "failover_gap: worst of {} flows on wan0: {worst:.3} s",
        on0.len()
    );
}
