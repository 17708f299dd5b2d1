//! A monthly quota on wan0 (4 MB here, so a test can cross it): the dataplane's byte count
//! fills it, crossing 50 % makes wan0 backup-only (new connections leave through wan1), the
//! usage survives a controller restart, and `pcc-ctl quota` shows it and sets it back.

use std::time::Duration;

use pcc_tests::{Lab, Metrics, PccHandle, health, require_root};

const CONFIG: &str = r#"
[[quota]]
wan = "wan0"
limit = "4 MB"
reset_day = 1
thresholds = [{ at_percent = 50, action = "backup" }]
"#;

fn used(m: &Metrics) -> f64 {
    m.wan("pcc_wan_quota_used_bytes", "wan0")
}

fn threshold(m: &Metrics) -> f64 {
    m.wan("pcc_wan_quota_threshold", "wan0")
}

fn wait(pcc: &PccHandle, what: &str, ok: impl Fn(&Metrics) -> bool) {
    health::wait_metrics(pcc, what, Duration::from_secs(10), ok).unwrap();
}

/// The WANs (by address) new UDP connections from c2 to every server leave through.
fn wans_of_new_flows(lab: &Lab, base: u16) -> std::collections::BTreeSet<String> {
    lab.server_addrs()
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| lab.udp_probe("c2", s, 7, base + i as u16, 2).ok())
        .filter_map(|r| r.seen_addr().map(|a| a.to_string()))
        .collect()
}

#[test]
fn a_quota_fills_acts_survives_a_restart_and_can_be_set() {
    require_root!();
    let lab = Lab::with(2, 12);
    lab.start_http().expect("HTTP server");
    lab.start_udp_echo().expect("UDP echo server");
    let file = lab.http_file(1 << 20).expect("1 MB test file");
    let config = lab.dir().join("quota.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let state = lab.dir().join("state");
    let (config, state) = (
        config.to_string_lossy().into_owned(),
        state.to_string_lossy().into_owned(),
    );
    let args = ["--config", config.as_str(), "--state-dir", state.as_str()];
    let pcc = lab.start_pcc(&args).expect("starting pcc-ctl");
    assert_eq!(
        pcc.metrics()
            .unwrap()
            .wan("pcc_wan_quota_limit_bytes", "wan0"),
        4e6
    );

    // Downloads until 2 MB went through wan0 (about half of them take it).
    for server in lab.server_addrs().into_iter().cycle().take(24) {
        if used(&pcc.metrics().unwrap()) >= 2.2e6 {
            break;
        }
        let dl = lab.download("c1", server, &file, &[]).expect("download");
        assert_eq!(dl.sha256, file.sha256);
        std::thread::sleep(Duration::from_millis(1100));
    }
    wait(&pcc, "crossing 50 % of the quota", |m| threshold(m) == 1.0);
    assert_eq!(
        wans_of_new_flows(&lab, 20_000),
        ["198.18.2.2".to_string()].into(),
        "wan0 is backup-only past 50 %"
    );

    let before = used(&pcc.metrics().unwrap());
    pcc.stop().expect("SIGTERM");
    let pcc = lab.start_pcc(&args).expect("restarting pcc-ctl");
    assert!(
        used(&pcc.metrics().unwrap()) >= before,
        "usage kept across the restart: {} < {before}",
        used(&pcc.metrics().unwrap())
    );
    wait(&pcc, "the threshold after the restart", |m| {
        threshold(m) == 1.0
    });

    let show = lab
        .run_pcc(
            &["quota", "--lan", "lan0", "--state-dir", &state],
            Duration::from_secs(10),
        )
        .expect("pcc-ctl quota");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success() && text.contains("wan0"), "{text}");

    let set = lab
        .run_pcc(
            &[
                "quota",
                "--lan",
                "lan0",
                "--state-dir",
                &state,
                "--set",
                "wan0=0",
            ],
            Duration::from_secs(10),
        )
        .expect("pcc-ctl quota --set");
    assert!(set.status.success(), "{}", pcc_tests::proc::describe(&set));
    wait(&pcc, "the usage set to 0", |m| {
        used(m) < 1e6 && threshold(m) == 0.0
    });
    assert!(
        wans_of_new_flows(&lab, 21_000).contains("198.18.1.2"),
        "wan0 takes new connections again"
    );
}
