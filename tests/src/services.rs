//! Services in the inet namespace (HTTP file server, UDP echo, iperf3) and the client-side
//! tools that talk to them (curl, a UDP probe, ping).

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    lab::Lab,
    proc::{self, LabProcess},
};

/// HTTP server port in the inet namespace.
pub const HTTP_PORT: u16 = 80;
/// UDP echo port in the inet namespace (on every server address).
pub const UDP_ECHO_PORT: u16 = 7;
/// iperf3 server port in the inet namespace.
pub const IPERF_PORT: u16 = 5201;

const HTTP_SERVER_PY: &str = r#"
import hashlib, http.server, sys, threading, time, urllib.parse
root, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
log = open(log_path, "a", buffering=1)
lock = threading.Lock()
class Handler(http.server.SimpleHTTPRequestHandler):
    rate = 0
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=root, **kw)
    def do_GET(self):
        # `?rate=BYTES_PER_SECOND` paces the body (a long-lived connection on demand).
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        self.rate = int(q.get("rate", ["0"])[0])
        super().do_GET()
    def copyfile(self, source, outputfile):
        if not self.rate:
            return super().copyfile(source, outputfile)
        start, sent = time.monotonic(), 0
        while True:
            buf = source.read(16384)
            if not buf:
                break
            outputfile.write(buf)
            sent += len(buf)
            delay = start + sent / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    def do_PUT(self):
        # An upload: answered with the sha256 of the body, so the client checks it arrived whole.
        left, h = int(self.headers.get("Content-Length", "0")), hashlib.sha256()
        while left > 0:
            buf = self.rfile.read(min(left, 65536))
            if not buf:
                break
            h.update(buf)
            left -= len(buf)
        body = h.hexdigest().encode() if left == 0 else b"short"
        self.send_response(200 if left == 0 else 400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        pass
    def log_request(self, code="-", size="-"):
        c = self.client_address
        s = self.connection.getsockname()
        with lock:
            log.write(f"{c[0]} {c[1]} {s[0]} {s[1]} {code} {self.path}\n")
class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512
srv = Server(("0.0.0.0", port), Handler)
print("ready", flush=True)
srv.serve_forever()
"#;

const UDP_ECHO_PY: &str = r#"
import selectors, socket, sys
addrs, port, log_path = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3]
log = open(log_path, "a", buffering=1)
sel = selectors.DefaultSelector()
# One socket per address, so each reply leaves from the address the request was sent to.
for a in addrs:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, port))
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        try:
            data, peer = s.recvfrom(65535)
        except BlockingIOError:
            continue
        local = s.getsockname()
        log.write(f"{peer[0]} {peer[1]} {local[0]} {local[1]} {len(data)}\n")
        reply = f"{peer[0]}:{peer[1]}".encode()
        # "echo:..." asks for the datagram back too (big ones come back fragmented).
        if data.startswith(b"echo:"):
            reply += b"|" + data
        s.sendto(reply, peer)
"#;

const UDP_PROBE_PY: &str = r#"
import socket, sys
dst, port, sport, tries, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
size = int(sys.argv[6]) if len(sys.argv) > 6 else 0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", sport))
s.settimeout(wait)
for i in range(tries):
    # A sized probe carries `size` bytes and must come back whole and unchanged.
    body = b"echo:" + bytes((i + n) % 251 for n in range(size)) if size else f"probe {i}".encode()
    s.sendto(body, (dst, port))
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        continue
    seen, _, echoed = data.partition(b"|")
    if size and echoed != body:
        print(f"echo of {len(body)} bytes came back as {len(echoed)} different bytes", file=sys.stderr)
        sys.exit(2)
    print(f"{s.getsockname()[1]} {peer[0]}:{peer[1]} {seen.decode()}")
    sys.exit(0)
print(f"no reply from {dst}:{port} after {tries} tries", file=sys.stderr)
sys.exit(1)
"#;

/// A generated file served by the HTTP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestFile {
    /// URL path, e.g. `/f2097152.bin`.
    pub path: String,
    pub size: u64,
    /// Lower-case hex sha256.
    pub sha256: String,
}

/// One request seen by the HTTP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLogEntry {
    /// Source address the server saw (a WAN address when the router NATs).
    pub client: Ipv4Addr,
    pub client_port: u16,
    /// Server address the request was sent to.
    pub server: Ipv4Addr,
    pub status: u16,
    pub path: String,
}

/// One datagram seen by the UDP echo server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpLogEntry {
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub server: Ipv4Addr,
    pub len: usize,
}

/// Result of one curl download.
#[derive(Clone, Debug)]
pub struct Download {
    pub file: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    pub local_port: u16,
    pub seconds: f64,
}

/// Result of one curl upload ([`Lab::upload`]).
#[derive(Clone, Debug)]
pub struct Upload {
    /// sha256 of what the server received.
    pub sha256: String,
    /// Bytes curl sent.
    pub bytes: u64,
    pub seconds: f64,
}

/// One transfer of [`Lab::curl_many`].
#[derive(Clone, Debug, PartialEq)]
pub struct Transfer {
    /// HTTP status, 0 when the transfer failed.
    pub code: u16,
    pub url: String,
    pub bytes: u64,
}

/// Reply of [`Lab::udp_probe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpReply {
    /// Local port the client sent from.
    pub local_port: u16,
    /// Who answered.
    pub from: String,
    /// What the echo server saw as our address (`ip:port`, i.e. after NAT).
    pub seen_as: String,
}

impl UdpReply {
    /// Address part of `seen_as`.
    pub fn seen_addr(&self) -> Option<Ipv4Addr> {
        self.seen_as.split(':').next()?.parse().ok()
    }

    /// Port part of `seen_as`.
    pub fn seen_port(&self) -> Option<u16> {
        self.seen_as.split(':').nth(1)?.parse().ok()
    }
}

pub(crate) fn python() -> &'static str {
    // Debian's python3 has scapy and is what setup.sh installs; PATH may hold a pyenv shim.
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

impl Lab {
    /// Writes `body` to `name` in the lab directory (once) and returns its path: for the
    /// scripts the lab and the tests run in their nodes.
    pub fn script(&self, name: &str, body: &str) -> Result<String> {
        let p = self.dir().join(name);
        if !p.exists() {
            fs::write(&p, body).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(p.to_string_lossy().into_owned())
    }

    pub(crate) fn start_service(
        &self,
        node: &str,
        args: &[&str],
        ready: impl Fn(&LabProcess) -> bool,
    ) -> Result<()> {
        let mut p = self.spawn(node, args)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready(&p) {
            if let Some(st) = p.try_wait() {
                bail!(
                    "service `{}` exited with {st}: {}",
                    p.name(),
                    p.stderr_text()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "service `{}` not ready after 10 s: {}",
                p.name(),
                p.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.services.lock().unwrap().push(p);
        Ok(())
    }

    /// Starts the HTTP file server on port 80 of every server address (idempotent). It serves
    /// the files made by [`http_file`](Self::http_file), takes uploads
    /// ([`upload`](Self::upload)) and logs each request's source address.
    pub fn start_http(&self) -> Result<()> {
        self.start_http_on("inet")
    }

    /// The same HTTP server on port 80 of every address of `node` (e.g. `"branch"`,
    /// `"modem0"`), logging to its own log ([`http_log_of`](Self::http_log_of)) (idempotent).
    pub fn start_http_on(&self, node: &str) -> Result<()> {
        if self
            .state
            .lock()
            .unwrap()
            .http_nodes
            .iter()
            .any(|n| n == node)
        {
            return Ok(());
        }
        let script = self.script("http_server.py", HTTP_SERVER_PY)?;
        let www = self.dir().join("www").to_string_lossy().into_owned();
        let log = self.http_log_path(node).to_string_lossy().into_owned();
        fs::write(&log, "")?;
        self.start_service(
            node,
            &[python(), "-u", &script, &www, &HTTP_PORT.to_string(), &log],
            |p| p.stdout_text().contains("ready"),
        )?;
        self.state.lock().unwrap().http_nodes.push(node.to_owned());
        Ok(())
    }

    fn http_log_path(&self, node: &str) -> PathBuf {
        if node == "inet" {
            self.dir().join("http.log")
        } else {
            self.dir().join(format!("http-{node}.log"))
        }
    }

    fn udp_log_path(&self) -> PathBuf {
        self.dir().join("udp.log")
    }

    /// A served file of `size` bytes of pseudo-random content (made once per size).
    pub fn http_file(&self, size: u64) -> Result<TestFile> {
        if let Some(f) = self.state.lock().unwrap().files.get(&size) {
            return Ok(f.clone());
        }
        let name = format!("f{size}.bin");
        let path = self.dir().join("www").join(&name);
        fs::write(&path, pseudo_random(size, size ^ 0x5eed)).context("writing test file")?;
        let f = TestFile {
            path: format!("/{name}"),
            size,
            sha256: sha256_file(&path)?,
        };
        self.state.lock().unwrap().files.insert(size, f.clone());
        Ok(f)
    }

    /// URL of `file` on server address `server`.
    pub fn url(&self, server: Ipv4Addr, file: &TestFile) -> String {
        format!("http://{server}:{HTTP_PORT}{}", file.path)
    }

    /// Every request the HTTP server has logged so far.
    pub fn http_log(&self) -> Result<Vec<HttpLogEntry>> {
        self.http_log_of("inet")
    }

    /// Every request the HTTP server in `node` has logged so far.
    pub fn http_log_of(&self, node: &str) -> Result<Vec<HttpLogEntry>> {
        let path = self.http_log_path(node);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        text.lines().map(parse_http_log_line).collect()
    }

    /// Empties the HTTP server's log.
    pub fn clear_http_log(&self) -> Result<()> {
        Ok(fs::write(self.http_log_path("inet"), "")?)
    }

    /// Starts the UDP echo server on port 7 of every server address (idempotent). It answers
    /// each datagram with the `ip:port` it came from.
    pub fn start_udp_echo(&self) -> Result<()> {
        if self.state.lock().unwrap().udp {
            return Ok(());
        }
        let script = self.script("udp_echo.py", UDP_ECHO_PY)?;
        let addrs = self
            .server_addrs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let log = self.udp_log_path().to_string_lossy().into_owned();
        fs::write(&log, "")?;
        self.start_service(
            "inet",
            &[
                python(),
                "-u",
                &script,
                &addrs,
                &UDP_ECHO_PORT.to_string(),
                &log,
            ],
            |p| p.stdout_text().contains("ready"),
        )?;
        self.state.lock().unwrap().udp = true;
        Ok(())
    }

    /// Every datagram the UDP echo server has logged so far.
    pub fn udp_log(&self) -> Result<Vec<UdpLogEntry>> {
        let text = fs::read_to_string(self.udp_log_path()).context("reading udp log")?;
        text.lines().map(parse_udp_log_line).collect()
    }

    /// Starts `iperf3 -s` on port 5201 (all server addresses, TCP) (idempotent).
    pub fn start_iperf(&self) -> Result<()> {
        if self.state.lock().unwrap().iperf {
            return Ok(());
        }
        self.start_service(
            "inet",
            &["iperf3", "-s", "-p", &IPERF_PORT.to_string()],
            |_| {
                self.exec("inet", &["ss", "-Hltn", &format!("sport = :{IPERF_PORT}")])
                    .is_ok_and(|o| !o.stdout.is_empty())
            },
        )?;
        self.state.lock().unwrap().iperf = true;
        Ok(())
    }

    /// Downloads `file` from `server` in `client` with curl (`extra` curl options appended),
    /// and hashes what arrived.
    pub fn download(
        &self,
        client: &str,
        server: Ipv4Addr,
        file: &TestFile,
        extra: &[&str],
    ) -> Result<Download> {
        self.download_url(client, &self.url(server, file), extra)
    }

    /// Like [`download`](Self::download) with the server pacing the body at `bytes_per_sec`:
    /// one long-lived connection.
    pub fn download_paced(
        &self,
        client: &str,
        server: Ipv4Addr,
        file: &TestFile,
        bytes_per_sec: u64,
    ) -> Result<Download> {
        let url = format!("{}?rate={bytes_per_sec}", self.url(server, file));
        self.download_url(client, &url, &[])
    }

    /// Downloads `url` in `client` with curl and hashes what arrived.
    pub fn download_url(&self, client: &str, url: &str, extra: &[&str]) -> Result<Download> {
        let n = {
            let mut st = self.state.lock().unwrap();
            st.downloads += 1;
            st.downloads
        };
        let out_path = self.dir().join(format!("dl-{client}-{n}.bin"));
        let out_s = out_path.to_string_lossy().into_owned();
        let w = self.curl_one(
            client,
            &[
                "-o",
                &out_s,
                "-w",
                "%{size_download} %{local_port} %{time_total}",
            ],
            extra,
            url,
        )?;
        let mut it = w.split_whitespace();
        let bytes = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let local_port = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let seconds = it.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        Ok(Download {
            sha256: sha256_file(&out_path)?,
            file: out_path,
            bytes,
            local_port,
            seconds,
        })
    }

    /// Uploads `file` from `client` to the HTTP server at `server` (an HTTP PUT with curl,
    /// `extra` options appended); the server hashes what arrived.
    pub fn upload(
        &self,
        client: &str,
        server: Ipv4Addr,
        file: &TestFile,
        extra: &[&str],
    ) -> Result<Upload> {
        let local = self
            .dir()
            .join("www")
            .join(file.path.trim_start_matches('/'));
        let local = local.to_string_lossy().into_owned();
        let url = format!("http://{server}:{HTTP_PORT}/upload");
        // The server answers the body's sha256; `Expect:` off: no 1 s wait for "100 Continue".
        let w = self.curl_one(
            client,
            &[
                "-H",
                "Expect:",
                "-T",
                &local,
                "-w",
                " %{size_upload} %{time_total}",
            ],
            extra,
            &url,
        )?;
        let mut it = w.split_whitespace();
        Ok(Upload {
            sha256: it.next().unwrap_or_default().to_owned(),
            bytes: it.next().and_then(|s| s.parse().ok()).unwrap_or(0),
            seconds: it.next().and_then(|s| s.parse().ok()).unwrap_or(0.0),
        })
    }

    /// A download of `size` bytes to each of `clients` (from server addresses 0, 1, …) and an
    /// upload of the same file from the first (to the next server address), each checked by
    /// size and sha256; the first failure is the error.
    pub fn transfers_intact(&self, clients: &[&str], size: u64) -> Result<()> {
        self.start_http()?;
        let file = self.http_file(size)?;
        for (i, client) in clients.iter().enumerate() {
            let d = self.download(client, self.server_addr(i), &file, &[])?;
            ensure!(
                d.bytes == file.size && d.sha256 == file.sha256,
                "{client}: a download of {} bytes arrived as {} bytes with another sha256",
                file.size,
                d.bytes
            );
        }
        let first = clients.first().context("no client")?;
        let up = self.upload(first, self.server_addr(clients.len()), &file, &[])?;
        ensure!(
            up.sha256 == file.sha256,
            "{first}: an upload of {} bytes arrived with another sha256",
            file.size
        );
        Ok(())
    }

    /// One curl transfer in `client` (40 s at most, `--fail`); returns its stdout.
    fn curl_one(&self, client: &str, args: &[&str], extra: &[&str], url: &str) -> Result<String> {
        let mut all = vec![
            "curl",
            "-sS",
            "--fail",
            "--connect-timeout",
            "5",
            "--max-time",
            "40",
        ];
        all.extend_from_slice(args);
        all.extend_from_slice(extra);
        all.push(url);
        let out = self.exec_opts(client, &all, None, Duration::from_secs(50))?;
        ensure!(
            out.status.success(),
            "{client}: curl {url} failed: {}",
            proc::describe(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One curl in `client` fetching every URL (one new connection per server address),
    /// `parallel` at a time; per-transfer timeout `max_time` seconds.
    pub fn curl_many(
        &self,
        client: &str,
        urls: &[String],
        parallel: usize,
        max_time: u32,
    ) -> Result<Vec<Transfer>> {
        let (p, mt) = (parallel.max(1).to_string(), max_time.to_string());
        let mut args: Vec<&str> = vec![
            "curl",
            "-s",
            "--parallel",
            "--parallel-max",
            &p,
            "--connect-timeout",
            "5",
            "--max-time",
            &mt,
            "-w",
            "%{http_code} %{size_download} %{url_effective}\\n",
        ];
        for u in urls {
            args.extend(["-o", "/dev/null", u.as_str()]);
        }
        let budget = Duration::from_secs(u64::from(max_time) * urls.len() as u64 + 10)
            .min(Duration::from_secs(120));
        let out = self.exec_opts(client, &args, None, budget)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let transfers: Vec<Transfer> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some(Transfer {
                    code: it.next()?.parse().ok()?,
                    bytes: it.next()?.parse().ok()?,
                    url: it.next()?.to_owned(),
                })
            })
            .collect();
        ensure!(
            transfers.len() == urls.len(),
            "{client}: curl reported {} of {} transfers: {}",
            transfers.len(),
            urls.len(),
            proc::describe(&out)
        );
        Ok(transfers)
    }

    /// Sends UDP datagrams from `client` (from local port `sport`, 0 = any) to `dst:port`
    /// until one reply arrives (at most `tries` tries, 1 s apart).
    pub fn udp_probe(
        &self,
        client: &str,
        dst: Ipv4Addr,
        port: u16,
        sport: u16,
        tries: u32,
    ) -> Result<UdpReply> {
        self.udp_echo(client, dst, port, sport, tries, 0)
    }

    /// Like [`udp_probe`](Self::udp_probe) with `size` bytes of payload that the echo server
    /// must send back unchanged (over 1472 bytes, both ways travel as IP fragments).
    pub fn udp_echo(
        &self,
        client: &str,
        dst: Ipv4Addr,
        port: u16,
        sport: u16,
        tries: u32,
        size: usize,
    ) -> Result<UdpReply> {
        let script = self.script("udp_probe.py", UDP_PROBE_PY)?;
        let out = self.exec_opts(
            client,
            &[
                python(),
                &script,
                &dst.to_string(),
                &port.to_string(),
                &sport.to_string(),
                &tries.to_string(),
                "1.0",
                &size.to_string(),
            ],
            None,
            Duration::from_secs(u64::from(tries) + 10),
        )?;
        ensure!(
            out.status.success(),
            "{client}: UDP probe to {dst}:{port} from port {sport}: {}",
            proc::describe(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = text.split_whitespace();
        let (Some(lp), Some(from), Some(seen)) = (it.next(), it.next(), it.next()) else {
            bail!("bad probe output {text:?}");
        };
        Ok(UdpReply {
            local_port: lp.parse()?,
            from: from.to_owned(),
            seen_as: seen.to_owned(),
        })
    }

    /// Starts `tcpdump -i any -nn -l -v -c count filter` in `node` and returns once it
    /// listens (at most 5 s); what it printed is the stdout of the process (`finish`).
    pub fn tcpdump(&self, node: &str, filter: &str, count: u32) -> Result<LabProcess> {
        let c = count.to_string();
        let mut p = self.spawn(
            node,
            &["tcpdump", "-i", "any", "-nn", "-l", "-v", "-c", &c, filter],
        )?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.stderr_text().contains("listening on") {
            ensure!(
                p.try_wait().is_none() && Instant::now() < deadline,
                "tcpdump in {node} did not start: {}",
                p.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    /// `ping -c count` from `node` to `dst` (0.2 s apart); returns how many replies came back.
    pub fn ping(&self, node: &str, dst: Ipv4Addr, count: u32) -> Result<u32> {
        let c = count.to_string();
        let deadline = (count / 5 + 3).to_string();
        let out = self.exec(
            node,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &c,
                "-i",
                "0.2",
                "-W",
                "1",
                "-w",
                &deadline,
                &dst.to_string(),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "5 packets transmitted, 5 received, 0% packet loss, time 801ms"
        let received = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok());
        received.with_context(|| format!("{node}: ping {dst}: {}", proc::describe(&out)))
    }
}

fn parse_http_log_line(line: &str) -> Result<HttpLogEntry> {
    let f: Vec<&str> = line.split_whitespace().collect();
    ensure!(f.len() >= 6, "bad http log line {line:?}");
    Ok(HttpLogEntry {
        client: f[0].parse().with_context(|| format!("http log {line:?}"))?,
        client_port: f[1].parse()?,
        server: f[2].parse()?,
        status: f[4].parse().unwrap_or(0),
        path: f[5].to_owned(),
    })
}

fn parse_udp_log_line(line: &str) -> Result<UdpLogEntry> {
    let f: Vec<&str> = line.split_whitespace().collect();
    ensure!(f.len() >= 5, "bad udp log line {line:?}");
    Ok(UdpLogEntry {
        client: f[0].parse().with_context(|| format!("udp log {line:?}"))?,
        client_port: f[1].parse()?,
        server: f[2].parse()?,
        len: f[4].parse()?,
    })
}

/// `size` bytes of xorshift64* output.
pub fn pseudo_random(size: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(size as usize + 8);
    while (v.len() as u64) < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(size as usize);
    v
}

/// sha256 of a file (via coreutils `sha256sum`).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut cmd = std::process::Command::new("sha256sum");
    cmd.arg(path);
    let text = proc::host_stdout(cmd)?;
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines() {
        let e = parse_http_log_line("198.18.2.2 40001 203.0.113.12 80 200 /f1.bin").unwrap();
        assert_eq!(e.client, Ipv4Addr::new(198, 18, 2, 2));
        assert_eq!(e.client_port, 40001);
        assert_eq!(e.server, Ipv4Addr::new(203, 0, 113, 12));
        assert_eq!(e.path, "/f1.bin");
        let u = parse_udp_log_line("198.18.1.2 5000 203.0.113.10 7 7").unwrap();
        assert_eq!(u.client_port, 5000);
        assert!(parse_http_log_line("garbage").is_err());
    }

    #[test]
    fn pseudo_random_is_deterministic_and_sized() {
        assert_eq!(pseudo_random(13, 1).len(), 13);
        assert_eq!(pseudo_random(64, 7), pseudo_random(64, 7));
        assert_ne!(pseudo_random(64, 7), pseudo_random(64, 8));
    }

    #[test]
    fn udp_reply_parts() {
        let r = UdpReply {
            local_port: 5000,
            from: "203.0.113.10:7".into(),
            seen_as: "198.18.1.2:5000".into(),
        };
        assert_eq!(r.seen_addr(), Some(Ipv4Addr::new(198, 18, 1, 2)));
        assert_eq!(r.seen_port(), Some(5000));
    }
}
