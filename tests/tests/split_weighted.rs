//! Same load as split_equal with `--weight wan0=2,wan1=1`: about two thirds on wan0.

use pcc_tests::{Lab, require_root, scenario};

#[test]
fn connections_follow_weights() {
    require_root!();
    let lab = Lab::with(3, 50);
    let pcc = lab
        .start_pcc(&["--weight", "wan0=2,wan1=1"])
        .expect("starting pcc-ctl");
    let spread = scenario::connection_spread(&lab, Some(&pcc)).expect("150 connections");
    eprintln!("split_weighted: {}", spread.summary());
    assert!(
        spread.stray.is_empty(),
        "server saw non-WAN sources: {:?}",
        spread.stray
    );
    let share = spread.share(0);
    assert!(
        (0.55..=0.78).contains(&share),
        "wan0 share {:.1}% outside 55%..78% (weight 2:1 means ~67%): {}",
        100.0 * share,
        spread.summary()
    );
    let fshare = spread.flows_share(0).expect("flow counters");
    assert!(
        (fshare - share).abs() <= 0.10,
        "metrics and server log disagree: wan0 {:.1}% of flows vs {:.1}% of connections",
        100.0 * fshare,
        100.0 * share
    );
}
