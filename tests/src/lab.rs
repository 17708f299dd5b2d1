//! The network-namespace lab: clients behind a bridge, the router, two ISPs, the internet.
//!
//! ```text
//! c1..cN eth0 198.19.10.(10+i)/24 ── switch br0 ── lan0 198.19.10.1/24  [router]
//!                                   wan0 198.18.1.2/24 ── isp0 up0 198.18.1.1  core0 198.18.101.1/30 ── inet i0 198.18.101.2
//!                                   wan1 198.18.2.2/24 ── isp1 up0 198.18.2.1  core0 198.18.102.1/30 ── inet i1 198.18.102.2
//! inet: servers 203.0.113.10 .. 203.0.113.(10+S-1) on lo (this kernel has no dummy driver)
//!
//! optional (see [`LabBuilder`]):
//!   branch(true):   vpn0 198.19.250.1/30 [router] ── branch eth0 198.19.250.2/30, serves 198.19.251.0/24 on lo
//!                   (router: 198.19.251.0/24 via 198.19.250.2 dev vpn0; branch: 198.19.10.0/24 via 198.19.250.1)
//!   modem_ui(true): modem0 eth0 198.18.1.3/24, a macvlan on isp0's up0 (own MAC), in wan0's subnet
//!   wan_mtu(m):     MTU m on wan0, wan1 and the ISPs' up0 (1492: PPPoE)
//!   core_mtu(m):    MTU m on the ISP <-> inet links (core0, i0, i1): the ISPs answer "fragmentation needed"
//! ```
//!
//! Every ISP drops (and counts) IPv4 arriving from the router whose source is not the router's
//! address on that line (BCP 38, `table netdev pccbcp38`, see [`Lab::isp_lease`]).
//!
//! Node names: `"router"`, `"switch"`, `"isp0"`, `"isp1"`, `"inet"`, `"c1"` … `"cN"`, and with
//! their options `"branch"` and `"modem0"`.
//! Every namespace is called `<prefix>-<node>` with a per-lab prefix `pcc` + 5 hex digits.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::proc::{self, LabProcess, Registry};

/// Where each lab leaves a marker `<prefix>` holding its owner's pid, so that a later run can
/// remove the namespaces of a lab whose process was killed before its `Drop` ran.
const MARKER_DIR: &str = "/run/pcc-lab";

pub const LAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 1);
pub const LAN_NET: &str = "198.19.10.0/24";
/// Router addresses on wan0, wan1.
pub const WAN_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 2, 2)];
/// ISP (gateway) addresses on the router's links.
pub const ISP_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 1, 1), Ipv4Addr::new(198, 18, 2, 1)];
pub const WAN_NAMES: [&str; 2] = ["wan0", "wan1"];
/// Router address on `vpn0`, the link to the branch (with [`LabBuilder::branch`]).
pub const VPN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 1);
/// The branch router's address on that link.
pub const BRANCH_PEER: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 2);
/// The subnet behind the branch (every address in it answers, on the branch's lo).
pub const BRANCH_NET: &str = "198.19.251.0/24";
/// A host of the branch subnet.
pub const BRANCH_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 251, 10);
/// The modem's web UI inside wan0's subnet (with [`LabBuilder::modem_ui`]); not the gateway.
pub const MODEM_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
/// Default command timeout of [`Lab::exec`].
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether we run as root (the lab needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Which WAN (0 or 1) a server saw as the client address, if any.
pub fn wan_of_addr(addr: Ipv4Addr) -> Option<usize> {
    WAN_ADDRS.iter().position(|a| *a == addr)
}

/// Options of a lab; see [`Lab::builder`].
#[derive(Clone, Debug)]
pub struct LabBuilder {
    clients: usize,
    servers: usize,
    shaped: Option<u32>,
    ip_forward: bool,
    pcc_ctl: Option<PathBuf>,
    extras: Extras,
}

/// The optional parts of the topology.
#[derive(Clone, Copy, Debug, Default)]
struct Extras {
    wan_mtu: Option<u16>,
    core_mtu: Option<u16>,
    branch: bool,
    modem_ui: bool,
}

impl Default for LabBuilder {
    fn default() -> Self {
        Self {
            clients: 3,
            servers: 50,
            shaped: None,
            ip_forward: false,
            pcc_ctl: None,
            extras: Extras::default(),
        }
    }
}

impl LabBuilder {
    /// Number of LAN clients c1..cN (1..=200, default 3).
    pub fn clients(mut self, n: usize) -> Self {
        self.clients = n;
        self
    }

    /// Number of server addresses 203.0.113.10.. in the inet namespace (1..=240, default 50).
    pub fn servers(mut self, n: usize) -> Self {
        self.servers = n;
        self
    }

    /// `Some(mbit)`: shape each ISP line with tbf at `mbit` Mbit/s in both directions.
    pub fn shaped(mut self, mbit: Option<u32>) -> Self {
        self.shaped = mbit;
        self
    }

    /// Kernel IPv4 forwarding in the router namespace (default off: only XDP forwards).
    pub fn ip_forward(mut self, on: bool) -> Self {
        self.ip_forward = on;
        self
    }

    /// `Some(mtu)`: the router's wan0 and wan1 and the ISPs' `up0` get this MTU (1492 as on a
    /// PPPoE line; default 1500 like the LAN).
    pub fn wan_mtu(mut self, mtu: Option<u16>) -> Self {
        self.extras.wan_mtu = mtu;
        self
    }

    /// `Some(mtu)`: the links beyond the ISPs (each ISP's `core0` and inet's `i0`/`i1`) get
    /// this MTU (e.g. 1400), so an ISP answers a bigger DF packet with "fragmentation needed"
    /// (ISPs forward with the kernel). The servers still advertise the TCP MSS of a 1500 link
    /// (`advmss 1460` on inet's routes), as a server behind a smaller hop does: the hop is
    /// found by path MTU discovery, not by the MSS.
    pub fn core_mtu(mut self, mtu: Option<u16>) -> Self {
        self.extras.core_mtu = mtu;
        self
    }

    /// A branch router behind the router's non-WAN interface `vpn0` (198.19.250.1/30 to the
    /// branch's 198.19.250.2/30): node `"branch"` answers every address of 198.19.251.0/24
    /// (on its lo) and routes the LAN back via the router; the router has the static route
    /// `198.19.251.0/24 via 198.19.250.2 dev vpn0`.
    pub fn branch(mut self, on: bool) -> Self {
        self.extras.branch = on;
        self
    }

    /// A modem web UI at 198.18.1.3 inside wan0's connected subnet, not the gateway: node
    /// `"modem0"`, a macvlan on isp0's `up0` (its own MAC, so a frame sent to the gateway's MAC
    /// does not reach it). isp0 does not route between its customers on `up0` (it drops and
    /// counts what would turn back out of `up0`, see [`Lab::isp_hairpin_packets`]), so the
    /// modem is reached only directly, never through the gateway.
    pub fn modem_ui(mut self, on: bool) -> Self {
        self.extras.modem_ui = on;
        self
    }

    /// The pcc-ctl binary to run (default: see [`crate::pcc_ctl_path`]).
    pub fn pcc_ctl(mut self, path: impl Into<PathBuf>) -> Self {
        self.pcc_ctl = Some(path.into());
        self
    }

    /// Creates the namespaces and links. On error everything created so far is removed.
    pub fn build(self) -> Result<Lab> {
        let Self {
            clients,
            servers,
            shaped,
            ip_forward,
            pcc_ctl,
            extras,
        } = self;
        ensure!(
            is_root(),
            "the lab needs root (it creates network namespaces)"
        );
        ensure!(
            (1..=200).contains(&clients),
            "clients must be 1..=200, got {clients}"
        );
        ensure!(
            (1..=240).contains(&servers),
            "servers must be 1..=240, got {servers}"
        );
        reap_stale_labs();
        let prefix = claim_prefix()?;
        let dir = std::env::temp_dir().join(&prefix);
        let mut lab = Lab {
            prefix,
            clients,
            servers,
            shaped,
            dir,
            namespaces: Vec::new(),
            registry: Registry::default(),
            services: Mutex::new(Vec::new()),
            state: Mutex::new(State::default()),
            bpffs_mounted: false,
            pcc_ctl,
            extras,
        };
        lab.setup(ip_forward)
            .with_context(|| format!("building lab {}", lab.prefix))?;
        Ok(lab)
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) files: BTreeMap<u64, crate::services::TestFile>,
    pub(crate) udp: bool,
    pub(crate) iperf: bool,
    /// The STUN server runs (see `Lab::start_stun`).
    pub(crate) stun: bool,
    pub(crate) downloads: u32,
    /// Nodes running the HTTP server (see `Lab::start_http_on`).
    pub(crate) http_nodes: Vec<String>,
    /// Source addresses each ISP accepts from the router (BCP 38), see `Lab::isp_lease`.
    pub(crate) leases: [Vec<Ipv4Addr>; 2],
}

/// A running lab. Dropping it kills its processes and deletes its namespaces.
pub struct Lab {
    prefix: String,
    clients: usize,
    servers: usize,
    shaped: Option<u32>,
    dir: PathBuf,
    namespaces: Vec<String>,
    pub(crate) registry: Registry,
    pub(crate) services: Mutex<Vec<LabProcess>>,
    pub(crate) state: Mutex<State>,
    bpffs_mounted: bool,
    pub(crate) pcc_ctl: Option<PathBuf>,
    extras: Extras,
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// For tests: a lab of `clients` LAN clients and `servers` server addresses, defaults
    /// otherwise; panics if it cannot be built.
    pub fn with(clients: usize, servers: usize) -> Lab {
        Lab::builder()
            .clients(clients)
            .servers(servers)
            .build()
            .expect("building the lab")
    }

    /// The per-lab prefix of namespace names (`pcc` + 5 hex digits).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Scratch directory of this lab (served files, logs, downloads), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Namespace name of a node (`"router"`, `"c1"`, …). Panics on an unknown node.
    pub fn ns(&self, node: &str) -> String {
        assert!(self.has_node(node), "lab has no node {node:?}");
        format!("{}-{node}", self.prefix)
    }

    /// All node names, in creation order.
    pub fn nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = ["switch", "router", "isp0", "isp1", "inet"]
            .iter()
            .map(ToString::to_string)
            .collect();
        v.extend(self.client_names());
        if self.extras.branch {
            v.push("branch".into());
        }
        if self.extras.modem_ui {
            v.push("modem0".into());
        }
        v
    }

    fn has_node(&self, node: &str) -> bool {
        matches!(node, "switch" | "router" | "isp0" | "isp1" | "inet")
            || (node == "branch" && self.extras.branch)
            || (node == "modem0" && self.extras.modem_ui)
            || node
                .strip_prefix('c')
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| (1..=self.clients).contains(&n))
    }

    pub fn client_count(&self) -> usize {
        self.clients
    }

    pub fn server_count(&self) -> usize {
        self.servers
    }

    /// `Some(mbit)` if the ISP lines are shaped.
    pub fn shaping(&self) -> Option<u32> {
        self.shaped
    }

    /// `["c1", …, "cN"]`.
    pub fn client_names(&self) -> Vec<String> {
        (1..=self.clients).map(|i| format!("c{i}")).collect()
    }

    /// Address of client `ci` (1-based, like the node names): 198.19.10.(10+i).
    pub fn client_addr(&self, i: usize) -> Ipv4Addr {
        assert!((1..=self.clients).contains(&i), "no client c{i}");
        Ipv4Addr::new(198, 19, 10, 10 + i as u8)
    }

    /// Address of a client node by name (`"c2"` → 198.19.10.12).
    pub fn client_addr_of(&self, node: &str) -> Ipv4Addr {
        let i = node
            .strip_prefix('c')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{node:?} is not a client"));
        self.client_addr(i)
    }

    /// Router address on WAN `i` (0-based: wan0 = 198.18.1.2, wan1 = 198.18.2.2).
    pub fn wan_addr(&self, i: usize) -> Ipv4Addr {
        WAN_ADDRS[i]
    }

    /// ISP gateway address for WAN `i` (198.18.1.1, 198.18.2.1).
    pub fn isp_addr(&self, i: usize) -> Ipv4Addr {
        ISP_ADDRS[i]
    }

    /// Server address `i` (0-based): 203.0.113.(10+i).
    pub fn server_addr(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.servers, "no server {i} (lab has {})", self.servers);
        Ipv4Addr::new(203, 0, 113, 10 + i as u8)
    }

    /// All server addresses.
    pub fn server_addrs(&self) -> Vec<Ipv4Addr> {
        (0..self.servers).map(|i| self.server_addr(i)).collect()
    }

    /// `ip netns exec <ns(node)> args…` as a `Command` (not started).
    pub fn command(&self, node: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(node)]).args(args);
        cmd
    }

    /// Runs `args` in `node` and waits (at most [`EXEC_TIMEOUT`], then it is killed).
    pub fn exec(&self, node: &str, args: &[&str]) -> Result<Output> {
        self.exec_opts(node, args, None, EXEC_TIMEOUT)
    }

    /// Like [`exec`](Self::exec) with stdin data and a timeout.
    pub fn exec_opts(
        &self,
        node: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output> {
        let cmd = self.command(node, args);
        run_command(cmd, &args.join(" "), &self.registry, stdin, timeout)
    }

    /// Runs `args` in `node`; error (with its output) unless it exits 0. Returns stdout.
    pub fn run(&self, node: &str, args: &[&str]) -> Result<String> {
        self.run_opts(node, args, None, EXEC_TIMEOUT)
    }

    /// [`run`](Self::run) with stdin data and a timeout.
    pub fn run_opts(
        &self,
        node: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<String> {
        let out = self.exec_opts(node, args, stdin, timeout)?;
        ensure!(
            out.status.success(),
            "in {node}: `{}` failed: {}",
            args.join(" "),
            proc::describe(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sh -c script` in `node`, must exit 0; returns stdout.
    pub fn sh(&self, node: &str, script: &str) -> Result<String> {
        self.run(node, &["sh", "-c", script])
    }

    /// Starts `args` in `node` in the background (own process group, output captured). It is
    /// killed when the returned handle is dropped, and at the latest when the lab is dropped.
    pub fn spawn(&self, node: &str, args: &[&str]) -> Result<LabProcess> {
        LabProcess::spawn(
            self.command(node, args),
            &format!("{node}: {}", args.join(" ")),
            &self.registry,
            libc::SIGKILL,
            Stdio::null(),
        )
    }

    /// [`spawn`](Self::spawn), then waits (at most 10 s) until its stdout has a line `ready`:
    /// for servers and sniffers that must listen before the test goes on.
    pub fn spawn_ready(&self, node: &str, args: &[&str], ready: &str) -> Result<LabProcess> {
        let mut p = self.spawn(node, args)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !p.stdout_text().lines().any(|l| l.trim() == ready) {
            if let Some(st) = p.try_wait() {
                bail!("`{}` exited with {st}: {}", p.name(), p.stderr_text());
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "`{}` not {ready:?} after 10 s: {}",
                p.name(),
                p.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    /// Like [`spawn`](Self::spawn) with a piped stdin (see [`LabProcess::take_stdin`]).
    pub fn spawn_with_stdin(&self, node: &str, args: &[&str]) -> Result<LabProcess> {
        LabProcess::spawn(
            self.command(node, args),
            &format!("{node}: {}", args.join(" ")),
            &self.registry,
            libc::SIGKILL,
            Stdio::piped(),
        )
    }

    pub(crate) fn spawn_command(
        &self,
        cmd: Command,
        name: &str,
        death_signal: i32,
    ) -> Result<LabProcess> {
        LabProcess::spawn(cmd, name, &self.registry, death_signal, Stdio::null())
    }

    /// Feeds an nftables script to `nft -f -` in `node`.
    pub fn nft(&self, node: &str, script: &str) -> Result<()> {
        self.run_opts(
            node,
            &["nft", "-f", "-"],
            Some(script.as_bytes()),
            EXEC_TIMEOUT,
        )
        .map(drop)
    }

    /// `(packets, bytes)` of the named nft counter `name` in table `<family> <table>`.
    pub fn nft_counter(
        &self,
        node: &str,
        family: &str,
        table: &str,
        name: &str,
    ) -> Result<(u64, u64)> {
        let out = self.run(node, &["nft", "list", "counter", family, table, name])?;
        parse_nft_counter(&out)
            .with_context(|| format!("nft counter {table}/{name} in {node}: {out}"))
    }

    /// Interface statistics (`ip -s`) of `dev` in `node`.
    pub fn link_stats(&self, node: &str, dev: &str) -> Result<LinkStats> {
        let out = self.run(node, &["ip", "-j", "-s", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j -s link")?;
        let s = &v[0]["stats64"];
        let n = |a: &str, b: &str| s[a][b].as_u64().unwrap_or(0);
        Ok(LinkStats {
            rx_packets: n("rx", "packets"),
            rx_bytes: n("rx", "bytes"),
            tx_packets: n("tx", "packets"),
            tx_bytes: n("tx", "bytes"),
        })
    }

    /// Whether the offload `feature` (as `ethtool -k` names it, e.g. `rx-vlan-offload`) is on,
    /// for each of `devs` in `node`.
    pub fn ethtool_feature(&self, node: &str, devs: &[&str], feature: &str) -> Result<Vec<bool>> {
        devs.iter()
            .map(|dev| {
                let out = self.run(node, &["ethtool", "-k", dev])?;
                let value = out
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(feature)?.strip_prefix(':'))
                    .with_context(|| format!("{dev} in {node} has no feature {feature}:\n{out}"))?;
                Ok(value.trim().starts_with("on"))
            })
            .collect()
    }

    /// The MAC address of `dev` in `node`.
    pub fn mac(&self, node: &str, dev: &str) -> Result<String> {
        let out = self.run(node, &["ip", "-j", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
        Ok(v[0]["address"]
            .as_str()
            .with_context(|| format!("{dev} in {node} has no MAC address"))?
            .to_owned())
    }

    /// Interfaces in `node` that have an XDP program attached (from `ip -j link show`).
    pub fn xdp_interfaces(&self, node: &str) -> Result<Vec<String>> {
        let out = self.run(node, &["ip", "-j", "link", "show"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
        let mut found = Vec::new();
        for l in v.as_array().into_iter().flatten() {
            if l.get("xdp").is_some() {
                found.push(l["ifname"].as_str().unwrap_or("?").to_owned());
            }
        }
        let text = self.run(node, &["ip", "link", "show"])?;
        for line in text.lines().filter(|l| l.contains(" xdp")) {
            // Lines read "N: NAME:" or, for a veth, "N: NAME@ifPEER:".
            if !found
                .iter()
                .any(|f| line.contains(&format!(" {f}:")) || line.contains(&format!(" {f}@")))
            {
                found.push(line.trim().to_owned());
            }
        }
        Ok(found)
    }

    /// Whatever `bpftool net` lists in `node` (XDP, tc, flow dissector, netfilter hooks), one
    /// entry per attachment; empty when nothing is attached.
    pub fn bpf_attachments(&self, node: &str) -> Result<Vec<String>> {
        let out = self.run(node, &["bpftool", "-j", "net", "show"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("bpftool -j net")?;
        let mut found = Vec::new();
        for obj in v.as_array().into_iter().flatten() {
            for (kind, list) in obj.as_object().into_iter().flatten() {
                for item in list.as_array().into_iter().flatten() {
                    found.push(format!("{kind}: {item}"));
                }
            }
        }
        Ok(found)
    }

    /// Turns on kernel forwarding plus an nftables masquerade on wan0/wan1 in the router.
    /// Only for checking the lab itself without pcc-ctl.
    pub fn enable_kernel_nat(&self) -> Result<()> {
        self.run("router", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        self.nft(
            "router",
            "table ip pcclab_nat {\n\
               chain post { type nat hook postrouting priority srcnat; policy accept;\n\
                 oifname { \"wan0\", \"wan1\" } masquerade\n }\n}\n",
        )
    }

    /// Directory of the lab's own bpffs instance (mounted on /sys/fs/bpf for pcc-ctl).
    pub fn bpffs_dir(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    fn setup(&mut self, ip_forward: bool) -> Result<()> {
        fs::create_dir_all(self.dir.join("www")).context("creating lab dir")?;
        fs::create_dir_all(self.bpffs_dir())?;
        // `ip netns exec` remounts /sys, hiding the host's /sys/fs/bpf; pcc-ctl gets this
        // lab-private bpffs bind-mounted there instead (see `Lab::pcc_command`).
        run_host(&[
            "mount",
            "-t",
            "bpf",
            "bpf",
            &self.bpffs_dir().to_string_lossy(),
        ])?;
        self.bpffs_mounted = true;

        for node in self.nodes() {
            let ns = self.ns(&node);
            run_host(&["ip", "netns", "add", &ns])?;
            self.namespaces.push(ns);
            let fwd = match node.as_str() {
                "isp0" | "isp1" => 1,
                "router" => u8::from(ip_forward),
                _ => 0,
            };
            self.run(
                &node,
                &[
                    "sysctl",
                    "-q",
                    "-e",
                    "-w",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                    &format!("net.ipv4.ip_forward={fwd}"),
                ],
            )?;
            self.ip_batch(&node, &["link set lo up".into()])?;
        }
        let sw = self.ns("switch");
        let mut cmds = vec![
            "link add br0 type bridge forward_delay 0 stp_state 0 mcast_snooping 0".to_string(),
            "link set br0 up".into(),
        ];
        self.ip_batch("switch", &cmds)?;
        for i in 1..=self.clients {
            let addr = self.client_addr(i);
            self.ip_batch(
                &format!("c{i}"),
                &[
                    format!("link add eth0 type veth peer name p-c{i} netns {sw}"),
                    format!("addr add {addr}/24 dev eth0"),
                    "link set eth0 up".into(),
                    format!("route add default via {LAN_GATEWAY}"),
                ],
            )?;
        }
        let (isp0, isp1, inet) = (self.ns("isp0"), self.ns("isp1"), self.ns("inet"));
        self.ip_batch(
            "router",
            &[
                format!("link add lan0 type veth peer name p-lan netns {sw}"),
                format!("link add wan0 type veth peer name up0 netns {isp0}"),
                format!("link add wan1 type veth peer name up0 netns {isp1}"),
                format!("addr add {LAN_GATEWAY}/24 dev lan0"),
                format!("addr add {}/24 dev wan0", WAN_ADDRS[0]),
                format!("addr add {}/24 dev wan1", WAN_ADDRS[1]),
                "link set lan0 up".into(),
                "link set wan0 up".into(),
                "link set wan1 up".into(),
                format!("route add default via {} dev wan0 metric 100", ISP_ADDRS[0]),
                format!("route add default via {} dev wan1 metric 200", ISP_ADDRS[1]),
            ],
        )?;
        for (k, isp_addr) in ISP_ADDRS.iter().enumerate() {
            self.ip_batch(
                &format!("isp{k}"),
                &[
                    format!("link add core0 type veth peer name i{k} netns {inet}"),
                    format!("addr add {isp_addr}/24 dev up0"),
                    format!("addr add 198.18.{}.1/30 dev core0", 101 + k),
                    "link set up0 up".into(),
                    "link set core0 up".into(),
                ],
            )?;
        }
        cmds = vec![
            "addr add 198.18.101.2/30 dev i0".into(),
            "addr add 198.18.102.2/30 dev i1".into(),
            "link set i0 up".into(),
            "link set i1 up".into(),
        ];
        cmds.extend(
            self.server_addrs()
                .iter()
                .map(|a| format!("addr add {a}/32 dev lo")),
        );
        // Behind a smaller core link the servers still advertise a 1500 link's MSS.
        let advmss = if self.extras.core_mtu.is_some() {
            " advmss 1460"
        } else {
            ""
        };
        cmds.push(format!(
            "route add 198.18.1.0/24 via 198.18.101.1 dev i0{advmss}"
        ));
        cmds.push(format!(
            "route add 198.18.2.0/24 via 198.18.102.1 dev i1{advmss}"
        ));
        self.ip_batch("inet", &cmds)?;
        for k in 0..2 {
            self.ip_batch(
                &format!("isp{k}"),
                &[format!(
                    "route add 203.0.113.0/24 via 198.18.{}.2 dev core0",
                    101 + k
                )],
            )?;
        }
        self.set_mtus()?;
        for (k, addr) in WAN_ADDRS.iter().enumerate() {
            self.install_bcp38(k, &[*addr])?;
        }
        let mut ports: Vec<String> = (1..=self.clients).map(|i| format!("p-c{i}")).collect();
        ports.push("p-lan".into());
        let cmds: Vec<String> = ports
            .iter()
            .map(|p| format!("link set {p} master br0 up"))
            .collect();
        self.ip_batch("switch", &cmds)?;

        // veth: NAPI (GRO) on every receiver of redirected frames, full checksums on every host.
        let mut veths: Vec<(String, Vec<String>)> = vec![
            ("switch".into(), ports),
            (
                "router".into(),
                vec!["lan0".into(), "wan0".into(), "wan1".into()],
            ),
            ("isp0".into(), vec!["up0".into(), "core0".into()]),
            ("isp1".into(), vec!["up0".into(), "core0".into()]),
            ("inet".into(), vec!["i0".into(), "i1".into()]),
        ];
        veths.extend(
            self.client_names()
                .into_iter()
                .map(|c| (c, vec!["eth0".into()])),
        );
        if self.extras.branch {
            self.add_branch()?;
            veths.push(("router".into(), vec!["vpn0".into()]));
            veths.push(("branch".into(), vec!["eth0".into()]));
        }
        if self.extras.modem_ui {
            self.add_modem()?;
            veths.push(("modem0".into(), vec!["eth0".into()]));
        }
        for (node, devs) in &veths {
            let script = devs
                .iter()
                .map(|d| format!("ethtool -K {d} tx off gro on >/dev/null"))
                .collect::<Vec<_>>()
                .join(" && ");
            self.sh(node, &script)?;
        }
        if let Some(mbit) = self.shaped {
            for k in 0..2 {
                self.shape(k, mbit)?;
            }
        }
        Ok(())
    }

    /// [`LabBuilder::wan_mtu`] and [`LabBuilder::core_mtu`].
    fn set_mtus(&self) -> Result<()> {
        if let Some(m) = self.extras.wan_mtu {
            self.ip_batch(
                "router",
                &[
                    format!("link set wan0 mtu {m}"),
                    format!("link set wan1 mtu {m}"),
                ],
            )?;
            for k in 0..2 {
                self.ip_batch(&format!("isp{k}"), &[format!("link set up0 mtu {m}")])?;
            }
        }
        if let Some(m) = self.extras.core_mtu {
            for k in 0..2 {
                self.ip_batch(&format!("isp{k}"), &[format!("link set core0 mtu {m}")])?;
            }
            self.ip_batch(
                "inet",
                &[
                    format!("link set i0 mtu {m}"),
                    format!("link set i1 mtu {m}"),
                ],
            )?;
        }
        Ok(())
    }

    /// [`LabBuilder::branch`]: the branch router behind `vpn0`.
    fn add_branch(&self) -> Result<()> {
        let branch = self.ns("branch");
        self.ip_batch(
            "router",
            &[
                format!("link add vpn0 type veth peer name eth0 netns {branch}"),
                format!("addr add {VPN_ADDR}/30 dev vpn0"),
                "link set vpn0 up".into(),
                format!("route add {BRANCH_NET} via {BRANCH_PEER} dev vpn0"),
            ],
        )?;
        self.ip_batch(
            "branch",
            &[
                format!("addr add {BRANCH_PEER}/30 dev eth0"),
                "link set eth0 up".into(),
                format!("route add local {BRANCH_NET} dev lo"),
                format!("route add {LAN_NET} via {VPN_ADDR} dev eth0"),
            ],
        )
    }

    /// [`LabBuilder::modem_ui`]: the modem on isp0's line, and isp0 refusing to hairpin.
    fn add_modem(&self) -> Result<()> {
        let modem = self.ns("modem0");
        self.ip_batch(
            "isp0",
            &[
                "link add link up0 name mv-modem type macvlan mode bridge".into(),
                format!("link set mv-modem netns {modem}"),
            ],
        )?;
        self.ip_batch(
            "modem0",
            &[
                "link set mv-modem name eth0".into(),
                format!("addr add {MODEM_ADDR}/24 dev eth0"),
                "link set eth0 up".into(),
                format!("route add default via {}", ISP_ADDRS[0]),
            ],
        )?;
        self.nft(
            "isp0",
            "table inet pcchairpin {\n\
               counter hairpin {}\n\
               chain hairpin_fwd { type filter hook forward priority 0; policy accept;\n\
                 iifname \"up0\" oifname \"up0\" counter name hairpin drop\n }\n}\n",
        )
    }

    /// Packets isp0 refused to route back out of the line they came from (from the router to
    /// the modem through the gateway; only with [`LabBuilder::modem_ui`]).
    pub fn isp_hairpin_packets(&self) -> Result<u64> {
        Ok(self.nft_counter("isp0", "inet", "pcchairpin", "hairpin")?.0)
    }

    /// Shapes ISP `isp`'s line to `mbit` Mbit/s both ways (tbf on its uplink to the router
    /// and on its core link), replacing any earlier rate.
    pub fn shape(&self, isp: usize, mbit: u32) -> Result<()> {
        for dev in ["up0", "core0"] {
            self.run(
                &format!("isp{isp}"),
                &[
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{mbit}mbit"),
                    "burst",
                    "32kb",
                    "latency",
                    "50ms",
                ],
            )?;
        }
        Ok(())
    }

    /// Runs `ip -batch -` in `node` with one command per line.
    pub fn ip_batch(&self, node: &str, cmds: &[String]) -> Result<()> {
        let mut input = cmds.join("\n");
        input.push('\n');
        self.run_opts(
            node,
            &["ip", "-batch", "-"],
            Some(input.as_bytes()),
            EXEC_TIMEOUT,
        )
        .map(drop)
    }

    fn teardown(&mut self) {
        self.services.lock().unwrap().clear();
        proc::kill_registered(&self.registry);
        for ns in self.namespaces.drain(..).rev() {
            let ok = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("pcc-lab: warning: could not delete namespace {ns}");
            }
        }
        if self.bpffs_mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.bpffs_dir())
                .status();
            self.bpffs_mounted = false;
        }
        if std::env::var_os("PCC_LAB_KEEP_DIR").is_some() {
            eprintln!("pcc-lab: keeping {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
        let _ = fs::remove_file(Path::new(MARKER_DIR).join(&self.prefix));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Interface counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

pub(crate) fn run_command(
    cmd: Command,
    name: &str,
    registry: &Registry,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    let piped = if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut p = LabProcess::spawn(cmd, name, registry, libc::SIGKILL, piped)?;
    if let Some(data) = stdin
        && let Some(mut w) = p.take_stdin()
    {
        // A child that exits early closes the pipe: ignore EPIPE, its status tells.
        let _ = w.write_all(data);
    }
    Ok(p.finish(timeout))
}

/// Runs a command in the host namespace; must exit 0.
fn run_host(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    ensure!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        proc::describe(&out)
    );
    Ok(())
}

fn parse_nft_counter(text: &str) -> Result<(u64, u64)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let find = |key: &str| -> Result<u64> {
        let i = words
            .iter()
            .position(|w| *w == key)
            .with_context(|| format!("no {key:?}"))?;
        Ok(words.get(i + 1).context("no number")?.parse()?)
    };
    Ok((find("packets")?, find("bytes")?))
}

/// Picks a fresh prefix and claims it with a marker file holding our pid.
fn claim_prefix() -> Result<String> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    fs::create_dir_all(MARKER_DIR).with_context(|| format!("creating {MARKER_DIR}"))?;
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mixed = (std::process::id().wrapping_mul(2_654_435_761))
            ^ nanos.rotate_left(7)
            ^ n.wrapping_mul(0x9e37_79b9);
        let prefix = format!("pcc{:05x}", mixed & 0xf_ffff);
        if Path::new("/run/netns")
            .join(format!("{prefix}-router"))
            .exists()
        {
            continue;
        }
        // The marker must appear with the pid already in it: a reaper in another thread or
        // process that read an empty marker would take the lab for a dead one and delete it.
        // So write a private file first and hard-link it into place (link fails if the name
        // exists, like O_EXCL).
        let claim = Path::new(MARKER_DIR).join(format!(".claim-{}-{n}", std::process::id()));
        fs::write(&claim, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", claim.display()))?;
        let linked = fs::hard_link(&claim, Path::new(MARKER_DIR).join(&prefix));
        let _ = fs::remove_file(&claim);
        if linked.is_ok() {
            return Ok(prefix);
        }
    }
    bail!("could not find a free lab prefix")
}

/// What the lab with namespace prefix `prefix` left on the host: its namespaces, its marker
/// in /run/pcc-lab and its scratch directory. Empty once the lab was dropped (or reaped).
pub fn lab_leftovers(prefix: &str) -> Vec<String> {
    let mut left: Vec<String> = fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{prefix}-")))
                .map(|n| format!("namespace {n}"))
                .collect()
        })
        .unwrap_or_default();
    left.sort();
    for path in [
        Path::new(MARKER_DIR).join(prefix),
        std::env::temp_dir().join(prefix),
    ] {
        if path.exists() {
            left.push(path.display().to_string());
        }
    }
    left
}

/// Removes namespaces, bpffs mounts and scratch dirs of labs whose process no longer exists.
pub fn reap_stale_labs() {
    let Ok(entries) = fs::read_dir(MARKER_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let prefix = e.file_name().to_string_lossy().into_owned();
        let pid: i32 = fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // SAFETY: kill with signal 0 only checks for existence.
        let alive = pid > 0
            && unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM };
        if alive || !prefix.starts_with("pcc") {
            continue;
        }
        if let Ok(list) = fs::read_dir("/run/netns") {
            for ns in list.flatten() {
                let name = ns.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{prefix}-")) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                }
            }
        }
        let dir = std::env::temp_dir().join(&prefix);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(dir.join("bpffs"))
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(dir);
        let _ = fs::remove_file(e.path());
        eprintln!("pcc-lab: removed stale lab {prefix} (pid {pid} gone)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_counter_text() {
        let t = "table inet t {\n\tcounter c0 {\n\t\tpackets 12 bytes 3456\n\t}\n}\n";
        assert_eq!(parse_nft_counter(t).unwrap(), (12, 3456));
        assert!(parse_nft_counter("nothing").is_err());
    }

    #[test]
    fn wan_of() {
        assert_eq!(wan_of_addr(Ipv4Addr::new(198, 18, 2, 2)), Some(1));
        assert_eq!(wan_of_addr(Ipv4Addr::new(198, 18, 2, 1)), None);
    }
}
