//! `--xdp-mode generic` runs where GRO would have run, so a TCP download could reach the
//! program as 64 KB super-frames (bigger than any MTU: passed to the kernel, `over_ingress_mtu`,
//! and dropped there with forwarding off). The kernel skips GRO on a device with a generic
//! program (`netif_elide_gro`) and turns LRO and hardware GRO off when one is attached, so
//! pcc needs to change nothing: two 20 MB downloads through a lab whose interfaces all have GRO
//! on arrive intact, through the dataplane alone (no frame over the MTU reaches it), with kernel
//! forwarding off and on. (Super-frames and partial checksums from a veth peer with `tx on`
//! are another matter: see `veth_peer_checksums.rs`.)

use pcc_tests::{Lab, require_root};

const PORTS: [&str; 3] = ["lan0", "wan0", "wan1"];

/// `generic-receive-offload` of lan0, wan0, wan1.
fn gro(lab: &Lab) -> Vec<bool> {
    lab.ethtool_feature("router", &PORTS, "generic-receive-offload")
        .unwrap()
}

fn bulk_download_in_generic_mode(ip_forward: bool) {
    let lab = Lab::builder()
        .clients(1)
        .servers(2)
        .ip_forward(ip_forward)
        .build()
        .expect("building the lab");
    lab.start_http().expect("HTTP server");
    let file = lab.http_file(20 << 20).expect("20 MB test file");
    assert!(gro(&lab).iter().all(|on| *on), "the lab has GRO on");

    let pcc = lab
        .start_pcc(&["--xdp-mode", "generic"])
        .expect("starting pcc-ctl in generic mode");
    assert!(
        gro(&lab).iter().all(|on| *on),
        "GRO is left on: {:?}",
        gro(&lab)
    );
    for server in lab.server_addrs() {
        let dl = lab
            .download("c1", server, &file, &[])
            .unwrap_or_else(|e| panic!("20 MB from {server} (forwarding {ip_forward}): {e:#}"));
        assert_eq!(dl.bytes, file.size, "size of the download from {server}");
        assert_eq!(
            dl.sha256, file.sha256,
            "sha256 of the download from {server}"
        );
        eprintln!(
            "forwarding {ip_forward}: 20 MB from {server} in {:.2} s",
            dl.seconds
        );
    }
    let m = pcc.metrics().expect("metrics");
    let passed = m
        .get("pcc_packets_total", &[("reason", "over_ingress_mtu")])
        .unwrap_or(0.0);
    assert_eq!(passed, 0.0, "super-frames reached the program");
    let wan_rx = m.sum("pcc_wan_rx_bytes_total");
    assert!(
        wan_rx >= 2.0 * file.size as f64,
        "the dataplane carried {wan_rx} bytes of two 20 MB downloads"
    );
    let exit = pcc.stop().expect("stopping pcc-ctl");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
}

#[test]
fn generic_mode_carries_a_20_mb_download_with_forwarding_off() {
    require_root!();
    bulk_download_in_generic_mode(false);
}

#[test]
fn generic_mode_carries_a_20_mb_download_with_forwarding_on() {
    require_root!();
    bulk_download_in_generic_mode(true);
}
