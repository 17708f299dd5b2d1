//! A table nobody can wedge (issue 12, section 2): with the controller SIGKILLed, nothing but
//! the dataplane can expire connections. New UDP connections then arrive for longer than a
//! 2048-entry table holds; they must keep opening, a fresh download must work, and the
//! connections in use must fall back once the flows stop (read from the pinned maps with
//! bpftool: no controller runs to report them).

use std::time::{Duration, Instant};

use pcc_tests::{Checks, Lab, require_root};

/// Conntrack capacity and UDP idle timeout of the run: 3200 flows at 80 a second take 40 s,
/// eight times the 5 s a flow may stay idle, and are 1.5 times the table.
const CAPACITY: &str = "2048";
const UDP_TIMEOUT: &str = "5";
const FLOWS_PER_HOST: u32 = 1600;
const RATE_PER_HOST: f64 = 40.0;
/// At most this many connections may remain once every flow is idle past its timeout (the
/// download's, and stragglers of a sweep in progress).
const SETTLED: usize = 64;

/// Runs `pcc-ctl down` when dropped: a killed controller leaves its programs attached.
struct Down<'a>(&'a Lab);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.pcc_down() {
            eprintln!("pcc-ctl down after the test: {e:#}");
        }
    }
}

#[test]
fn a_dead_controller_cannot_wedge_the_table() {
    require_root!();
    let lab = Lab::builder()
        .clients(2)
        .servers(20)
        .build()
        .expect("building the lab");
    lab.start_http().expect("HTTP server");
    lab.start_udp_echo().expect("UDP echo server");
    let file = lab.http_file(1 << 20).expect("1 MB test file");
    let pcc = lab
        .start_pcc(&[
            "--max-connections",
            CAPACITY,
            "--udp-timeout",
            UDP_TIMEOUT,
            "--udp-stream-timeout",
            UDP_TIMEOUT,
        ])
        .expect("starting pcc-ctl");
    let _down = Down(&lab);
    pcc.kill();
    let mut checks = Checks::default();

    let started = Instant::now();
    let lab_ref = &lab;
    let reports = std::thread::scope(|s| {
        let flows: Vec<_> = ["c1", "c2"]
            .map(|c| s.spawn(move || lab_ref.udp_flows(c, 20_000, FLOWS_PER_HOST, RATE_PER_HOST)))
            .into_iter()
            .collect();
        flows
            .into_iter()
            .map(|h| h.join().unwrap().expect("UDP flows"))
            .collect::<Vec<_>>()
    });
    eprintln!(
        "{} flows sent in {:.0?}",
        2 * FLOWS_PER_HOST,
        started.elapsed()
    );
    for (client, r) in ["c1", "c2"].iter().zip(&reports) {
        // The last 10 s: 25 s after the table would have filled without expiry.
        let last = r.last(2);
        checks.check(last.replied * 100 >= last.sent * 95, || {
            format!(
                "{client}: new connections stopped opening with the controller dead: {} of {} \
                 flows in the last 10 s were answered (--max-connections {CAPACITY}, \
                 --udp-timeout {UDP_TIMEOUT}):\n{}",
                last.replied,
                last.sent,
                r.describe()
            )
        });
    }

    match lab.download("c1", lab.server_addr(0), &file, &["--max-time", "10"]) {
        Ok(d) => checks.check(d.sha256 == file.sha256, || {
            "the download after the flows arrived damaged".into()
        }),
        Err(e) => checks.fail(format!(
            "a fresh download after the flows failed (the table full with nobody to expire \
             it?): {e:#}"
        )),
    }

    // Every flow is idle now: within its timeout plus a margin, the table empties.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut counts = Vec::new();
    let settled = loop {
        let n = lab.pinned_map_len("CT_OUT").expect("counting CT_OUT");
        counts.push(n);
        if n <= SETTLED || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    checks.check(settled <= SETTLED, || {
        format!(
            "connections in use did not fall back with the controller dead: CT_OUT held \
             {counts:?} entries, one a second for 20 s after the flows stopped (at most \
             {SETTLED} expected, --udp-timeout {UDP_TIMEOUT})"
        )
    });
    checks.finish("a dead controller cannot wedge the table");
}
