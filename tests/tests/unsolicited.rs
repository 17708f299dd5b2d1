//! Packets nobody on the LAN asked for (UDP and TCP SYNs from the ISPs and the internet, to
//! the router's WAN addresses and straight to LAN addresses) never reach the LAN while pcc
//! runs, with the kernel's forwarding off and on.

use pcc_tests::{Lab, require_root};

/// Source port of the generic unsolicited probes.
const SPORT: u16 = 6666;
/// Source port of the probes aimed at the NAT port of a live flow.
const SPORT_NAT: u16 = 6667;

const SENDER_PY: &str = r#"
import socket, sys, time
# argv: sport, then dst:port pairs
sport = int(sys.argv[1])
socks = []
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    port = int(port)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind(("0.0.0.0", sport))
    for _ in range(3):
        u.sendto(b"unsolicited", (host, port))
    u.close()
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", sport))
    t.setblocking(False)
    t.connect_ex((host, port))  # sends a SYN
    socks.append(t)
time.sleep(1.5)  # a SYN retransmission too
print("sent", len(sys.argv) - 2, flush=True)
"#;

fn client_counters(sport: u16) -> String {
    format!(
        "table netdev pcctest {{
  counter leak {{}}
  chain in {{
    type filter hook ingress device \"eth0\" priority -500; policy accept;
    meta protocol ip th sport {sport} counter name leak
  }}
}}
"
    )
}

const SENT_COUNTERS: &str = "table inet pcctest {
  counter sent {}
  chain c_out { type filter hook output priority 0; policy accept; th sport { 6666, 6667 } counter name sent; }
  chain c_fwd { type filter hook forward priority 0; policy accept; th sport { 6666, 6667 } counter name sent; }
}
";

#[test]
fn unsolicited_traffic_never_reaches_the_lan() {
    require_root!();
    check(false);
}

/// With `ip_forward=1` the kernel would route what pcc passes up straight into the LAN; pcc's
/// forwarding guard (an nftables table of its own) must stop it.
#[test]
fn unsolicited_traffic_never_reaches_the_lan_with_kernel_forwarding_on() {
    require_root!();
    check(true);
}

fn check(ip_forward: bool) {
    let lab = Lab::builder()
        .ip_forward(ip_forward)
        .build()
        .expect("building the lab");
    lab.start_udp_echo().expect("UDP echo server");
    let sender = lab.dir().join("unsolicited.py");
    std::fs::write(&sender, SENDER_PY).unwrap();
    let sender = sender.to_string_lossy().into_owned();
    // The ISPs and the internet can address the LAN directly (a hostile upstream).
    lab.run(
        "isp0",
        &["ip", "route", "add", "198.19.10.0/24", "via", "198.18.1.2"],
    )
    .unwrap();
    lab.run(
        "isp1",
        &["ip", "route", "add", "198.19.10.0/24", "via", "198.18.2.2"],
    )
    .unwrap();
    lab.run(
        "inet",
        &[
            "ip",
            "route",
            "add",
            "198.19.10.0/24",
            "via",
            "198.18.101.1",
        ],
    )
    .unwrap();
    for isp in ["isp0", "isp1", "inet"] {
        lab.nft(isp, SENT_COUNTERS).expect("nft counters");
    }
    let _pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");

    // A live flow, so pcc holds NAT state: c1 udp 5000 -> server 0.
    let flow = lab
        .udp_probe("c1", lab.server_addr(0), 7, 5000, 5)
        .expect("live UDP flow");
    let nat_addr = flow.seen_addr().expect("NAT address");
    let nat_port = flow.seen_port().expect("NAT port");
    for c in lab.client_names() {
        lab.nft(&c, &client_counters(SPORT))
            .expect("client counters");
        lab.nft(&c, &client_counters(SPORT_NAT).replace("pcctest", "pccnat"))
            .expect("client counters");
    }

    // Each ISP reaches its own WAN address, the internet reaches both; all reach the LAN.
    let senders = [("isp0", vec![0]), ("isp1", vec![1]), ("inet", vec![0, 1])];
    let sport = SPORT.to_string();
    for (node, wans) in &senders {
        let mut targets: Vec<String> = Vec::new();
        for port in [22, 80, 5000, 7, 40000, 61000, 65000] {
            for &wan in wans {
                targets.push(format!("{}:{port}", lab.wan_addr(wan)));
            }
        }
        for i in 1..=lab.client_count() {
            for port in [22, 80, 5000] {
                targets.push(format!("{}:{port}", lab.client_addr(i)));
            }
        }
        let mut args = vec![
            pcc_tests::services_python(),
            sender.as_str(),
            sport.as_str(),
        ];
        args.extend(targets.iter().map(String::as_str));
        lab.run(node, &args)
            .unwrap_or_else(|e| panic!("sending from {node}: {e:#}"));
    }
    // The live flow's NAT port, from hosts that are not its peer.
    let nat_target = format!("{nat_addr}:{nat_port}");
    let nat_wan = pcc_tests::wan_of_addr(nat_addr).expect("NAT address is a WAN address");
    let sport_nat = SPORT_NAT.to_string();
    for node in [format!("isp{nat_wan}"), "inet".to_string()] {
        let args = [
            pcc_tests::services_python(),
            &sender,
            &sport_nat,
            &nat_target,
        ];
        lab.run(&node, &args)
            .unwrap_or_else(|e| panic!("sending from {node}: {e:#}"));
    }

    for node in ["isp0", "isp1", "inet"] {
        let (p, _) = lab.nft_counter(node, "inet", "pcctest", "sent").unwrap();
        assert!(p > 0, "{node} did not send its probes");
    }
    for c in lab.client_names() {
        let (p, _) = lab.nft_counter(&c, "netdev", "pcctest", "leak").unwrap();
        assert_eq!(
            p, 0,
            "{c}: {p} unsolicited packets (source port {SPORT}) reached the LAN"
        );
        let (p, _) = lab.nft_counter(&c, "netdev", "pccnat", "leak").unwrap();
        assert_eq!(
            p, 0,
            "{c}: {p} packets from a third party to the live flow's NAT port {nat_target} \
             reached the LAN (expected address-and-port-dependent filtering, like conntrack)"
        );
    }
    if ip_forward {
        // The kernel did try to forward them: pcc's guard is what stopped them.
        let chain = lab
            .run(
                "router",
                &["nft", "list", "chain", "ip", "pcc_guard_lan0", "forward"],
            )
            .expect("the guard's forward chain");
        let dropped: u64 = chain
            .lines()
            .find(|l| l.contains("unsolicited from a WAN"))
            .and_then(|l| l.split_whitespace().skip_while(|w| *w != "packets").nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(dropped > 0, "the guard dropped nothing:\n{chain}");
    }
    // pcc still serves the LAN.
    let again = lab
        .udp_probe("c1", lab.server_addr(0), 7, 5000, 3)
        .expect("live flow after the probes");
    assert_eq!(again.seen_as, flow.seen_as, "live flow's mapping changed");
}
