//! A LAN interface deleted and created again under the same name (a bridge restarted, a NIC
//! replugged: a new ifindex and a new MAC) is followed without a restart: pcc attaches to the
//! new interface, points its redirects and LAN table at it and announces the router's address
//! with gratuitous ARP, so the clients' UDP and TCP work again within seconds (their ARP caches
//! still hold the old MAC); exit then leaves nothing behind.

use std::time::{Duration, Instant};

use pcc_tests::{LAN_GATEWAY, Lab, require_root};

/// How soon the clients must be served again after the new interface is up.
const BACK_WITHIN: Duration = Duration::from_secs(5);

#[test]
fn a_recreated_lan_interface_carries_traffic_again() {
    require_root!();
    let lab = Lab::with(2, 4);
    lab.start_udp_echo().expect("UDP echo server");
    lab.start_http().expect("HTTP server");
    let file = lab.http_file(1 << 20).expect("1 MB test file");
    let before = lab.router_footprint().unwrap();
    let mut pcc = lab
        .start_pcc_wans_up(&[])
        .expect("pcc-ctl up, both WANs up");
    lab.udp_probe("c1", lab.server_addr(0), 7, 5600, 3)
        .expect("LAN traffic before");
    let old_mac = lab.mac("router", "lan0").unwrap();

    lab.run("router", &["ip", "link", "del", "lan0"]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let sw = lab.ns("switch");
    lab.ip_batch(
        "router",
        &[
            format!("link add lan0 type veth peer name p-lan netns {sw}"),
            format!("addr add {LAN_GATEWAY}/24 dev lan0"),
            "link set lan0 up".into(),
        ],
    )
    .unwrap();
    lab.ip_batch("switch", &["link set p-lan master br0 up".into()])
        .unwrap();
    lab.sh("router", "ethtool -K lan0 tx off gro on >/dev/null")
        .unwrap();
    lab.sh("switch", "ethtool -K p-lan tx off gro on >/dev/null")
        .unwrap();
    let up = Instant::now();
    let new_mac = lab.mac("router", "lan0").unwrap();
    assert_ne!(
        old_mac, new_mac,
        "the new lan0 should have a MAC of its own"
    );

    // UDP from both clients (new source ports: new connections), then a TCP download.
    let mut served = Vec::new();
    for (i, client) in ["c1", "c2"].iter().enumerate() {
        let deadline = up + BACK_WITHIN;
        let mut port = 20_000;
        let reply = loop {
            port += 1;
            match lab.udp_probe(client, lab.server_addr(i), 7, port, 1) {
                Ok(r) => break r,
                Err(e) if Instant::now() > deadline => {
                    let (_, log) = pcc.output();
                    panic!(
                        "{client}: no UDP reply within {BACK_WITHIN:?} of the new lan0: {e:#}\npcc-ctl said:\n{log}"
                    );
                }
                Err(_) => {}
            }
        };
        served.push((client, reply, up.elapsed()));
    }
    // The kernel does not forward (ip_forward=0): only pcc can have carried the replies. A
    // connection from before the interface went keeps working.
    lab.udp_probe("c1", lab.server_addr(0), 7, 5600, 3)
        .expect("the first host's flow again");
    let dl = lab
        .download("c1", lab.server_addr(2), &file, &["--max-time", "5"])
        .expect("TCP download through the new lan0");
    assert_eq!(dl.sha256, file.sha256, "download through the new lan0");
    assert!(
        up.elapsed() < BACK_WITHIN + Duration::from_secs(5),
        "traffic back after {:?}",
        up.elapsed()
    );
    eprintln!("served again: {served:?}");
    assert!(
        lab.xdp_interfaces("router")
            .unwrap()
            .iter()
            .any(|i| i == "lan0"),
        "the program is attached to the new lan0"
    );
    let exit = pcc.stop().expect("stopping pcc-ctl");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
    assert!(
        exit.stderr.contains("LAN lan0 is a new interface"),
        "{}",
        exit.stderr
    );
    lab.assert_router_as_before(&before);
    let (ok, said) = lab.pcc_down().unwrap();
    assert!(ok && said.contains("nothing of pcc is left"), "{said}");
}
