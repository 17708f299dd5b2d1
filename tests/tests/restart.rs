//! The dataplane outlives its controller: after SIGKILL the attached programs keep
//! forwarding (established connections keep their translation, new ones still open), a
//! restart with a different configuration is refused without touching anything, and the next
//! `pcc-ctl up` with the same interfaces adopts the pinned maps and links so a download
//! running across all of it completes intact. SIGTERM, or `pcc-ctl down` after a kill,
//! removes everything: programs, pins, the forwarding guard.

use std::time::Duration;

use pcc_tests::{Lab, require_root};

fn pins_left(lab: &Lab) -> bool {
    lab.bpffs_dir().join("pcc/lan0").exists()
}

fn guard_left(lab: &Lab) -> bool {
    lab.run("router", &["nft", "list", "tables"])
        .unwrap()
        .contains("pcc_guard_lan0")
}

/// Every program attached; returns the TC egress hooks' links (WAN, link id).
fn assert_all_attached(lab: &Lab) -> Vec<(String, u64)> {
    let mut xdp = lab.xdp_interfaces("router").unwrap();
    xdp.sort();
    assert_eq!(xdp, ["lan0", "wan0", "wan1"], "programs attached");
    let egress = lab.egress_links().unwrap();
    let wans: Vec<&str> = egress.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(wans, ["wan0", "wan1"], "TC egress hooks attached");
    egress
}

fn assert_egress_detached(lab: &Lab, links: &[(String, u64)]) {
    for (wan, id) in links {
        assert!(
            !lab.link_exists(*id).unwrap(),
            "the TC egress hook of {wan} (link {id}) is still attached"
        );
    }
}

#[test]
fn a_killed_controller_keeps_forwarding_and_the_next_one_adopts_it() {
    require_root!();
    let lab = Lab::builder().build().expect("building the lab");
    lab.start_udp_echo().expect("UDP echo server");
    lab.start_http().expect("HTTP server");
    let file = lab.http_file(8 << 20).expect("8 MB test file");
    let server = lab.server_addr(0);
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let flow = lab.udp_probe("c1", server, 7, 5400, 5).expect("UDP flow");
    let same_mapping = |when: &str| {
        let r = lab
            .udp_probe("c1", server, 7, 5400, 3)
            .unwrap_or_else(|e| panic!("the UDP flow {when}: {e:#}"));
        assert_eq!(r.seen_as, flow.seen_as, "translation kept {when}");
    };

    std::thread::scope(|s| {
        // 8 MB at 2 MB/s: about 4 s, across the kill, the refused start and the adoption.
        let download = s.spawn(|| lab.download_paced("c2", lab.server_addr(1), &file, 2_000_000));
        std::thread::sleep(Duration::from_millis(700));
        pcc.kill();
        let egress = assert_all_attached(&lab);
        assert!(
            pins_left(&lab) && guard_left(&lab),
            "state kept for adoption"
        );
        same_mapping("without a controller");
        lab.udp_probe("c1", server, 7, 5401, 3)
            .expect("a new connection without a controller");

        let out = lab
            .pcc_command(&[
                "up",
                "--wan",
                "wan0,wan1",
                "--lan",
                "lan0",
                "--max-connections",
                "1000",
                "--metrics",
                "127.0.0.1:9101",
            ])
            .unwrap()
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "a different capacity must be refused"
        );
        assert!(
            stderr.contains("--max-connections 65536, not 1000")
                && stderr.contains("pcc-ctl down --lan lan0"),
            "{stderr}"
        );
        assert_all_attached(&lab);

        let mut pcc = lab.start_pcc(&[]).expect("restarting pcc-ctl");
        same_mapping("after the adoption");
        assert_eq!(
            assert_all_attached(&lab),
            egress,
            "the TC egress hooks' links adopted, not replaced"
        );
        let dl = download
            .join()
            .unwrap()
            .expect("download across the restarts");
        assert_eq!(dl.sha256, file.sha256, "download intact");
        let (_, log) = pcc.output();
        assert!(log.contains("adopted the running dataplane"), "{log}");

        pcc.stop().expect("SIGTERM");
        assert_egress_detached(&lab, &egress);
    });
    assert!(lab.xdp_interfaces("router").unwrap().is_empty(), "detached");
    assert!(!pins_left(&lab), "pins removed");
    assert!(!guard_left(&lab), "guard removed");
}

#[test]
fn down_removes_what_a_killed_controller_left() {
    require_root!();
    let lab = Lab::builder().build().expect("building the lab");
    let down = || lab.pcc_down().expect("pcc-ctl down");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let (ok, text) = down();
    assert!(!ok && text.contains("stop that one with SIGTERM"), "{text}");
    assert_all_attached(&lab);
    pcc.kill();
    let egress = assert_all_attached(&lab);
    let (ok, text) = down();
    assert!(ok && text.contains("programs detached"), "{text}");
    assert_egress_detached(&lab, &egress);
    assert!(lab.xdp_interfaces("router").unwrap().is_empty(), "detached");
    assert!(!pins_left(&lab) && !guard_left(&lab), "nothing left");
    let (ok, text) = down();
    assert!(ok && text.contains("nothing of pcc is left"), "{text}");
}
