//! A lossy line is not a dead line: 20 % random loss on isp0 for 60 s with the default
//! thresholds never takes wan0 down, but the loss shows in pcc_wan_loss_ratio.

use std::time::{Duration, Instant};

use pcc_tests::health::{health_summary, wait_wans_up};
use pcc_tests::{Lab, require_root};

#[test]
fn lossy_line_stays_up() {
    require_root!();
    let lab = Lab::builder()
        .clients(1)
        .servers(4)
        .build()
        .expect("building the lab");
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
