//! The per-WAN byte and packet counters account for a known download volume within a few
//! percent (frames carry their Ethernet, IP and TCP headers, ~4.5 % at 1500-byte MTU).

use pcc_tests::{Lab, require_root};

#[test]
fn counters_account_for_a_known_download_volume() {
    require_root!();
    let lab = Lab::with(1, 2);
    lab.start_http().expect("HTTP server");
    let size = 8u64 << 20;
    let file = lab.http_file(size).expect("test file");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let before = pcc.metrics().expect("metrics");
    let sum = |m: &pcc_tests::Metrics, name: &str| m.wan(name, "wan0") + m.wan(name, "wan1");
    let dl = lab
        .download("c1", lab.server_addr(0), &file, &[])
        .expect("download");
    assert_eq!(dl.sha256, file.sha256);
    let after = pcc.metrics().expect("metrics");
    let rx = sum(&after, "pcc_wan_rx_bytes_total") - sum(&before, "pcc_wan_rx_bytes_total");
    let ratio = rx / size as f64;
    assert!(
        (1.0..1.08).contains(&ratio),
        "rx bytes {rx} for a {size}-byte download: ratio {ratio:.3}"
    );
    let rx_packets =
        sum(&after, "pcc_wan_rx_packets_total") - sum(&before, "pcc_wan_rx_packets_total");
    assert!(
        rx_packets >= size as f64 / 1448.0,
        "{rx_packets} packets for {size} bytes"
    );
    let tx = sum(&after, "pcc_wan_tx_bytes_total") - sum(&before, "pcc_wan_tx_bytes_total");
    assert!(
        tx > 0.0 && tx < rx / 10.0,
        "upstream (requests and ACKs) {tx} bytes"
    );
}
