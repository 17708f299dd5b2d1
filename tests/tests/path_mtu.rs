//! A PPPoE-like WAN (MTU 1492) and a 1400 link beyond the ISPs, LAN at 1500: the SYN a server
//! sees and the SYN-ACK a client sees carry an MSS clamped to the WAN (<= 1452), a DF packet over the WAN's MTU is answered
//! with "fragmentation needed" (mtu 1492), `tracepath` finds the path MTU 1400 (the ISP
//! answers for its core link), and 2 MB uploads and downloads arrive intact, with the kernel's
//! forwarding off and on.

use std::time::Duration;

use pcc_tests::{Checks, Lab, require_root};

const WAN_MTU: u16 = 1492;
const CORE_MTU: u16 = 1400;

#[test]
fn path_mtu_with_forwarding_off() {
    require_root!();
    check(false);
}

#[test]
fn path_mtu_with_forwarding_on() {
    require_root!();
    check(true);
}

/// The MSS options of the TCP SYNs in tcpdump's verbose output (`mss 1452`).
fn syn_mss(text: &str) -> Vec<u16> {
    text.split("mss ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

fn check(ip_forward: bool) {
    let lab = Lab::builder()
        .clients(2)
        .servers(4)
        .wan_mtu(Some(WAN_MTU))
        .core_mtu(Some(CORE_MTU))
        .ip_forward(ip_forward)
        .build()
        .expect("building the lab");
    lab.start_http().expect("HTTP server");
    let pcc = lab
        .start_pcc_wans_up(&[])
        .expect("pcc-ctl up, both WANs up");
    let mut checks = Checks::default();
    let name = format!("path MTU, forwarding {}", pcc_tests::on_off(ip_forward));

    // The SYN as the server sees it and the SYN-ACK as the client sees it: MSS clamped both
    // ways to what wan0/wan1 carry (1492 - 40; the server advertises 1460).
    let small = lab.http_file(1000).unwrap();
    let syn = lab
        .tcpdump(
            "inet",
            "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn and dst port 80",
            1,
        )
        .expect("tcpdump");
    let synack = lab
        .tcpdump(
            "c1",
            "tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)",
            1,
        )
        .expect("tcpdump");
    let dl = lab.download("c1", lab.server_addr(0), &small, &[]);
    checks.check(dl.is_ok(), || format!("small download: {dl:?}"));
    for (what, cap) in [
        ("the server saw SYN", syn),
        ("the client saw SYN-ACK", synack),
    ] {
        let seen = String::from_utf8_lossy(&cap.finish(Duration::from_secs(3)).stdout).into_owned();
        let mss = syn_mss(&seen);
        checks.check(
            !mss.is_empty() && mss.iter().all(|&m| m <= WAN_MTU - 40),
            || {
                format!(
                    "{what} MSS {mss:?}, want <= {} (tcpdump: {seen:?})",
                    WAN_MTU - 40
                )
            },
        );
    }

    // A DF datagram of 1500 bytes from a LAN host: "Frag needed and DF set (mtu = 1492)".
    let out = lab
        .exec(
            "c1",
            &[
                "ping",
                "-n",
                "-M",
                "do",
                "-s",
                "1472",
                "-c",
                "2",
                "-i",
                "0.3",
                "-W",
                "1",
                &lab.server_addr(1).to_string(),
            ],
        )
        .expect("ping");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    checks.check(
        text.contains(&format!("mtu = {WAN_MTU}")) || text.contains(&format!("mtu={WAN_MTU}")),
        || {
            format!(
                "DF ping of 1500 bytes got no \"fragmentation needed\" with mtu {WAN_MTU}: {text:?}"
            )
        },
    );

    // tracepath (UDP probes, DF): the router says 1492, isp0/isp1 say 1400 for their core link.
    let out = lab
        .exec_opts(
            "c2",
            &[
                "tracepath",
                "-n",
                "-m",
                "6",
                &lab.server_addr(2).to_string(),
            ],
            None,
            Duration::from_secs(40),
        )
        .expect("tracepath");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("tracepath:\n{text}");
    checks.check(text.contains(&format!("pmtu {CORE_MTU}")), || {
        format!("tracepath did not find pmtu {CORE_MTU}: {text:?}")
    });

    // 2 MB each way through the 1492/1400 path, from both clients, content intact.
    let file = lab.http_file(2 << 20).unwrap();
    for (i, client) in ["c1", "c2"].into_iter().enumerate() {
        let server = lab.server_addr(i + 2);
        match lab.download(client, server, &file, &["--max-time", "15"]) {
            Ok(d) => checks.check(d.sha256 == file.sha256 && d.bytes == file.size, || {
                format!(
                    "{client}: download of {} bytes came as {} bytes, sha256 {}",
                    file.size, d.bytes, d.sha256
                )
            }),
            Err(e) => checks.fail(format!("{client}: 2 MB download: {e:#}")),
        }
        match lab.upload(client, server, &file, &["--max-time", "15"]) {
            Ok(u) => checks.check(u.sha256 == file.sha256, || {
                format!(
                    "{client}: upload of {} bytes: the server got sha256 {:?}",
                    file.size, u.sha256
                )
            }),
            Err(e) => checks.fail(format!("{client}: 2 MB upload: {e:#}")),
        }
    }
    // Whatever was too big left through its own WAN translated, or not at all.
    for i in 0..2 {
        let (lan, _) = lab.lan_source_packets(i).unwrap();
        checks.check(lan == 0, || {
            format!("isp{i} saw {lan} packets with a LAN source")
        });
    }
    let m = pcc.metrics().expect("metrics");
    eprintln!(
        "pcc_packets_total: {:?}",
        m.by_label("pcc_packets_total", "reason")
    );
    eprintln!(
        "pcc_drops_total: {:?}",
        m.by_label("pcc_drops_total", "reason")
    );
    checks.finish(&name);
}
