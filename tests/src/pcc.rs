//! Running `pcc-ctl` in the router namespace.

use std::{
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    lab::Lab,
    metrics::Metrics,
    proc::{self, LabProcess},
};

/// Where pcc-ctl serves metrics unless the caller passes `--metrics`.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9100";
/// The line pcc-ctl prints on stdout once attached and serving.
pub const READY_LINE: &str = "pcc-ctl: ready";
/// How long [`Lab::start_pcc`] waits for it.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The pcc-ctl binary: `$PCC_CTL`, else the newer of `target/release/pcc-ctl` and
/// `target/debug/pcc-ctl` (honouring `$CARGO_TARGET_DIR`).
pub fn pcc_ctl_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PCC_CTL") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "PCC_CTL={} is not a file", p.display());
        return Ok(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let candidates = [target.join("release/pcc-ctl"), target.join("debug/pcc-ctl")];
    candidates
        .iter()
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p.clone())
        .with_context(|| {
            format!(
                "pcc-ctl binary not found (looked for {} and {}); build it with \
                 `cargo build --release -p pcc-ctl` or set PCC_CTL",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// A pcc-ctl running in the router namespace. Dropping it sends SIGTERM (then SIGKILL after
/// 10 s) so the dataplane is detached.
pub struct PccHandle {
    proc: Option<LabProcess>,
    router_ns: String,
    metrics_addr: String,
}

/// How a pcc-ctl run ended.
#[derive(Debug)]
pub struct PccExit {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl PccHandle {
    /// The process (for its pid, output so far, …).
    pub fn process(&mut self) -> &mut LabProcess {
        self.proc.as_mut().expect("pcc-ctl handle already stopped")
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.process().is_running()
    }

    /// `host:port` of its metrics endpoint.
    pub fn metrics_addr(&self) -> &str {
        &self.metrics_addr
    }

    /// The raw `/metrics` text.
    pub fn metrics_text(&self) -> Result<String> {
        fetch_metrics(&self.router_ns, &self.metrics_addr)
    }

    /// Scrapes and parses `/metrics`.
    pub fn metrics(&self) -> Result<Metrics> {
        Metrics::parse(&self.metrics_text()?)
    }

    /// Output so far (stdout, stderr).
    pub fn output(&mut self) -> (String, String) {
        let p = self.process();
        (p.stdout_text(), p.stderr_text())
    }

    /// [`stop`](Self::stop), and an error unless it exited 0.
    pub fn stop_cleanly(self) -> Result<()> {
        let exit = self.stop()?;
        ensure!(
            exit.code() == Some(0),
            "pcc-ctl did not exit cleanly: {}",
            exit.describe()
        );
        Ok(())
    }

    /// Sends SIGTERM and waits up to 15 s for it to exit (SIGKILL after that, reported as an
    /// error).
    pub fn stop(mut self) -> Result<PccExit> {
        let mut p = self.proc.take().expect("pcc-ctl handle already stopped");
        p.signal(libc::SIGTERM);
        let status = p.wait_timeout(Duration::from_secs(15));
        let name = p.name().to_owned();
        let out = p.finish(Duration::ZERO);
        let exit = PccExit {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        ensure!(
            status.is_some(),
            "`{name}` did not exit within 15 s of SIGTERM (killed); stderr:\n{}",
            exit.stderr
        );
        Ok(exit)
    }
}

impl PccHandle {
    /// SIGKILL, as a crash would end it: nothing is cleaned up. Panics unless it dies within
    /// 5 s.
    pub fn kill(mut self) {
        let p = self.process();
        p.signal(libc::SIGKILL);
        assert!(
            p.wait_timeout(Duration::from_secs(5)).is_some(),
            "pcc-ctl did not die"
        );
    }
}

impl Drop for PccHandle {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGTERM);
            if p.wait_timeout(Duration::from_secs(10)).is_none() {
                eprintln!("pcc-lab: pcc-ctl ignored SIGTERM for 10 s, killing it");
            }
        }
    }
}

impl PccExit {
    /// Exit code, `None` if killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn describe(&self) -> String {
        let status = match self.status.code() {
            Some(c) => format!("exit code {c}"),
            None => format!("signal {}", self.status.signal().unwrap_or(0)),
        };
        format!(
            "{status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn fetch_metrics(router_ns: &str, addr: &str) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", router_ns, "curl", "-sf", "--max-time", "3"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .context("running curl for metrics")?;
    ensure!(
        out.status.success(),
        "metrics at http://{addr}/metrics in {router_ns} not answering: {}",
        proc::describe(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Lab {
    /// The command that runs `pcc-ctl args…` in the router namespace as if the router were
    /// its own machine: in the private mount namespace that `ip netns exec` creates, the lab's
    /// own bpffs is bind-mounted on /sys/fs/bpf (`ip netns exec` remounts /sys, which hides
    /// the host's bpffs) and a lab directory on /run/pcc (pcc-ctl's per-interface locks, which
    /// are keyed by interface name only and would otherwise clash between labs).
    pub fn pcc_command(&self, args: &[&str]) -> Result<Command> {
        let bin = match &self.pcc_ctl {
            Some(p) => p.clone(),
            None => pcc_ctl_path()?,
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns("router"), "sh", "-c"])
            .arg(
                r#"mount --bind "$0" /sys/fs/bpf && mkdir -p /run/pcc "$1" && mount --bind "$1" /run/pcc && shift && exec "$@""#,
            )
            .arg(self.bpffs_dir())
            .arg(self.dir().join("run-pcc"))
            .arg(bin)
            .args(args);
        Ok(cmd)
    }

    /// Starts `pcc-ctl up args…` in the router namespace and waits (30 s at most) until it
    /// prints `pcc-ctl: ready` or its metrics answer. `--wan wan0,wan1`, `--lan lan0` and
    /// `--metrics 127.0.0.1:9100` are added unless `args` has them.
    pub fn start_pcc(&self, args: &[&str]) -> Result<PccHandle> {
        let mut full: Vec<&str> = vec!["up"];
        if !args.contains(&"--wan") {
            full.extend(["--wan", "wan0,wan1"]);
        }
        if !args.contains(&"--lan") {
            full.extend(["--lan", "lan0"]);
        }
        let metrics_addr = match args.iter().position(|a| *a == "--metrics") {
            Some(i) => args.get(i + 1).copied().unwrap_or(DEFAULT_METRICS),
            None => {
                full.extend(["--metrics", DEFAULT_METRICS]);
                DEFAULT_METRICS
            }
        }
        .to_owned();
        full.extend_from_slice(args);
        let cmd = self.pcc_command(&full)?;
        let name = format!("pcc-ctl {}", full.join(" "));
        // SIGTERM if the test thread dies: pcc-ctl then detaches like on a normal stop.
        let p = self.spawn_command(cmd, &name, libc::SIGTERM)?;
        let mut handle = PccHandle {
            proc: Some(p),
            router_ns: self.ns("router"),
            metrics_addr,
        };
        let started = Instant::now();
        let mut next_scrape = started + Duration::from_millis(300);
        loop {
            let p = handle.process();
            if p.stdout_text().lines().any(|l| l.trim() == READY_LINE) {
                return Ok(handle);
            }
            if let Some(st) = p.try_wait() {
                bail!(
                    "`{name}` exited with {st} before it was ready\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    p.stdout_text().trim_end(),
                    p.stderr_text().trim_end()
                );
            }
            if Instant::now() >= next_scrape {
                if handle.metrics_text().is_ok() {
                    return Ok(handle);
                }
                next_scrape = Instant::now() + Duration::from_millis(500);
            }
            if started.elapsed() > START_TIMEOUT {
                let (out, err) = handle.output();
                bail!(
                    "`{name}` not ready after {} s (no `{READY_LINE}` line, no metrics)\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    START_TIMEOUT.as_secs(),
                    out.trim_end(),
                    err.trim_end()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// [`start_pcc`](Self::start_pcc), then waits (10 s at most) until both WANs are up.
    pub fn start_pcc_wans_up(&self, args: &[&str]) -> Result<PccHandle> {
        let pcc = self.start_pcc(args)?;
        crate::health::wait_wans_up(&pcc, &crate::WAN_NAMES, Duration::from_secs(10))?;
        Ok(pcc)
    }

    /// Runs `pcc-ctl args…` (args complete, including `up`) in the router namespace and waits
    /// for it to exit (killed after `timeout`: then `status.code()` is `None`). `RUST_LOG` is
    /// removed from its environment so the output is what a user sees by default.
    pub fn run_pcc(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        Ok(self.spawn_pcc(args)?.finish(timeout))
    }

    /// Starts `pcc-ctl args…` (args complete) in the router namespace without waiting for
    /// anything, `RUST_LOG` removed like [`run_pcc`](Self::run_pcc): for tests that act while
    /// it is still starting.
    pub fn spawn_pcc(&self, args: &[&str]) -> Result<LabProcess> {
        let mut cmd = self.pcc_command(args)?;
        cmd.env_remove("RUST_LOG");
        self.spawn_command(cmd, &format!("pcc-ctl {}", args.join(" ")), libc::SIGTERM)
    }

    /// Runs the client command `pcc-ctl args…` (`status`, `flows`, …: they talk to a running
    /// controller's API) in the router namespace; must exit 0. Returns stdout.
    pub fn pcc_cli(&self, args: &[&str]) -> Result<String> {
        let bin = match &self.pcc_ctl {
            Some(p) => p.clone(),
            None => pcc_ctl_path()?,
        };
        let bin = bin.to_string_lossy().into_owned();
        let mut full = vec![bin.as_str()];
        full.extend_from_slice(args);
        self.run("router", &full)
    }

    /// [`pcc_cli`](Self::pcc_cli) with `--json` output, parsed.
    pub fn pcc_cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let text = self.pcc_cli(args)?;
        serde_json::from_str(&text).with_context(|| format!("pcc-ctl {args:?}: {text}"))
    }

    /// The connections `pcc-ctl flows --json` lists for LAN host `host` (a controller with
    /// metrics on `api`).
    pub fn pcc_flows_of(
        &self,
        api: &str,
        host: std::net::Ipv4Addr,
    ) -> Result<Vec<serde_json::Value>> {
        let v =
            self.pcc_cli_json(&["flows", "--api", api, "--host", &host.to_string(), "--json"])?;
        v.as_array()
            .cloned()
            .with_context(|| format!("flows --json is not a list: {v}"))
    }

    /// The TC egress hooks pcc-ctl attached to the WANs, as (WAN, BPF link id): read from
    /// their pinned tcx links (the `bpftool net` of older distributions lists no tcx hooks).
    pub fn egress_links(&self) -> Result<Vec<(String, u64)>> {
        let dir = self.bpffs_dir().join("pcc/lan0");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(wan) = name
                .strip_prefix("link_")
                .and_then(|n| n.strip_suffix(":egress"))
            else {
                continue;
            };
            let path = entry.path().to_string_lossy().into_owned();
            let link = bpftool_link(&["pinned", &path])?
                .with_context(|| format!("{path} pins no link"))?;
            let id = link["id"]
                .as_u64()
                .with_context(|| format!("bpftool: {link}"))?;
            found.push((wan.to_owned(), id));
        }
        found.sort();
        Ok(found)
    }

    /// Whether the BPF link `id` still exists (a detached link whose last holder closed it
    /// does not).
    pub fn link_exists(&self, id: u64) -> Result<bool> {
        Ok(bpftool_link(&["id", &id.to_string()])?.is_some())
    }

    /// What of pcc's could be left in the router after it exits: its routes, nftables rules,
    /// managed neighbour entries, pins, and files in /run/pcc (locks, pinned-state and offload
    /// records). Equal before and after a run when the run cleaned up.
    pub fn router_footprint(&self) -> Result<String> {
        let routes = self.run("router", &["ip", "route", "show", "table", "all"])?;
        let nft = self.run("router", &["nft", "list", "ruleset"])?;
        let neigh = self.run("router", &["ip", "neigh", "show"])?;
        let managed: Vec<&str> = neigh.lines().filter(|l| l.contains("managed")).collect();
        let mut pins = Vec::new();
        let bpffs = self.bpffs_dir();
        let mut dirs = vec![bpffs.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir)?.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path.clone());
                }
                pins.push(path.strip_prefix(&bpffs)?.display().to_string());
            }
        }
        pins.sort();
        let mut run: Vec<String> = std::fs::read_dir(self.dir().join("run-pcc"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        run.sort();
        Ok(format!(
            "routes:\n{routes}\nnftables:\n{nft}\nmanaged neighbours: {managed:?}\npins: {pins:?}\n/run/pcc: {run:?}\n"
        ))
    }

    /// Panics unless nothing of pcc is attached in the router any more and its
    /// [`router_footprint`](Self::router_footprint) is `before` again.
    pub fn assert_router_as_before(&self, before: &str) {
        assert_eq!(
            self.leftover_attachments().unwrap(),
            None,
            "left attached after pcc-ctl exited"
        );
        assert_eq!(
            self.router_footprint().unwrap(),
            before,
            "the router is not as it was before pcc-ctl ran"
        );
    }

    /// `pcc-ctl down --lan lan0` (at most 20 s): whether it succeeded, and stdout + stderr.
    pub fn pcc_down(&self) -> Result<(bool, String)> {
        let out = self.run_pcc(&["down", "--lan", "lan0"], Duration::from_secs(20))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ))
    }

    /// Asserts-style check that nothing of pcc is left attached in the router: no XDP on any
    /// interface, `bpftool net` empty. Returns a description of what is left, if anything.
    pub fn leftover_attachments(&self) -> Result<Option<String>> {
        let xdp = self.xdp_interfaces("router")?;
        let bpf = self.bpf_attachments("router")?;
        if xdp.is_empty() && bpf.is_empty() {
            return Ok(None);
        }
        Ok(Some(format!(
            "XDP still attached on {xdp:?}; bpftool net shows {bpf:?}"
        )))
    }
}

/// `bpftool -j link show WHICH…` as JSON, or `None` when there is no such link.
fn bpftool_link(which: &[&str]) -> Result<Option<serde_json::Value>> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .args(which)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(
        serde_json::from_slice(&out.stdout).context("bpftool -j link show")?,
    ))
}
