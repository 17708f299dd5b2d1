//! TCP tracked like a router tracks it:
//! - only a SYN opens a connection: a lone ACK, SYN-ACK or FIN from a LAN host that matches no
//!   connection gets no mapping (nothing of it reaches an ISP, `pcc-ctl flows` lists nothing);
//! - an RST from outside counts only in the window (RFC 5961): an RST at the next sequence
//!   number ends a connection; a spoofed out-of-window RST leaves another idle connection
//!   working after 15 s (beyond the 10 s close grace), data both ways.
//!
//! With the kernel's forwarding on, what pcc does not translate goes to the kernel, whose
//! conntrack picks up a lone ACK as a new connection (`nf_conntrack_tcp_loose`, on by default)
//! and masquerades it like any Linux router: the lone ACK may then leave, from a WAN address,
//! but not as a pcc connection; SYN-ACK and FIN are invalid to conntrack and must not leave.

use std::time::{Duration, Instant};

use pcc_tests::{Checks, Lab, LabProcess, require_root};

/// argv: server. Each lone segment 3 times (scapy, from the host's own address).
const LONE_PY: &str = r#"
import sys
from scapy.all import IP, TCP, send, conf
conf.verb = 0
for sport, dport, flags in [(41001, 9001, "A"), (41002, 9002, "SA"), (41003, 9003, "FA")]:
    send(IP(dst=sys.argv[1]) / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=2000), count=3, inter=0.1)
"#;

/// The lone segments: (what, LAN source port, destination port).
const LONE: [(&str, u16, u16); 3] = [
    ("ack", 41001, 9001),
    ("synack", 41002, 9002),
    ("fin", 41003, 9003),
];

/// argv: address, port. A TCP echo server; prints each connection's peer.
const ECHO_PY: &str = r#"
import socket, sys, threading
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(4)
print("ready", flush=True)
def echo(c):
    while True:
        try:
            d = c.recv(4096)
        except OSError:
            return
        if not d:
            return
        c.sendall(d)
while True:
    c, peer = l.accept()
    print(f"peer {peer[0]} {peer[1]}", flush=True)
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"#;

/// argv: server, port. One connection; each stdin line is sent and its echo awaited (3 s).
const CLIENT_PY: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(3)
print("connected", s.getsockname()[1], flush=True)
for line in sys.stdin:
    word = line.strip()
    try:
        s.sendall(word.encode())
        d = s.recv(4096)
        print(f"echo {d.decode()}" if d else "closed", flush=True)
    except Exception as e:
        print("error", type(e).__name__, flush=True)
"#;

/// argv: server, port, NAT address, NAT port, offset. Sniffs the server's next data segment,
/// then sends an RST to the NAT address with sequence number (next + offset).
const RST_PY: &str = r#"
import sys
from scapy.all import IP, TCP, AsyncSniffer, send, conf
conf.verb = 0
srv, sport, dst, dport, off = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sn = AsyncSniffer(iface=["i0", "i1"], filter=f"tcp and src host {srv} and src port {sport}",
                  lfilter=lambda p: len(p[TCP].payload) > 0, count=1,
                  started_callback=lambda: print("ready", flush=True))
sn.start()
sn.join(timeout=10)
if not sn.results:
    sn.stop()
    print("nothing sniffed", flush=True)
    sys.exit(1)
p = sn.results[0]
nxt = (p[TCP].seq + len(p[TCP].payload)) % 2**32
seq = (nxt + off) % 2**32
send(IP(src=srv, dst=dst) / TCP(sport=sport, dport=dport, flags="R", seq=seq), count=1)
print(f"sent {seq} next {nxt}", flush=True)
"#;

const ECHO_PORT: u16 = 7001;

#[test]
fn only_a_syn_opens_with_forwarding_off() {
    require_root!();
    lone_segments(false);
}

#[test]
fn only_a_syn_opens_with_forwarding_on() {
    require_root!();
    lone_segments(true);
}

#[test]
fn rst_counts_only_in_window_with_forwarding_off() {
    require_root!();
    rst_window(false);
}

#[test]
fn rst_counts_only_in_window_with_forwarding_on() {
    require_root!();
    rst_window(true);
}

fn lab(ip_forward: bool) -> Lab {
    Lab::builder()
        .clients(1)
        .servers(2)
        .ip_forward(ip_forward)
        .build()
        .expect("building the lab")
}

fn lone_segments(ip_forward: bool) {
    let lab = lab(ip_forward);
    let pcc = lab
        .start_pcc_wans_up(&[])
        .expect("pcc-ctl up, both WANs up");
    for i in 0..2 {
        for (what, _, dport) in LONE {
            lab.watch_isp(i, what, &format!("tcp dport {dport}"))
                .unwrap();
        }
    }
    let script = lab.script("lone.py", LONE_PY).unwrap();
    lab.run(
        "c1",
        &[
            pcc_tests::services_python(),
            &script,
            &lab.server_addr(0).to_string(),
        ],
    )
    .expect("sending with scapy");
    std::thread::sleep(Duration::from_millis(500));
    let mut checks = Checks::default();
    for (what, sport, _) in LONE {
        let at_isps: u64 = (0..2).map(|i| lab.isp_matched(i, what).unwrap()).sum();
        // See the module comment: the kernel's own conntrack may pick up a lone ACK.
        let kernel_may = ip_forward && what == "ack";
        checks.check(at_isps == 0 || kernel_may, || {
            format!("a lone {what} from the LAN reached the ISPs {at_isps} times")
        });
        let flows = lab
            .pcc_flows_of(pcc.metrics_addr(), lab.client_addr(1))
            .expect("pcc-ctl flows");
        let listed: Vec<_> = flows
            .iter()
            .filter(|f| f["lan_port"].as_u64() == Some(u64::from(sport)))
            .collect();
        checks.check(listed.is_empty(), || {
            format!("a lone {what} from the LAN opened a connection: {listed:?}")
        });
    }
    for i in 0..2 {
        let (lan, _) = lab.lan_source_packets(i).unwrap();
        checks.check(lan == 0, || {
            format!("isp{i} saw {lan} packets with a LAN source")
        });
    }
    checks.finish(&format!(
        "lone TCP segments, forwarding {}",
        pcc_tests::on_off(ip_forward)
    ));
}

/// The client process and its stdin.
struct Client(LabProcess, std::process::ChildStdin);

impl Client {
    /// Takes over a started client once it is connected (5 s at most).
    fn new(mut p: LabProcess) -> Self {
        let stdin = p.take_stdin().expect("client stdin");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.stdout_text().starts_with("connected") {
            assert!(
                Instant::now() < deadline && p.try_wait().is_none(),
                "the client did not connect: {}",
                p.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(p, stdin)
    }

    /// Sends `word` and waits (4 s at most) for the client's answer line.
    fn send(&mut self, word: &str) -> String {
        use std::io::Write as _;
        let before = self.0.stdout_text().lines().count();
        writeln!(self.1, "{word}").expect("writing to the client");
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let text = self.0.stdout_text();
            if let Some(l) = text.lines().nth(before) {
                return l.to_owned();
            }
            if Instant::now() > deadline {
                return format!("no answer ({})", self.0.stderr_text().trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends an RST from the server to the connection's NAT address and port, `offset` from the
/// server's next sequence number, sniffed from the echo of `word`.
fn spoof_rst(lab: &Lab, client: &mut Client, nat: (&str, &str), offset: u32, word: &str) -> String {
    let script = lab.script("rst.py", RST_PY).unwrap();
    let server = lab.server_addr(0).to_string();
    let port = ECHO_PORT.to_string();
    let off = offset.to_string();
    let sniffer = lab
        .spawn_ready(
            "inet",
            &[
                pcc_tests::services_python(),
                "-u",
                &script,
                &server,
                &port,
                nat.0,
                nat.1,
                &off,
            ],
            "ready",
        )
        .expect("scapy sniffer");
    let echoed = client.send(word);
    assert_eq!(
        echoed,
        format!("echo {word}"),
        "the echo the RST is built from"
    );
    let out = sniffer.finish(Duration::from_secs(10));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("sent "),
        "no RST sent: {said:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

/// A connection from c1 to the echo server: the client and its NAT address and port as the
/// server saw them.
fn connect(lab: &Lab, srv: &LabProcess) -> (Client, (String, String)) {
    let py = pcc_tests::services_python();
    let server = lab.server_addr(0).to_string();
    let port = ECHO_PORT.to_string();
    let seen = srv
        .stdout_text()
        .lines()
        .filter(|l| l.starts_with("peer "))
        .count();
    let client_py = lab.script("client.py", CLIENT_PY).unwrap();
    let mut client = Client::new(
        lab.spawn_with_stdin("c1", &[py, "-u", &client_py, &server, &port])
            .expect("client"),
    );
    assert_eq!(client.send("hello"), "echo hello", "the connection works");
    let peer = srv
        .stdout_text()
        .lines()
        .filter(|l| l.starts_with("peer "))
        .nth(seen)
        .map(str::to_owned)
        .expect("the server saw its peer");
    let f: Vec<&str> = peer.split_whitespace().collect();
    (client, (f[1].to_owned(), f[2].to_owned()))
}

fn rst_window(ip_forward: bool) {
    let lab = lab(ip_forward);
    let _pcc = lab
        .start_pcc_wans_up(&[])
        .expect("pcc-ctl up, both WANs up");
    let echo = lab.script("echo.py", ECHO_PY).unwrap();
    let (server, port) = (lab.server_addr(0).to_string(), ECHO_PORT.to_string());
    let srv = lab
        .spawn_ready(
            "inet",
            &[pcc_tests::services_python(), "-u", &echo, &server, &port],
            "ready",
        )
        .expect("echo server");
    let mut checks = Checks::default();

    // At the next sequence number: the connection ends.
    let (mut client, nat) = connect(&lab, &srv);
    let said = spoof_rst(&lab, &mut client, (&nat.0, &nat.1), 0, "a");
    eprintln!("in-window RST: {said}");
    std::thread::sleep(Duration::from_millis(300));
    let got = client.send("b");
    checks.check(got.starts_with("error") || got == "closed", || {
        format!("after an in-window RST the connection still answered: {got:?}")
    });

    // Half the sequence space away from the window: no receiver or tracker may accept it.
    let (mut client, nat) = connect(&lab, &srv);
    let said = spoof_rst(&lab, &mut client, (&nat.0, &nat.1), 1 << 31, "c");
    eprintln!("out-of-window RST: {said}");
    std::thread::sleep(Duration::from_secs(15));
    for word in ["d", "e"] {
        let got = client.send(word);
        checks.check(got == format!("echo {word}"), || {
            format!("15 s after an out-of-window RST the connection answered {got:?} to {word:?}")
        });
    }
    checks.finish(&format!(
        "RST window, forwarding {}",
        pcc_tests::on_off(ip_forward)
    ));
}
