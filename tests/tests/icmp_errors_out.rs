//! ICMP errors from the LAN are translated out (RFC 5508 REQ-4): a server's connected UDP
//! socket talks to a LAN host through pcc; the host closes its port; its "port unreachable"
//! must reach the server as from the WAN address, so the server's next call fails with
//! ECONNREFUSED. No packet with a LAN source reaches either ISP (BCP 38 counters), with the
//! kernel's forwarding off and on.

use std::time::Duration;

use pcc_tests::{Checks, Lab, require_root};

const SERVER_PORT: u16 = 9999;
const LAN_PORT: u16 = 41000;

/// argv: address, port. Waits for one datagram, connects to its sender, answers it, then (the
/// host has closed its port by then) sends up to 5 more and reports what the socket says.
const SERVER_PY: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(15)
print("ready", flush=True)
data, peer = s.recvfrom(2048)
print(f"peer {peer[0]} {peer[1]}", flush=True)
s.connect(peer)
s.send(b"pong")
time.sleep(1.0)
s.settimeout(1.0)
for i in range(5):
    try:
        s.send(b"after close")
        s.recv(2048)
        print("answered", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
        sys.exit(0)
    except socket.timeout:
        print("timeout", flush=True)
print("no error", flush=True)
"#;

/// argv: server, port, local port. Sends one datagram, waits for the answer, closes.
const CLIENT_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(1.0)
for i in range(5):
    s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
    try:
        print("got", s.recv(2048).decode(), flush=True)
        break
    except socket.timeout:
        pass
s.close()
"#;

#[test]
fn lan_port_unreachable_reaches_the_server_with_forwarding_off() {
    require_root!();
    check(false);
}

#[test]
fn lan_port_unreachable_reaches_the_server_with_forwarding_on() {
    require_root!();
    check(true);
}

fn check(ip_forward: bool) {
    let lab = Lab::builder()
        .clients(1)
        .servers(2)
        .ip_forward(ip_forward)
        .build()
        .expect("building the lab");
    let _pcc = lab
        .start_pcc_wans_up(&[])
        .expect("pcc-ctl up, both WANs up");
    for i in 0..2 {
        lab.watch_lan_sources(i).expect("ISP counters");
    }
    let server_py = lab.script("srv.py", SERVER_PY).unwrap();
    let client_py = lab.script("cli.py", CLIENT_PY).unwrap();
    let server = lab.server_addr(0).to_string();
    let py = pcc_tests::services_python();
    let port = SERVER_PORT.to_string();
    let srv = lab
        .spawn_ready("inet", &[py, "-u", &server_py, &server, &port], "ready")
        .expect("server");
    let client = lab
        .run(
            "c1",
            &[py, &client_py, &server, &port, &LAN_PORT.to_string()],
        )
        .expect("LAN host");
    let out = srv.finish(Duration::from_secs(15));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut checks = Checks::default();
    checks.check(client.contains("got pong"), || {
        format!("the LAN host's datagram was not answered: {client:?} (server: {said:?})")
    });
    checks.check(said.lines().any(|l| l == "refused"), || {
        format!(
            "the server's socket got no ECONNREFUSED after the LAN host closed its port: {said:?}"
        )
    });
    if let Some(peer) = said.lines().find(|l| l.starts_with("peer ")) {
        let addr = peer.split_whitespace().nth(1).unwrap_or("");
        checks.check(
            addr.parse().ok().and_then(pcc_tests::wan_of_addr).is_some(),
            || format!("the server saw the LAN host as {peer:?}, not a WAN address"),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..2 {
        let (lan, all) = lab.lan_source_packets(i).unwrap();
        let refused = lab.refused_sources(i).unwrap();
        checks.check(lan == 0 && refused == 0, || {
            format!("isp{i} saw {lan} packets with a LAN source, refused {refused} (of {all})")
        });
    }
    checks.finish(&format!(
        "ICMP errors out, forwarding {}",
        pcc_tests::on_off(ip_forward)
    ));
}
