//! A refused new connection is answered (RFC 5508 REQ-8): with one NAT port
//! (`--nat-ports 61000-61000`), a LAN host's second TCP connection to the same server and
//! port finds no port, and the host's connect() fails at once with `EHOSTUNREACH` (ICMP
//! "communication administratively prohibited") instead of resending its SYN into silence
//! for minutes. `/metrics` counts the refusal under its reason and the answer.

use std::time::Duration;

use pcc_tests::{Lab, require_root};

/// Holds one connection to `server:80` (it takes the NAT port) and opens a second one:
/// prints `connected`, `timeout` or `error ERRNO SECONDS`.
const SECOND_CONNECT: &str = r#"
import errno, socket, sys, time
server = sys.argv[1]
held = socket.create_connection((server, 80), timeout=5)
s = socket.socket()
s.settimeout(5)
t = time.monotonic()
try:
    s.connect((server, 80))
    print("connected")
except socket.timeout:
    print("timeout")
except OSError as e:
    print("error", errno.errorcode.get(e.errno, e.errno), round(time.monotonic() - t, 3))
"#;

#[test]
fn a_refused_connection_fails_at_once_with_administratively_prohibited() {
    require_root!();
    let lab = Lab::with(1, 1);
    lab.start_http().expect("HTTP server");
    let pcc = lab
        .start_pcc_wans_up(&["--nat-ports", "61000-61000"])
        .expect("pcc-ctl up with one NAT port");
    let server = lab.server_addr(0).to_string();
    let out = lab
        .run_opts(
            "c1",
            &["python3", "-c", SECOND_CONNECT, &server],
            None,
            Duration::from_secs(20),
        )
        .expect("the two connections");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(
        matches!(words[..], ["error", "EHOSTUNREACH", secs] if secs.parse::<f64>().unwrap() < 1.0),
        "the refused connect() must fail at once with EHOSTUNREACH (ICMP administratively \
         prohibited), got {out:?}"
    );
    let m = pcc.metrics().expect("metrics");
    let refused = m
        .get("pcc_drops_total", &[("reason", "nat_ports_exhausted")])
        .unwrap_or(0.0);
    let sent = m
        .get("pcc_icmp_prohibited_total", &[("outcome", "sent")])
        .unwrap_or(0.0);
    assert!(
        refused >= 1.0,
        "the refusal counted under its reason: {refused}"
    );
    assert!(sent >= 1.0, "the answer counted: {sent}");
}
