//! Failover that kills nothing needlessly (issue 12, section 3). TCP connections stay on a WAN
//! that goes down: a short outage of wan0 (0.6 s, which pcc sees, with `--down-after 6`) under
//! an idle SSH-like session that sends a keystroke during it and a running download leaves
//! both working, and nothing is reset. An outage past `--failover-grace` (the default, 5 s)
//! resets the LAN host's TCP sockets on wan0 within the grace + 1 s of the cut (a client
//! blocked in recv() sees ECONNRESET), leaves its wan1 connection alone, and the host's next
//! connection to the same server opens over wan1.
//!
//! The same 0.6 s with the modem's port losing carrier (the link down too) kills nothing either.
//!
//! The servers run in the lab's inet namespace; the client on c1 is driven through its stdin.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use pcc_tests::{
    Lab, LabProcess, WAN_NAMES,
    health::{mono_now, wait_wan_state, wait_wans_up},
    require_root, services_python as python,
};

const PORT: &str = "7100";
/// `--failover-grace`'s default.
const GRACE: f64 = 5.0;

/// Per connection: first the `ip:port` the server saw (which WAN it came by), then lines:
/// `E text` is echoed, `S bytes rate` streams that many bytes at that rate (bytes/s).
const SERVER_PY: &str = r#"
import socket, sys, threading, time
def serve(c, peer):
    try:
        c.sendall(f"{peer[0]}:{peer[1]}\n".encode())
        f = c.makefile("rb")
        for line in f:
            w = line.split()
            if w[:1] == [b"E"]:
                c.sendall(line)
            elif w[:1] == [b"S"]:
                n, rate = int(w[1]), int(w[2])
                chunk = bytes(4096)
                t0, sent = time.monotonic(), 0
                while sent < n:
                    k = min(len(chunk), n - sent)
                    c.sendall(chunk[:k])
                    sent += k
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"#;

/// `client.py PORT WAN0_ADDR STREAM_BYTES SERVER...`: opens connections to the servers until it has two
/// through wan0 ("idle" and "stream") and one through wan1 ("other"), starts the stream, says
/// `ready`, then reads commands from stdin:
/// - `poke`: sends a line on idle (a keystroke), without waiting for its echo;
/// - `blip-check`: idle's echo of the poke and one more round trip, and the stream's end;
/// - `watch`: reports `NAME reset T` (T: time.monotonic()) as each of idle, stream and other
///   sees ECONNRESET, or another outcome, waiting 15 s at most;
/// - `reconnect`: a fresh connection to idle's server, reporting which address it came from.
const CLIENT_PY: &str = r#"
import socket, sys, threading, time
port, wan0, STREAM, servers = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
printing = threading.Lock()
def out(*a):
    # One write per line: the watchers print from several threads.
    with printing:
        sys.stdout.write(" ".join(map(str, a)) + "\n")
        sys.stdout.flush()
def connect(addr):
    s = socket.create_connection((addr, port), timeout=5)
    f = s.makefile("rb")
    seen = f.readline().decode().split(":")[0]
    return s, f, seen
conns = {}
for addr in servers:
    s, f, seen = connect(addr)
    name = None
    if seen == wan0:
        name = "idle" if "idle" not in conns else ("stream" if "stream" not in conns else None)
    elif "other" not in conns:
        name = "other"
    if name is None:
        s.close()
        continue
    conns[name] = (s, f, addr)
    if len(conns) == 3:
        break
if len(conns) < 3:
    out("error: not two connections on wan0 and one on wan1:", sorted(conns))
    sys.exit(2)
got = {"stream": 0}
def read_stream():
    s, f, _ = conns["stream"]
    s.settimeout(20)
    try:
        while got["stream"] < STREAM:
            b = s.recv(65536)
            if not b:
                break
            got["stream"] += len(b)
        got["stream_end"] = "done"
    except ConnectionResetError:
        got["stream_end"] = f"reset {time.monotonic():.3f}"
    except OSError as e:
        got["stream_end"] = repr(e)
conns["stream"][0].sendall(f"S {STREAM} 400000\n".encode())
reader = threading.Thread(target=read_stream, daemon=True)
reader.start()
out("ready")
def echo(name, text, timeout):
    s, f, _ = conns[name]
    s.settimeout(timeout)
    line = f.readline().decode().strip()
    if line != f"E {text}":
        raise RuntimeError(f"{name}: echo {line!r}, not {text!r}")
def watch(name, results):
    s, f, _ = conns[name]
    s.settimeout(15)
    try:
        while s.recv(65536):
            pass
        results[name] = "eof"
    except ConnectionResetError:
        results[name] = f"reset {time.monotonic():.3f}"
    except OSError as e:
        results[name] = repr(e)
    out(name, results[name])
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "poke":
        conns["idle"][0].sendall(b"E keystroke\n")
    elif cmd == "blip-check":
        try:
            echo("idle", "keystroke", 10)
            conns["idle"][0].sendall(b"E after\n")
            echo("idle", "after", 5)
            out("idle ok")
        except Exception as e:
            out("idle failed", repr(e))
        reader.join(25)
        out("stream", got["stream"], got.get("stream_end", "still running"))
    elif cmd == "watch":
        results = {}
        threads = [threading.Thread(target=watch, args=(n, results), daemon=True) for n in ("idle", "other")]
        for t in threads:
            t.start()
        reader.join(15)
        out("stream", got["stream"], got.get("stream_end", "still running"))
        for t in threads:
            t.join(16)
    elif cmd == "reconnect":
        try:
            s, f, seen = connect(conns["idle"][2])
            out("reconnected from", seen)
        except OSError as e:
            out("reconnect failed", repr(e))
    out("done", cmd)
"#;

struct Bed {
    // Dropped in this order: the client, pcc-ctl, the lab.
    client: LabProcess,
    stdin: std::process::ChildStdin,
    pcc: pcc_tests::PccHandle,
    lab: Lab,
}

impl Bed {
    /// The lab, the server, pcc-ctl with `pcc_args`, and the client with a download of
    /// `stream` bytes (at 400 kB/s) running.
    fn start(pcc_args: &[&str], stream: u64) -> Bed {
        let lab = Lab::with(1, 16);
        let server = lab.script("failover_server.py", SERVER_PY).unwrap();
        let client = lab.script("failover_client.py", CLIENT_PY).unwrap();
        // A lab process: killed with the lab.
        let srv = lab
            .spawn_ready("inet", &[python(), "-u", &server, PORT], "ready")
            .expect("TCP server");
        std::mem::forget(srv);
        let pcc = lab.start_pcc(pcc_args).expect("starting pcc-ctl");
        wait_wans_up(&pcc, &WAN_NAMES, Duration::from_secs(10)).expect("both WANs up");
        let mut args = vec![python(), "-u", &client, PORT];
        let wan0 = lab.wan_addr(0).to_string();
        let stream = stream.to_string();
        args.extend([wan0.as_str(), stream.as_str()]);
        let servers: Vec<String> = lab.server_addrs().iter().map(ToString::to_string).collect();
        args.extend(servers.iter().map(String::as_str));
        let mut client = lab.spawn_with_stdin("c1", &args).expect("client");
        let stdin = client.take_stdin().expect("client stdin");
        let mut bed = Bed {
            client,
            stdin,
            pcc,
            lab,
        };
        bed.wait_line("ready", Duration::from_secs(15));
        bed
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("client stdin");
        self.stdin.flush().unwrap();
    }

    /// Waits until the client printed a line starting with `prefix`; returns it.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.client.stdout_text();
            if let Some(l) = text.lines().find(|l| l.starts_with(prefix)) {
                return l.to_owned();
            }
            if start.elapsed() > timeout || !self.client.is_running() {
                panic!(
                    "client: no line {prefix:?} within {timeout:?}\n--- stdout ---\n{text}\n--- stderr ---\n{}",
                    self.client.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn resets(&self) -> f64 {
        let m = self.pcc.metrics().expect("metrics");
        m.get("pcc_failover_resets_total", &[("wan", "wan0")])
            .unwrap_or(0.0)
    }
}

/// A 0.6 s outage of wan0 made by `cut` and undone by `restore`, which pcc-ctl (run with
/// `pcc_args`) sees: the keystroke sent on the idle session while wan0 is down and the
/// download must both get through once it is back, and nothing is reset.
fn survives_a_short_outage(pcc_args: &[&str], cut: fn(&Lab), restore: fn(&Lab)) {
    // 5 s of download: the outage falls in its middle.
    let mut bed = Bed::start(pcc_args, 2_000_000);
    std::thread::sleep(Duration::from_millis(500));
    let t_cut = mono_now();
    cut(&bed.lab);
    let t_down =
        wait_wan_state(&bed.pcc, "wan0", false, Duration::from_secs(2)).expect("pcc saw wan0 down");
    // A keystroke while the WAN is down: its first packet reaches the dataplane now.
    bed.send("poke");
    let left = 0.6 - (mono_now() - t_cut);
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
    restore(&bed.lab);
    let t_restored = mono_now();
    eprintln!(
        "outage {:.3} s, pcc saw wan0 down {:.3} s after the cut",
        t_restored - t_cut,
        t_down - t_cut
    );
    wait_wan_state(&bed.pcc, "wan0", true, Duration::from_secs(5)).expect("wan0 back");
    bed.send("blip-check");
    let idle = bed.wait_line("idle ", Duration::from_secs(20));
    let stream = bed.wait_line("stream ", Duration::from_secs(30));
    let (_, log) = bed.pcc.output();
    assert_eq!(
        idle, "idle ok",
        "the idle session did not survive the outage\n{log}"
    );
    assert_eq!(
        stream, "stream 2000000 done",
        "the download did not survive the outage\n{log}"
    );
    assert_eq!(bed.resets(), 0.0, "nothing is reset within the grace");
    assert!(
        log.contains("WAN wan0 is back within the failover grace"),
        "the log says the connections continued:\n{log}"
    );
}

#[test]
fn a_short_outage_kills_no_tcp_connection() {
    require_root!();
    // "Modem alive, internet dead" for 0.6 s: wan0 is seen down after 6 × 50 ms = 0.3 s
    // without replies, well inside it.
    survives_a_short_outage(
        &["--down-after", "6"],
        |lab| lab.cut_isp(0).expect("cutting isp0"),
        |lab| lab.restore_isp(0).expect("restoring isp0"),
    );
}

#[test]
fn a_short_carrier_loss_kills_no_tcp_connection() {
    require_root!();
    // The modem's port drops for 0.6 s (netlink: wan0 down at once, its gateway MAC gone):
    // the keystroke is dropped (`wan_link_down`) and retransmitted once the link is back.
    survives_a_short_outage(
        &[],
        |lab| lab.carrier_down(0).expect("carrier down"),
        |lab| lab.carrier_up(0).expect("carrier up"),
    );
}

#[test]
fn an_outage_past_the_grace_resets_the_hosts_tcp_sockets() {
    require_root!();
    // 50 s of download: still running when the grace ends.
    let mut bed = Bed::start(&[], 20_000_000);
    bed.send("watch");
    std::thread::sleep(Duration::from_millis(300));
    let t_cut = mono_now();
    bed.lab.cut_isp(0).expect("cutting isp0");
    let idle = bed.wait_line("idle ", Duration::from_secs(GRACE as u64 + 5));
    let stream = bed.wait_line("stream ", Duration::from_secs(GRACE as u64 + 5));
    let (_, log) = bed.pcc.output();
    for line in [&idle, &stream] {
        // "idle reset T", "stream BYTES reset T"
        let t = line
            .split_whitespace()
            .skip_while(|w| *w != "reset")
            .nth(1)
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no reset: {line}\n{log}"));
        let took = t - t_cut;
        eprintln!("{line}: {took:.3} s after the cut");
        assert!(
            took <= GRACE + 1.0,
            "{line}: reset {took:.3} s after the cut, over the grace + 1 s\n{log}"
        );
    }
    bed.wait_line("done watch", Duration::from_secs(20));
    let other = bed.client.stdout_text();
    assert!(
        other
            .lines()
            .any(|l| l == "other timed out" || l.starts_with("other TimeoutError")),
        "the connection on wan1 was touched:\n{other}"
    );
    assert!(bed.resets() >= 2.0, "resets counted: {}", bed.resets());
    assert!(
        log.contains("WAN wan0 still down after the failover grace"),
        "logged:\n{log}"
    );
    bed.send("reconnect");
    let again = bed.wait_line("reconnect", Duration::from_secs(10));
    assert_eq!(
        again,
        format!("reconnected from {}", bed.lab.wan_addr(1)),
        "the host's next connection opens over wan1"
    );
    bed.lab.restore_isp(0).expect("restoring isp0");
}
