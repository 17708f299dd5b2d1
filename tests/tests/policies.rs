//! Source-subnet policies from a `--config` file: staff (c1) prefer wan0 and fall back to
//! wan1, guests (c2 and c3's /31) balance over both, and a printer (c3, a /32 inside the
//! guests) is pinned to wan1 with no fallback. Each host's new connections leave only through
//! its allowed WANs; when wan0 dies the staff fall back, and when wan1 dies the printer's
//! connections are dropped and counted (`policy_no_wan`) while everyone else carries on.

use std::{collections::BTreeSet, time::Duration};

use pcc_tests::{Lab, PccHandle, health, require_root};

const POLICIES: &str = r#"
[[policy]]
name = "staff"
subnets = ["198.19.10.11/32"]
wans = ["wan0"]
fallback = ["wan1"]

[[policy]]
name = "guests"
subnets = ["198.19.10.12/31"]
wans = ["wan0", "wan1"]

[[policy]]
name = "printer"
subnets = ["198.19.10.13/32"]
wans = ["wan1"]
"#;

/// The WANs (by address) that `client`'s new UDP connections to every server left through;
/// `None` for a connection that got no answer.
fn wans_used(lab: &Lab, client: &str, base_port: u16) -> BTreeSet<Option<String>> {
    lab.server_addrs()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            lab.udp_probe(client, s, 7, base_port + i as u16, 1)
                .ok()
                .and_then(|r| r.seen_addr())
                .map(|a| a.to_string())
        })
        .collect()
}

fn set(addrs: &[&str]) -> BTreeSet<Option<String>> {
    addrs.iter().map(|a| Some(a.to_string())).collect()
}

fn wait_wan(pcc: &PccHandle, wan: &str, up: bool) {
    health::wait_wan_state(pcc, wan, up, Duration::from_secs(10)).unwrap();
}

#[test]
fn subnets_use_only_their_wans_and_fall_back_as_configured() {
    require_root!();
    let lab = Lab::with(3, 12);
    lab.start_udp_echo().expect("UDP echo server");
    let file = lab.dir().join("policies.toml");
    std::fs::write(&file, POLICIES).unwrap();
    let pcc = lab
        .start_pcc(&["--config", &file.to_string_lossy()])
        .expect("starting pcc-ctl");
    let (wan0, wan1) = ("198.18.1.2", "198.18.2.2");

    assert_eq!(
        wans_used(&lab, "c1", 10_000),
        set(&[wan0]),
        "staff: wan0 only"
    );
    assert_eq!(
        wans_used(&lab, "c2", 10_000),
        set(&[wan0, wan1]),
        "guests: both"
    );
    assert_eq!(
        wans_used(&lab, "c3", 10_000),
        set(&[wan1]),
        "printer: wan1 only"
    );

    lab.run("router", &["ip", "link", "set", "wan0", "down"])
        .unwrap();
    wait_wan(&pcc, "wan0", false);
    assert_eq!(
        wans_used(&lab, "c1", 11_000),
        set(&[wan1]),
        "staff fell back to wan1"
    );
    assert_eq!(
        wans_used(&lab, "c2", 11_000),
        set(&[wan1]),
        "guests on the live WAN"
    );

    lab.run("router", &["ip", "link", "set", "wan0", "up"])
        .unwrap();
    lab.run("router", &["ip", "link", "set", "wan1", "down"])
        .unwrap();
    wait_wan(&pcc, "wan0", true);
    wait_wan(&pcc, "wan1", false);
    let before = pcc.metrics().unwrap();
    assert_eq!(
        wans_used(&lab, "c3", 12_000),
        [None].into(),
        "printer has no WAN"
    );
    assert_eq!(
        wans_used(&lab, "c1", 12_000),
        set(&[wan0]),
        "staff back on wan0"
    );
    let dropped = pcc
        .metrics()
        .unwrap()
        .get("pcc_drops_total", &[("reason", "policy_no_wan")])
        .unwrap_or(0.0)
        - before
            .get("pcc_drops_total", &[("reason", "policy_no_wan")])
            .unwrap_or(0.0);
    assert!(
        dropped >= 12.0,
        "the printer's connections were counted: {dropped}"
    );
}
