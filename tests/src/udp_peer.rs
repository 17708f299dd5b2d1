//! A LAN host's UDP socket that learns its own public mapping and then sends and receives on
//! command: what a P2P application does (RFC 4787's hairpinning and filtering cases).

use std::{
    io::Write as _,
    net::SocketAddrV4,
    process::ChildStdin,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    lab::Lab,
    proc::LabProcess,
    services::{UDP_ECHO_PORT, python},
};

/// Binds `sport`, asks the UDP echo server at `echo` what it sees (its mapping), prints
/// `mapped ip:port`, then prints `recv ip:port text` for every datagram and sends
/// `send ip:port text` lines read from stdin, until stdin closes or `life` seconds pass.
const UDP_PEER_PY: &str = r#"
import selectors, socket, sys, time
sport, echo, life = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
echo = (echo, int(sys.argv[4]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", sport))
s.settimeout(1.0)
mapped = None
for _ in range(5):
    s.sendto(b"mapping?", echo)
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    if peer == echo:
        mapped = data.decode()
        break
if mapped is None:
    print(f"no answer from the echo server {echo}", file=sys.stderr)
    sys.exit(1)
print("mapped", mapped, flush=True)
s.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(s, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)
deadline = time.monotonic() + life
while (left := deadline - time.monotonic()) > 0:
    for key, _ in sel.select(left):
        if key.fileobj is s:
            data, peer = s.recvfrom(2048)
            print("recv", f"{peer[0]}:{peer[1]}", data.decode(errors="replace"), flush=True)
            continue
        line = sys.stdin.readline()
        if not line:
            sys.exit(0)
        _, dst, text = line.split(maxsplit=2)
        host, port = dst.rsplit(":", 1)
        s.sendto(text.strip().encode(), (host, int(port)))
"#;

/// A running [`UDP_PEER_PY`] in a LAN host. Keep it in the thread that started it.
pub struct UdpPeer {
    proc: LabProcess,
    stdin: ChildStdin,
    /// The host's address:port as the echo server saw it (its mapping on the WAN).
    pub mapped: SocketAddrV4,
    /// `node:port`, for messages.
    pub name: String,
}

impl UdpPeer {
    /// Sends `text` (one word) to `to`.
    pub fn send(&mut self, to: SocketAddrV4, text: &str) -> Result<()> {
        writeln!(self.stdin, "send {to} {text}")
            .with_context(|| format!("{}: the UDP peer died: {}", self.name, self.log()))
    }

    /// Every datagram received so far: source and text.
    pub fn received(&self) -> Vec<(SocketAddrV4, String)> {
        self.proc
            .stdout_text()
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                (it.next()? == "recv").then_some(())?;
                Some((it.next()?.parse().ok()?, it.next()?.to_owned()))
            })
            .collect()
    }

    /// The source of the first datagram whose text starts with `prefix`, waiting up to
    /// `timeout` for it.
    pub fn wait_for(&self, prefix: &str, timeout: Duration) -> Option<SocketAddrV4> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((from, _)) = self
                .received()
                .into_iter()
                .find(|(_, t)| t.starts_with(prefix))
            {
                return Some(from);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it printed, for messages.
    pub fn log(&self) -> String {
        format!(
            "stdout:\n{}stderr:\n{}",
            self.proc.stdout_text(),
            self.proc.stderr_text()
        )
    }
}

impl Lab {
    /// Starts a [`UdpPeer`] on port `sport` of LAN host `node` (for at most 90 s) and waits
    /// until it knows its mapping, learnt from the UDP echo server at server address
    /// `echo_server` (started if need be).
    pub fn udp_peer(&self, node: &str, sport: u16, echo_server: usize) -> Result<UdpPeer> {
        self.start_udp_echo()?;
        let script = self.script("udp_peer.py", UDP_PEER_PY)?;
        let echo = self.server_addr(echo_server).to_string();
        let mut proc = self.spawn_with_stdin(
            node,
            &[
                python(),
                "-u",
                &script,
                &sport.to_string(),
                &echo,
                "90",
                &UDP_ECHO_PORT.to_string(),
            ],
        )?;
        let stdin = proc.take_stdin().context("the UDP peer's stdin")?;
        let name = format!("{node}:{sport}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mapped = loop {
            let out = proc.stdout_text();
            if let Some(m) = out.lines().find_map(|l| l.strip_prefix("mapped ")) {
                break m
                    .trim()
                    .parse()
                    .with_context(|| format!("{name}: bad mapping {m:?}"))?;
            }
            if proc.try_wait().is_some() || Instant::now() >= deadline {
                bail!(
                    "{name}: the UDP peer learnt no mapping from the echo server {echo}:\n{}",
                    proc.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(UdpPeer {
            proc,
            stdin,
            mapped,
            name,
        })
    }
}
