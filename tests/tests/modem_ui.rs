//! A modem's web UI inside wan0's connected subnet (198.18.1.3, its own MAC, not the gateway)
//! answers every LAN client, with the kernel's forwarding off and on: the connected route pins
//! the connection to wan0, translated to wan0's address, sent to the modem's own MAC. The ISP
//! does not route between its customers, so nothing may go through the gateway instead.

use pcc_tests::{Checks, Lab, MODEM_ADDR, require_root};

#[test]
fn modem_ui_answers_every_client_with_forwarding_off() {
    require_root!();
    check(false);
}

#[test]
fn modem_ui_answers_every_client_with_forwarding_on() {
    require_root!();
    check(true);
}

fn check(ip_forward: bool) {
    let lab = Lab::builder()
        .clients(3)
        .servers(2)
        .modem_ui(true)
        .ip_forward(ip_forward)
        .build()
        .expect("building the lab");
    lab.start_http_on("modem0")
        .expect("HTTP server in the modem");
    let file = lab.http_file(1000).unwrap();
    let _pcc = lab
        .start_pcc_wans_up(&[])
        .expect("pcc-ctl up, both WANs up");
    let mut checks = Checks::default();
    for c in lab.client_names() {
        let dl = lab.download(&c, MODEM_ADDR, &file, &["--max-time", "5"]);
        checks.check(dl.as_ref().is_ok_and(|d| d.sha256 == file.sha256), || {
            format!("{c}: the modem UI {MODEM_ADDR}: {dl:?}")
        });
    }
    let log = lab.http_log_of("modem0").expect("modem log");
    for e in &log {
        checks.check(e.client == lab.wan_addr(0), || {
            format!(
                "the modem saw a request from {}, not wan0's address",
                e.client
            )
        });
    }
    let hairpin = lab.isp_hairpin_packets().unwrap();
    checks.check(hairpin == 0, || {
        format!("{hairpin} packets for the modem were sent to isp0's gateway")
    });
    checks.finish(&format!(
        "modem UI, forwarding {}",
        pcc_tests::on_off(ip_forward)
    ));
}
