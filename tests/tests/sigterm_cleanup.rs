//! SIGTERM: pcc-ctl detaches everything and exits 0, also when it arrives during start-up.

use std::time::{Duration, Instant};

use pcc_tests::{Lab, require_root};

#[test]
fn sigterm_detaches_and_exits_zero() {
    require_root!();
    let lab = Lab::with(1, 2);
    lab.start_http().expect("HTTP server");
    let file = lab.http_file(256 << 10).expect("test file");
    assert_eq!(
        lab.leftover_attachments().unwrap(),
        None,
        "attachments before pcc-ctl ran"
    );
    let before = lab.router_footprint().unwrap();
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
    let egress = lab.egress_links().unwrap();
    let wans: Vec<&str> = egress.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(wans, ["wan0", "wan1"], "the TC egress hook on every WAN");

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
    lab.assert_router_as_before(&before);
    for (wan, id) in egress {
        assert!(
            !lab.link_exists(id).unwrap(),
            "the TC egress hook of {wan} (link {id}) is still attached"
        );
    }
}

/// A signal while pcc-ctl is still starting (here: waiting for a gateway that has no
/// carrier to resolve) ends the start-up through the same clean-up, not with everything
/// it had set up so far left behind.
#[test]
fn sigterm_during_start_up_leaves_nothing() {
    require_root!();
    let lab = Lab::with(1, 1);
    let before = lab.router_footprint().unwrap();
    lab.carrier_down(1).unwrap();
    let args = [
        "up",
        "--wan",
        "wan0,wan1",
        "--lan",
        "lan0",
        "--metrics",
        "127.0.0.1:9100",
    ];
    let mut p = lab.spawn_pcc(&args).expect("starting pcc-ctl");
    // The forwarding guard goes in before the gateways are resolved: once it is there,
    // pcc-ctl is mid-start.
    let started = Instant::now();
    while !lab
        .run("router", &["nft", "list", "tables"])
        .unwrap()
        .contains("pcc_guard_lan0")
    {
        assert!(
            p.try_wait().is_none(),
            "pcc-ctl exited early: {}",
            p.stderr_text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "pcc-ctl never got to installing its guard"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p.signal(libc::SIGTERM);
    let status = p.wait_timeout(Duration::from_secs(10));
    let (out, err) = (p.stdout_text(), p.stderr_text());
    assert!(status.is_some(), "pcc-ctl ignored SIGTERM while starting");
    assert!(
        status.unwrap().success(),
        "pcc-ctl after SIGTERM: {status:?}\n{err}"
    );
    assert!(!out.contains("ready"), "it finished starting first: {out}");
    assert_eq!(lab.leftover_attachments().unwrap(), None);
    lab.carrier_up(1).unwrap();
    assert_eq!(
        lab.router_footprint().unwrap(),
        before,
        "SIGTERM during start-up left something behind"
    );
}
