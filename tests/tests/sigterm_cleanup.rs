//! SIGTERM: pcc-ctl detaches everything and exits 0.

use pcc_tests::{Lab, require_root};

#[test]
fn sigterm_detaches_and_exits_zero() {
    require_root!();
    let lab = Lab::builder()
        .clients(1)
        .servers(2)
        .build()
        .expect("building the lab");
    lab.start_http().expect("HTTP server");
    let file = lab.http_file(256 << 10).expect("test file");
    assert_eq!(
        lab.leftover_attachments().unwrap(),
        None,
        "attachments before pcc-ctl ran"
    );
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let dl = lab
        .download("c1", lab.server_addr(0), &file, &[])
        .expect("download through pcc");
    assert_eq!(dl.sha256, file.sha256);
    let attached = lab.xdp_interfaces("router").unwrap();
    assert!(
        !attached.is_empty(),
        "no XDP program attached in the router while pcc-ctl runs"
    );

    let exit = pcc.stop().expect("stopping pcc-ctl with SIGTERM");
    assert_eq!(
        exit.code(),
        Some(0),
        "pcc-ctl after SIGTERM: {}",
        exit.describe()
    );
    let text = lab.run("router", &["ip", "link", "show"]).unwrap();
    assert!(
        !text.contains("xdp"),
        "`ip link show` in the router still shows xdp:\n{text}"
    );
    assert_eq!(
        lab.leftover_attachments().unwrap(),
        None,
        "left attached after SIGTERM"
    );
}
