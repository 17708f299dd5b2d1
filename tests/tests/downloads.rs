//! Each client downloads a 2 MB file through pcc; the bytes arrive intact and the server sees
//! the connection coming from one of the router's WAN addresses.

use pcc_tests::{Lab, require_root, wan_of_addr};

#[test]
fn downloads_are_intact() {
    require_root!();
    let lab = Lab::builder().build().expect("building the lab");
    lab.start_http().expect("HTTP server");
    let file = lab.http_file(2 << 20).expect("2 MB test file");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");

    for (i, client) in lab.client_names().iter().enumerate() {
        let server = lab.server_addr(i);
        let dl = lab
            .download(client, server, &file, &[])
            .unwrap_or_else(|e| panic!("{client}: download from {server} through pcc: {e:#}"));
        assert_eq!(dl.bytes, file.size, "{client}: downloaded size");
        assert_eq!(
            dl.sha256, file.sha256,
            "{client}: sha256 of the download from {server}"
        );
    }
    let log = lab.http_log().expect("http log");
    assert_eq!(
        log.len(),
        lab.client_count(),
        "one request per client: {log:?}"
    );
    for e in &log {
        assert!(
            wan_of_addr(e.client).is_some(),
            "server saw source {} (expected a WAN address 198.18.1.2/198.18.2.2): {e:?}",
            e.client
        );
    }
    let m = pcc.metrics().expect("metrics");
    let rx = m.sum("pcc_wan_rx_bytes_total");
    assert!(
        rx >= (lab.client_count() as u64 * file.size) as f64,
        "pcc_wan_rx_bytes_total {rx} < bytes downloaded"
    );
    let exit = pcc.stop().expect("stopping pcc-ctl");
    assert_eq!(exit.code(), Some(0), "pcc-ctl exit: {}", exit.describe());
}
