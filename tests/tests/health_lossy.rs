//! A lossy line is not a dead line: 20 % random loss on isp0 for 60 s with the default
//! thresholds never takes wan0 down, but the loss shows in pcc_wan_loss_ratio.

use std::time::{Duration, Instant};

use pcc_tests::{
    Lab,
    health::{health_summary, wait_wan_state, wait_wans_up},
    require_root,
};

#[test]
fn lossy_line_stays_up() {
    require_root!();
    let lab = Lab::with(1, 4);
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    wait_wans_up(&pcc, &["wan0", "wan1"], Duration::from_secs(10)).expect("both WANs up");
    let changes0 = pcc
        .metrics()
        .unwrap()
        .wan("pcc_wan_state_changes_total", "wan0");
    lab.lossy_isp(0, 20).expect("20% loss on isp0");
    let start = Instant::now();
    let mut max_loss = [0.0f64; 2];
    let mut samples = 0;
    while start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(1));
        let m = pcc.metrics().expect("metrics");
        samples += 1;
        assert_eq!(
            m.get("pcc_wan_up", &[("wan", "wan0")]),
            Some(1.0),
            "wan0 went down {:.0} s into 20% loss: {}",
            start.elapsed().as_secs_f64(),
            health_summary(&m)
        );
        assert_eq!(
            m.wan("pcc_wan_state_changes_total", "wan0"),
            changes0,
            "wan0 changed state under 20% loss: {}",
            health_summary(&m)
        );
        if start.elapsed() > Duration::from_secs(12) {
            for (i, w) in ["wan0", "wan1"].iter().enumerate() {
                max_loss[i] = max_loss[i].max(m.wan("pcc_wan_loss_ratio", w));
            }
        }
    }
    let m = pcc.metrics().unwrap();
    eprintln!(
        "lossy: {samples} samples, max loss ratio wan0 {:.3} wan1 {:.3}; now {}",
        max_loss[0],
        max_loss[1],
        health_summary(&m)
    );
    let loss0 = m.wan("pcc_wan_loss_ratio", "wan0");
    assert!(
        loss0 > 0.05 && loss0 < 0.5,
        "pcc_wan_loss_ratio{{wan=\"wan0\"}} = {loss0} under 20% loss: {}",
        health_summary(&m)
    );
    assert!(
        max_loss[1] < 0.02,
        "wan1 has no loss, yet its loss ratio reached {}",
        max_loss[1]
    );
    lab.lossy_isp(0, 0).expect("removing the loss");
}

/// `--max-loss`: the same kind of line, but losing more than the operator accepts, is taken
/// out on its loss ratio (not for want of replies), and comes back once it is clean.
#[test]
fn max_loss_takes_a_lossy_line_out_and_back() {
    require_root!();
    let lab = Lab::with(1, 2);
    let mut pcc = lab
        .start_pcc(&["--max-loss", "20", "--loss-window", "3"])
        .expect("starting pcc-ctl with --max-loss");
    wait_wans_up(&pcc, &["wan0", "wan1"], Duration::from_secs(10)).expect("both WANs up");
    lab.lossy_isp(0, 40).expect("40% loss on isp0");
    wait_wan_state(&pcc, "wan0", false, Duration::from_secs(8))
        .expect("wan0 out within 8 s of 40% loss over a 20% limit");
    let (_, log) = pcc.output();
    assert!(
        log.contains("loss over threshold"),
        "down for its loss ratio: {log}"
    );
    let m = pcc.metrics().unwrap();
    assert_eq!(m.get("pcc_wan_up", &[("wan", "wan1")]), Some(1.0));
    lab.lossy_isp(0, 0).expect("removing the loss");
    wait_wan_state(&pcc, "wan0", true, Duration::from_secs(10))
        .expect("wan0 back within 10 s of the loss ending");
}
