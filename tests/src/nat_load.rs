//! Loads that try to wedge the NAT table: a paced stream of new UDP connections, a SYN scan,
//! and a look at the pinned conntrack maps while no controller runs.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

use crate::{
    lab::Lab,
    proc,
    services::{UDP_ECHO_PORT, python},
};

/// One new UDP connection at a time, paced: flow `i` is one datagram from source port
/// `first_sport + i` to `dsts[i % len]`. A flow counts as opened when its reply arrives within
/// 1 s. Prints `bucket <k> <sent> <replied>` per `bucket` seconds of sending, by send time.
const UDP_FLOWS_PY: &str = r#"
import selectors, socket, sys, time
dsts, port = sys.argv[1].split(","), int(sys.argv[2])
first, flows, rate, bucket = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
sel = selectors.DefaultSelector()
nb = int(flows / rate / bucket) + 1
sent, replied = [0] * nb, [0] * nb
pending = []
start = time.monotonic()
i = 0
while i < flows or pending:
    now = time.monotonic()
    while pending and pending[0][1] + 1.0 <= now:
        s = pending.pop(0)[0]
        sel.unregister(s)
        s.close()
    if i < flows and now >= start + i / rate:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", first + i))
        s.setblocking(False)
        b = int((now - start) / bucket)
        s.sendto(b"flow", (dsts[i % len(dsts)], port))
        sel.register(s, selectors.EVENT_READ, b)
        pending.append((s, now))
        sent[b] += 1
        i += 1
    wake = [p[1] + 1.0 for p in pending[:1]] + ([start + i / rate] if i < flows else [])
    for key, _ in sel.select(max(0.0, min(wake) - time.monotonic()) if wake else 0):
        try:
            key.fileobj.recv(2048)
        except BlockingIOError:
            continue
        replied[key.data] += 1
        sel.unregister(key.fileobj)
        pending = [p for p in pending if p[0] is not key.fileobj]
        key.fileobj.close()
for b in range(nb):
    print("bucket", b, sent[b], replied[b])
"#;

/// Flows sent and answered in one time bucket of [`Lab::udp_flows`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowBucket {
    pub sent: u32,
    pub replied: u32,
}

/// What [`Lab::udp_flows`] saw, per [`FLOW_BUCKET`] of sending time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowReport {
    pub buckets: Vec<FlowBucket>,
}

/// Seconds per bucket of a [`FlowReport`].
pub const FLOW_BUCKET: f64 = 5.0;

impl FlowReport {
    fn parse(text: &str) -> Result<Self> {
        let mut buckets = Vec::new();
        for line in text.lines().filter(|l| l.starts_with("bucket ")) {
            let f: Vec<u32> = line
                .split_whitespace()
                .skip(1)
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("bad flow report line {line:?}"))?;
            ensure!(
                f.len() == 3 && f[0] as usize == buckets.len(),
                "bad flow report line {line:?}"
            );
            buckets.push(FlowBucket {
                sent: f[1],
                replied: f[2],
            });
        }
        Ok(Self { buckets })
    }

    /// Sent and replied over the last `n` buckets that sent anything.
    pub fn last(&self, n: usize) -> FlowBucket {
        let busy: Vec<&FlowBucket> = self.buckets.iter().filter(|b| b.sent > 0).collect();
        busy[busy.len().saturating_sub(n)..]
            .iter()
            .fold(FlowBucket::default(), |acc, b| FlowBucket {
                sent: acc.sent + b.sent,
                replied: acc.replied + b.replied,
            })
    }

    /// One line per bucket, for messages.
    pub fn describe(&self) -> String {
        self.buckets
            .iter()
            .enumerate()
            .map(|(k, b)| {
                format!(
                    "{:>3}-{:<3}s: {} of {} answered",
                    k as f64 * FLOW_BUCKET,
                    (k + 1) as f64 * FLOW_BUCKET,
                    b.replied,
                    b.sent
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Lab {
    /// `flows` new UDP connections from `client` at `rate` a second (source ports
    /// `first_sport`.., each to the UDP echo server on the server addresses in turn); returns
    /// how many were answered, per [`FLOW_BUCKET`] seconds.
    pub fn udp_flows(
        &self,
        client: &str,
        first_sport: u16,
        flows: u32,
        rate: f64,
    ) -> Result<FlowReport> {
        ensure!(
            u32::from(first_sport) + flows <= 65_536,
            "{flows} flows from port {first_sport} do not fit"
        );
        self.start_udp_echo()?;
        let script = self.script("udp_flows.py", UDP_FLOWS_PY)?;
        let dsts = self
            .server_addrs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let budget = Duration::from_secs_f64(f64::from(flows) / rate + 15.0);
        let out = self.exec_opts(
            client,
            &[
                python(),
                &script,
                &dsts,
                &UDP_ECHO_PORT.to_string(),
                &first_sport.to_string(),
                &flows.to_string(),
                &rate.to_string(),
                &FLOW_BUCKET.to_string(),
            ],
            None,
            budget,
        )?;
        ensure!(
            out.status.success(),
            "{client}: UDP flows: {}",
            proc::describe(&out)
        );
        FlowReport::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Entries of the pinned dataplane map `map` (e.g. `CT_OUT`) of the pcc instance on
    /// `lan0`, read with bpftool from the lab's bpffs: works with no controller running.
    pub fn pinned_map_len(&self, map: &str) -> Result<usize> {
        let path = self.bpffs_dir().join("pcc/lan0").join(map);
        let mut cmd = std::process::Command::new("bpftool");
        // JSON: a map with BTF dumps formatted values, with no "Found N elements" line; an
        // array of entries either way.
        cmd.args(["--json", "map", "dump", "pinned"]).arg(&path);
        let text = proc::host_stdout(cmd)?;
        let entries: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("bpftool's dump of {map} is not JSON"))?;
        entries
            .as_array()
            .map(Vec::len)
            .with_context(|| format!("bpftool's dump of {map} is not a list"))
    }

    /// `count` (at most 65 536) TCP SYNs from source port `sport` of `client` to `server`,
    /// destination ports 1, 2, 3, …, one each `interval_us` microseconds (hping3): `count`
    /// distinct connections. (hping3's default counts source and destination ports up
    /// together, so both wrap at once and repeat a connection after 65 536 SYNs.) Returns
    /// hping3's summary.
    pub fn syn_scan(
        &self,
        client: &str,
        server: std::net::Ipv4Addr,
        sport: u16,
        count: u32,
        interval_us: u32,
    ) -> Result<String> {
        ensure!(
            count <= 65_536,
            "{count} SYNs from one port repeat connections"
        );
        let budget =
            Duration::from_secs(u64::from(count) * u64::from(interval_us) / 1_000_000 + 60);
        let out = self.exec_opts(
            client,
            &[
                "hping3",
                "-q",
                "-S",
                "-s",
                &sport.to_string(),
                "-k",
                "-p",
                "++1",
                "-c",
                &count.to_string(),
                "-i",
                &format!("u{interval_us}"),
                &server.to_string(),
            ],
            None,
            budget,
        )?;
        // hping3 exits 1 when nothing answered: a firewalled target is the point here.
        ensure!(
            out.status.code().is_some(),
            "{client}: hping3 did not finish in {} s: {}",
            budget.as_secs(),
            proc::describe(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_report() {
        let r = FlowReport::parse("bucket 0 10 10\nbucket 1 10 9\nbucket 2 10 0\nbucket 3 0 0\n")
            .unwrap();
        assert_eq!(r.buckets.len(), 4);
        assert_eq!(
            r.last(2),
            FlowBucket {
                sent: 20,
                replied: 9
            }
        );
        assert!(
            r.describe().contains("  5-10 s: 9 of 10 answered"),
            "{}",
            r.describe()
        );
        assert!(FlowReport::parse("bucket x 1 2").is_err());
    }
}
