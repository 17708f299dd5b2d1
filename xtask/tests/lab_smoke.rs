//! `cargo xtask lab` end to end, as a user runs it (the xtask binary, `--no-build`, unshaped so
//! short downloads keep opening new connections): it prints a status line per second and the
//! per-WAN spread of connections and bytes, a scheduled cut of isp0 moves the traffic to wan1
//! and its restore brings it back, and nothing of the run is left afterwards. A second run
//! interrupted with SIGINT (Ctrl-C) mid-traffic cleans up as well: no namespace, and the XDP
//! programs it attached are gone.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use pcc_tests::{LabProcess, lab_leftovers, require_root};

/// At most this long per run (lab build, traffic, teardown); the runs take 15-25 s.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// `xtask lab ARGS… --no-build` running in the background. Dropping it sends SIGINT and waits
/// for the clean-up (SIGKILL after 60 s).
struct XtaskLab(LabProcess);

impl XtaskLab {
    fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.arg("lab").arg("--no-build").args(args);
        let name = format!("xtask lab --no-build {}", args.join(" "));
        Self(LabProcess::spawn_host(cmd, &name, libc::SIGINT).expect("starting xtask lab"))
    }

    /// Waits until its stderr has a line containing `needle`.
    fn wait_stderr(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.0.stderr_text().contains(needle) {
            assert!(
                self.0.is_running() && start.elapsed() < timeout,
                "no {needle:?} from `{}` within {timeout:?}\n{}",
                self.0.name(),
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The lab's namespace prefix from `xtask lab: namespaces pccXXXXX-*, …`.
    fn prefix(&mut self) -> String {
        self.wait_stderr("xtask lab: namespaces ", RUN_TIMEOUT);
        let err = self.0.stderr_text();
        let rest = &err[err.find("xtask lab: namespaces ").unwrap() + 22..];
        rest.split("-*").next().unwrap().to_owned()
    }

    /// Waits for the exit (bounded); returns (exit code, stdout, stderr).
    fn finish(mut self, timeout: Duration) -> (Option<i32>, String, String) {
        let status = self.0.wait_timeout(timeout);
        let out = (
            status.and_then(|s| s.code()),
            self.0.stdout_text(),
            self.0.stderr_text(),
        );
        assert!(
            status.is_some(),
            "`{}` still running after {timeout:?}\n{}",
            self.0.name(),
            self.describe()
        );
        out
    }

    fn describe(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.0.stdout_text().trim_end(),
            self.0.stderr_text().trim_end()
        )
    }
}

impl Drop for XtaskLab {
    fn drop(&mut self) {
        if self.0.is_running() {
            self.0.signal(libc::SIGINT);
            self.0.wait_timeout(Duration::from_secs(60));
        }
    }
}

/// One WAN in a status line: `wan0 up   rx  123.4 Mbit/s rtt …`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct WanStatus {
    up: bool,
    /// `None` on the first line (no rate yet).
    rx_mbit: Option<f64>,
}

/// A status line `t=  3.1s  wan0 … | wan1 … | flows …`: its time and both WANs.
fn parse_status(line: &str) -> Option<(f64, [WanStatus; 2])> {
    let rest = line.strip_prefix("t=")?;
    let mut words = rest.split_whitespace();
    let t: f64 = words.next()?.trim_end_matches('s').parse().ok()?;
    let words: Vec<&str> = words.collect();
    let wan = |name: &str| {
        let i = words.iter().position(|w| *w == name)?;
        let (state, rx, rate) = (words.get(i + 1)?, words.get(i + 2)?, words.get(i + 3)?);
        (*rx == "rx").then_some(WanStatus {
            up: *state == "up",
            rx_mbit: rate.parse().ok(),
        })
    };
    Some((t, [wan("wan0")?, wan("wan1")?]))
}

/// The end-of-run table's row of `wan`: (flows, rx MB).
fn table_row(stdout: &str, wan: &str) -> Option<(f64, f64)> {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(wan) && l.contains('%'))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    // wan flows share conns* share tx-pkts tx-MB rx-MB rx-Mbit/s
    Some((w.get(1)?.parse().ok()?, w.get(7)?.parse().ok()?))
}

/// XDP program ids attached to the interfaces of namespace `ns`.
fn xdp_prog_ids(ns: &str) -> Vec<u64> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "-d", "link", "show"])
        .output()
        .expect("ip link show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut ids: Vec<u64> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["xdp"]["prog"]["id"].as_u64())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Whether the kernel still has BPF program `id` (loaded anywhere).
fn prog_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn lab_runs_a_cut_and_restore_and_cleans_up() {
    require_root!();
    let (cut, restore, seconds) = (3.0, 6.0, 11.0);
    let mut lab = XtaskLab::start(&[
        "--clients",
        "2",
        "--seconds",
        "11",
        "--no-shape",
        "--cut",
        "isp0@3",
        "--restore",
        "isp0@6",
    ]);
    let prefix = lab.prefix();
    let (code, stdout, stderr) = lab.finish(RUN_TIMEOUT);
    let all = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    eprintln!("{all}");
    assert_eq!(code, Some(0), "xtask lab failed\n{all}");
    for needle in [
        "pcc-ctl ready",
        "cut isp0: it drops all IPv4",
        "restore isp0: no more drops",
        "xtask lab: cleaned up",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} on stderr\n{all}");
    }

    // The per-WAN spread at the end: both WANs carried connections and bytes.
    assert!(
        stdout.contains("pcc lab: 2 clients x 4 downloads") && stdout.contains("rx Mbit/s"),
        "no spread table\n{all}"
    );
    for wan in ["wan0", "wan1"] {
        let (flows, rx_mb) =
            table_row(&stdout, wan).unwrap_or_else(|| panic!("no table row for {wan}\n{all}"));
        assert!(
            flows > 0.0 && rx_mb > 0.0,
            "{wan} carried nothing: {flows} flows, {rx_mb} MB\n{all}"
        );
    }
    let health = stdout
        .lines()
        .find(|l| l.starts_with("health: "))
        .unwrap_or_else(|| panic!("no health line\n{all}"));
    assert!(
        health.contains("wan0 up (2 changes") && health.contains("wan1 up (0 changes"),
        "wan0 went down and came back once, wan1 never changed: {health}"
    );

    // The status lines show the traffic move: both WANs before the cut, wan1 alone while isp0
    // is cut (once wan0 is down), both again after the restore.
    let status: Vec<(f64, [WanStatus; 2])> = stdout.lines().filter_map(parse_status).collect();
    assert!(status.len() >= 8, "too few status lines\n{all}");
    let rate = |w: WanStatus| w.rx_mbit.unwrap_or(0.0);
    let during = |from: f64, to: f64| status.iter().filter(move |(t, _)| (from..to).contains(t));
    assert!(
        during(0.5, cut).any(|(_, w)| w[0].up && w[1].up && rate(w[0]) > 0.0 && rate(w[1]) > 0.0),
        "no second with traffic on both WANs before the cut\n{all}"
    );
    let cut_lines: Vec<_> = during(cut + 1.5, restore).collect();
    assert!(
        !cut_lines.is_empty(),
        "no status line during the cut\n{all}"
    );
    for (t, w) in &cut_lines {
        assert!(
            !w[0].up && w[1].up && rate(w[1]) > 0.0 && rate(w[0]) < 0.05 * rate(w[1]),
            "at {t} s, isp0 cut, the traffic should be on wan1 alone: {w:?}\n{all}"
        );
    }
    let back: Vec<_> = during(restore + 2.5, seconds).collect();
    assert!(!back.is_empty(), "no status line after the restore\n{all}");
    assert!(
        back.iter().all(|(_, w)| w[0].up && w[1].up)
            && back
                .iter()
                .any(|(_, w)| rate(w[0]) > 0.0 && rate(w[1]) > 0.0),
        "after the restore both WANs should be up and carry traffic: {back:?}\n{all}"
    );

    let left = lab_leftovers(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Runs the lab for up to 60 s, sends SIGINT `delay` after `moment` shows on its stderr, and
/// checks the clean exit and clean-up; returns the XDP programs that were attached in the
/// router just before the SIGINT.
fn interrupted(moment: &str, delay: Duration) -> Vec<u64> {
    let mut lab = XtaskLab::start(&["--clients", "2", "--seconds", "60", "--no-shape"]);
    let prefix = lab.prefix();
    lab.wait_stderr(moment, RUN_TIMEOUT);
    std::thread::sleep(delay);
    let progs = xdp_prog_ids(&format!("{prefix}-router"));
    let sent = Instant::now();
    lab.0.signal(libc::SIGINT);
    let (code, stdout, stderr) = lab.finish(Duration::from_secs(60));
    let all = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    eprintln!(
        "{all}\nSIGINT {delay:?} after {moment:?}; XDP programs then: {progs:?}; exit {:.1} s after SIGINT",
        sent.elapsed().as_secs_f64()
    );
    // Exit 0 means pcc-ctl exited 0 on its SIGTERM (xtask lab checks it) before the lab went.
    assert_eq!(code, Some(0), "xtask lab after SIGINT\n{all}");
    assert!(
        stderr.contains("interrupted, cleaning up") && stderr.contains("xtask lab: cleaned up"),
        "{all}"
    );
    let left = lab_leftovers(&prefix);
    assert!(left.is_empty(), "left behind after SIGINT: {left:?}");
    // Freeing a program follows its last reference by an RCU grace period: give it a moment.
    let start = Instant::now();
    let mut still = progs.clone();
    while !still.is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        still.retain(|&id| prog_exists(id));
    }
    assert!(
        still.is_empty(),
        "XDP programs {still:?} (of {progs:?}) still loaded after SIGINT"
    );
    progs
}

#[test]
fn lab_interrupted_by_sigint_mid_traffic_cleans_up() {
    require_root!();
    let progs = interrupted("pcc-ctl ready, driving traffic", Duration::from_secs(2));
    assert!(!progs.is_empty(), "no XDP program was attached mid-traffic");
}

#[test]
fn lab_interrupted_by_sigint_while_starting_cleans_up() {
    require_root!();
    // The namespaces exist; the servers and pcc-ctl are still being started.
    interrupted("xtask lab: namespaces ", Duration::ZERO);
}

#[test]
fn status_lines_and_table_rows_parse() {
    let line = "t=  3.1s  wan0 DOWN rx    0.0 Mbit/s rtt   0.1 ms loss   0%  | wan1 up   rx  812.5 Mbit/s rtt   0.2 ms loss   0%  | flows 9 no_wan_up drops 0";
    assert_eq!(
        parse_status(line),
        Some((
            3.1,
            [
                WanStatus {
                    up: false,
                    rx_mbit: Some(0.0)
                },
                WanStatus {
                    up: true,
                    rx_mbit: Some(812.5)
                }
            ]
        ))
    );
    let first = "t=  0.1s  wan0 up   rx      - Mbit/s rtt     - ms loss   -%  | wan1 up   rx      - Mbit/s rtt     - ms loss   -%  | flows 0 no_wan_up drops 0";
    assert_eq!(parse_status(first).unwrap().1[0].rx_mbit, None);
    assert_eq!(parse_status("xtask lab: t=  3.0s: cut isp0"), None);
    let table = "wan      flows   share    conns*   share   tx pkts      tx MB      rx MB  rx Mbit/s\n\
                 wan0        12   40.0%        11   39.3%      4567       0.31     120.50      87.60\n";
    assert_eq!(table_row(table, "wan0"), Some((12.0, 120.5)));
    assert_eq!(table_row(table, "wan1"), None);
}
