//! Carrier loss on wan0 (`ip link set up0 down` in isp0) is seen at once from netlink: wan0 is
//! down within 1.5 s, its flows continue over wan1; carrier back, wan0 back.

use std::time::Duration;

use pcc_tests::{
    health::{FlowBed, health_summary, mono_now, wait_route, wait_wan_state},
    require_root,
};

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn carrier_loss_fails_over_and_back() {
    require_root!();
    let mut bed = FlowBed::start(&[], S(30)).expect("lab, pcc-ctl and UDP flows");
    let (lab, pcc) = (&bed.lab, &bed.pcc);
    let t_cut = mono_now();
    lab.carrier_down(0).expect("carrier down");
    let t_down = wait_wan_state(pcc, "wan0", false, Duration::from_millis(1500))
        .expect("wan0 down within 1.5 s of losing carrier");
    eprintln!(
        "carrier: wan0 down {:.3} s after carrier loss",
        t_down - t_cut
    );
    wait_route(lab, lab.server_addr(0), "wan1", S(2)).expect("router's own route on wan1");
    bed.wait_moved_to_wan1(t_cut, S(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (lab, pcc) = (&bed.lab, &bed.pcc);

    let t_up_cmd = mono_now();
    lab.carrier_up(0).expect("carrier up");
    let t_up = wait_wan_state(pcc, "wan0", true, S(5))
        .expect("wan0 up within 5 s of its carrier returning");
    eprintln!(
        "carrier: wan0 up {:.3} s after carrier returned",
        t_up - t_up_cmd
    );
    wait_route(lab, lab.server_addr(0), "wan0", S(2)).expect("router's own route back on wan0");
    std::thread::sleep(S(1));
    let end = bed.flows.stop();
    for f in &end.flows {
        assert!(
            f.between(t_up, f64::MAX).count() >= 8,
            "{}: traffic stopped after wan0 came back:\n{}",
            f.name(),
            end.describe()
        );
    }
    let m = pcc.metrics().unwrap();
    assert!(
        m.wan("pcc_wan_state_changes_total", "wan0") >= 2.0
            && m.wan("pcc_wan_state_changes_total", "wan1") == 0.0,
        "state changes: {}",
        health_summary(&m)
    );
}
