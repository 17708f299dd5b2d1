//! The balancing methods on the same load as split_equal (3 clients x 50 servers, 150 new
//! connections): `nth` hands them out in turn by weight, `ecmp` hashes the 5-tuple evenly,
//! `least-loaded` follows the configured line rates while the lines are idle. Stickiness per
//! method: `pinned.rs`.

use pcc_tests::{Lab, require_root, scenario};

/// split_equal's lab: 3 clients, 50 servers.
fn spread_lab() -> Lab {
    Lab::with(3, 50)
}

fn wan0_share(args: &[&str]) -> f64 {
    let lab = spread_lab();
    let pcc = lab.start_pcc(args).expect("starting pcc-ctl");
    let spread = scenario::connection_spread(&lab, Some(&pcc)).expect("150 connections");
    eprintln!("{}: {}", args.join(" "), spread.summary());
    assert!(
        spread.stray.is_empty(),
        "non-WAN sources: {:?}",
        spread.stray
    );
    spread.share(0)
}

#[test]
fn nth_hands_connections_out_in_turn_by_weight() {
    require_root!();
    let share = wan0_share(&["--method", "nth", "--weight", "wan0=2,wan1=1"]);
    // Exact turns per CPU: 2 of every 3 on wan0, off by at most a turn or two per CPU.
    assert!(
        (0.62..=0.72).contains(&share),
        "wan0 share {:.1}% (2:1 in turn means 66.7%)",
        100.0 * share
    );
}

#[test]
fn ecmp_spreads_the_five_tuple() {
    require_root!();
    let share = wan0_share(&["--method", "ecmp"]);
    assert!(
        (0.35..=0.65).contains(&share),
        "wan0 share {:.1}% outside 35%..65%",
        100.0 * share
    );
}

#[test]
fn least_loaded_follows_the_line_rates() {
    require_root!();
    let share = wan0_share(&["--method", "least-loaded", "--line-rate", "wan0=20,wan1=10"]);
    assert!(
        (0.55..=0.78).contains(&share),
        "wan0 share {:.1}% (20 vs 10 Mbit/s idle lines means ~67%)",
        100.0 * share
    );
}

/// A download filling wan0's or wan1's configured 20 Mbit/s: new connections go elsewhere.
#[test]
fn least_loaded_steers_new_connections_off_a_busy_line() {
    require_root!();
    let lab = spread_lab();
    lab.start_http().expect("HTTP server");
    let big = lab.http_file(16 << 20).expect("16 MB test file");
    let pcc = lab
        .start_pcc(&["--method", "least-loaded", "--line-rate", "wan0=20,wan1=20"])
        .expect("starting pcc-ctl");
    std::thread::scope(|s| {
        // 2.5 MB/s = 20 Mbit/s for about 6 s.
        let download = s.spawn(|| lab.download_paced("c3", lab.server_addr(49), &big, 2_500_000));
        std::thread::sleep(std::time::Duration::from_millis(2500));
        let m = pcc.metrics().expect("metrics");
        let rx = [
            m.wan("pcc_wan_rx_bytes_total", "wan0"),
            m.wan("pcc_wan_rx_bytes_total", "wan1"),
        ];
        let busy = usize::from(rx[1] > rx[0]);
        let spread = scenario::connection_spread(&lab, Some(&pcc)).expect("150 connections");
        eprintln!("busy wan{busy} (rx {rx:?}): {}", spread.summary());
        assert!(
            spread.share(busy) < 0.25,
            "wan{busy} is full but took {:.1}% of the new connections",
            100.0 * spread.share(busy)
        );
        let dl = download.join().unwrap().expect("the download");
        assert_eq!(dl.sha256, big.sha256);
    });
}
