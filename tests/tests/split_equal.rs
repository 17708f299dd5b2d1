//! 3 clients x 50 server addresses, default classifier (both-addresses), equal weights: the
//! connections spread over both WANs.

use pcc_tests::{Lab, require_root, scenario};

#[test]
fn connections_split_evenly() {
    require_root!();
    let lab = Lab::with(3, 50);
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let spread = scenario::connection_spread(&lab, Some(&pcc)).expect("150 connections");
    eprintln!("split_equal: {}", spread.summary());
    assert!(
        spread.stray.is_empty(),
        "server saw non-WAN sources: {:?}",
        spread.stray
    );
    let share = spread.share(0);
    assert!(
        (0.35..=0.65).contains(&share),
        "wan0 share {:.1}% outside 35%..65%: {}",
        100.0 * share,
        spread.summary()
    );
    let flows = spread.flows_created.expect("flow counters");
    assert!(
        flows[0] + flows[1] >= spread.total() as f64,
        "pcc_flows_created_total grew by {} < {} connections: {}",
        flows[0] + flows[1],
        spread.total(),
        spread.summary()
    );
    let fshare = spread.flows_share(0).expect("flows share");
    assert!(
        (fshare - share).abs() <= 0.10,
        "metrics and server log disagree: wan0 {:.1}% of flows vs {:.1}% of connections",
        100.0 * fshare,
        100.0 * share
    );
}
