//! A dataplane loaded but attached nowhere, configured with one LAN and two WANs on `lo` (more
//! LANs with [`TestBed::set_lan`]), to run the programs on crafted frames with
//! BPF_PROG_TEST_RUN: the program tests and the program benchmarks share it; the benchmark
//! programs (`bench_*`, their own object) run beside the dataplane's. Needs root.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf, EbpfLoader, TestRunOptions,
    programs::{TestRun as _, Xdp},
};
use pcc_common::{
    Classifier, Config, LAN_DEVMAP_BASE, LanInfo, MAX_WANS, NatPortRange, SLOT_TABLE_SIZE,
    WAN_FLAG_UP, WanInfo,
    conntrack::Timeouts,
    packet::{Frame, L4},
    route::{Neighbour, NeighbourKey, Route},
    slots,
};
use pcc_ctl::{
    dataplane::{Dataplane, Role},
    maps::Maps,
};

use crate::{BENCH_PROGRAMS, xdp_program};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
pub const CLIENT2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
pub const LAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const WAN_MACS: [[u8; 6]; 2] = [[0x02, 0, 0, 0, 1, 2], [0x02, 0, 0, 0, 2, 2]];
pub const GW_MACS: [[u8; 6]; 2] = [[0x02, 0, 0, 0, 1, 1], [0x02, 0, 0, 0, 2, 1]];
pub const WAN_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 2, 2)];
pub const LAN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 11);
pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 12);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const SEED: u32 = 0x5eed_0001;
/// `lo`: BPF_PROG_TEST_RUN wants a real ingress device, and the devmap a real target.
pub const LO: u32 = 1;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

/// Network byte order, as the maps store addresses.
pub fn be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

pub struct TestBed {
    pub dataplane: Dataplane,
    pub maps: Maps,
    pub nat_ports: NatPortRange,
    /// The benchmark object, loaded when a `bench_*` program first runs.
    bench: Option<Ebpf>,
}

impl TestBed {
    pub fn new(max_connections: u32) -> Result<TestBed> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        ensure!(euid == 0, "loading BPF programs needs root");
        let (dataplane, mut maps) = Dataplane::load(max_connections)?;
        let nat_ports = NatPortRange::default();
        let config = Config {
            classifier: Classifier::BothAddresses as u8,
            lan_count: 0,
            wan_count: 2,
            method: 0,
            policy_count: 0,
            nat_filtering: 0,
            _pad: [0; 2],
            hash_seed: SEED,
            nat_ports,
            // Off: the test bed measures the table; a test of the host limit sets it.
            max_connections_per_host: u32::MAX,
            timeouts: Timeouts::default(),
            sweep: pcc_common::expiry::Sweep::for_connections(max_connections),
        };
        maps.config.set(0, config, 0)?;
        let mut weights = [0; MAX_WANS];
        for (i, weight) in weights.iter_mut().enumerate().take(2) {
            let wan = WanInfo {
                ifindex: LO,
                addr: be(WAN_ADDRS[i]),
                mac: WAN_MACS[i],
                gateway_mac: GW_MACS[i],
                mtu: 1500,
                flags: WAN_FLAG_UP,
            };
            maps.wans.set(i as u32, wan, 0)?;
            maps.devmap.set(i as u32, LO, None, 0)?;
            *weight = 1;
        }
        maps.slots.set(0, slots::build(&weights), 0)?;
        let mut bed = TestBed {
            dataplane,
            maps,
            nat_ports,
            bench: None,
        };
        bed.set_lan(0, LO, LAN_ADDR, LAN_MAC)?;
        Ok(bed)
    }

    /// Configures LAN `lan_id` (a /24 around the router's address `addr`) on port `ifindex`,
    /// as `pcc-ctl up` does: `LANS`, its `DEVMAP` slot, and the LAN count.
    pub fn set_lan(
        &mut self,
        lan_id: u8,
        ifindex: u32,
        addr: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<()> {
        let lan = LanInfo {
            ifindex,
            addr: be(addr),
            netmask: be(Ipv4Addr::new(255, 255, 255, 0)),
            mac,
            mtu: 1500,
        };
        self.maps.lans.set(u32::from(lan_id), lan, 0)?;
        self.maps
            .devmap
            .set(LAN_DEVMAP_BASE + u32::from(lan_id), ifindex, None, 0)?;
        let mut config = self.maps.config.get(&0, 0)?;
        config.lan_count = config.lan_count.max(lan_id + 1);
        self.maps.config.set(0, config, 0)?;
        Ok(())
    }

    /// Mirrors a kernel route into `ROUTES`, as the controller does.
    pub fn set_route(&mut self, dst: Ipv4Addr, prefix: u8, route: Route) -> Result<()> {
        let key = aya::maps::lpm_trie::Key::new(u32::from(prefix), be(dst));
        Ok(self.maps.routes.insert(&key, route, 0)?)
    }

    pub fn remove_route(&mut self, dst: Ipv4Addr, prefix: u8) -> Result<()> {
        let key = aya::maps::lpm_trie::Key::new(u32::from(prefix), be(dst));
        Ok(self.maps.routes.remove(&key)?)
    }

    /// Mirrors a resolved next hop on WAN `wan_id` into `NEIGHBOURS`, as the controller does.
    pub fn set_neighbour(&mut self, wan_id: u8, addr: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let key = NeighbourKey::new(wan_id, be(addr));
        Ok(self
            .maps
            .neighbours
            .insert(key, Neighbour { mac, _pad: 0 }, 0)?)
    }

    /// Runs `role`'s program once on `frame`: (XDP action, frame out, the kernel's time for the
    /// run).
    pub fn run(&mut self, role: Role, frame: &[u8]) -> Result<(u32, Vec<u8>, Duration)> {
        self.run_named(role.program(), frame)
    }

    /// Like [`run`](Self::run) with the frame arriving on port `ifindex` instead of `LO`.
    pub fn run_on(
        &mut self,
        role: Role,
        ifindex: u32,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>, Duration)> {
        self.run_at(role.program(), ifindex, frame, 1)
    }

    /// Like [`run`](Self::run) for any program of the dataplane, or a benchmark program (e.g.
    /// the `bench_drop` floor).
    pub fn run_named(&mut self, program: &str, frame: &[u8]) -> Result<(u32, Vec<u8>, Duration)> {
        self.run_repeated(program, frame, 1)
    }

    /// Runs `program` `repeat` times back to back on one copy of `frame` (each run sees the
    /// previous run's output); the duration is the kernel's mean per run.
    pub fn run_repeated(
        &mut self,
        program: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, Duration)> {
        self.run_at(program, LO, frame, repeat)
    }

    fn run_at(
        &mut self,
        program: &str,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, Duration)> {
        let mut out = vec![0u8; frame.len() + 256];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let prog = self.xdp(program)?;
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::default()
        };
        let result = prog.test_run(options).context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration))
    }

    /// XDP program `name`: a `bench_*` one from the benchmark object, else the dataplane's.
    fn xdp(&mut self, name: &str) -> Result<&mut Xdp> {
        if !name.starts_with("bench_") {
            return self.dataplane.named_program(name);
        }
        let bench = match &mut self.bench {
            Some(bench) => bench,
            bench @ None => bench.insert(
                EbpfLoader::new()
                    .load(BENCH_PROGRAMS)
                    .context("loading the benchmark object")?,
            ),
        };
        xdp_program(bench, name)
    }

    /// Runs the TC egress hook once on `frame` leaving `lo` (where the WANs are): the TC action.
    pub fn run_egress(&mut self, frame: &[u8]) -> Result<i32> {
        let mut out = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let prog = self.dataplane.egress_program()?;
        let result = prog.test_run(options).context("BPF_PROG_TEST_RUN")?;
        Ok(result.return_value as i32)
    }

    /// The WAN the slot table gives a client/server pair (both-addresses classifier).
    pub fn expected_wan(&self, src: Ipv4Addr, dst: Ipv4Addr) -> usize {
        let h = Classifier::BothAddresses.hash(SEED, be(src), be(dst), 0, 0);
        let table = self.maps.slots.get(&0, 0).expect("SLOTS");
        table.slots[h as usize % SLOT_TABLE_SIZE] as usize
    }
}

/// A port of a test's own: moves the calling thread into a network namespace of its own
/// (BPF_PROG_TEST_RUN, the devmap and `ip` look ports up in the caller's; its `lo` is `LO`
/// too), creates the veth pair `name`/`name`p there and returns `name`'s ifindex. The
/// namespace and its ports go when the thread ends.
pub fn own_port(name: &str) -> Result<u32> {
    // SAFETY: unshare has no memory preconditions; CLONE_NEWNET applies to this thread only.
    let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    ensure!(
        unshared == 0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let peer = format!("{name}p");
    ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])?;
    let cname = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    ensure!(ifindex != 0, "{name} has no ifindex");
    Ok(ifindex)
}

/// Runs `ip args…` in the calling thread's network namespace.
pub fn ip(args: &[&str]) -> Result<()> {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .context("running ip")?;
    ensure!(status.success(), "ip {}: {status}", args.join(" "));
    Ok(())
}

/// A frame from a LAN host `src` (MAC `mac`) to `SERVER`.
pub fn from_client(src: Ipv4Addr, mac: [u8; 6], l4: L4) -> Frame {
    Frame {
        dst_mac: LAN_MAC,
        src_mac: mac,
        src,
        dst: SERVER,
        tos: 0x28,
        ttl: 64,
        id: 1,
        l4,
    }
}

/// A frame from `SERVER` to WAN `wan`'s address, as its gateway delivers it.
pub fn from_server(wan: usize, l4: L4) -> Frame {
    Frame {
        dst_mac: WAN_MACS[wan],
        src_mac: GW_MACS[wan],
        src: SERVER,
        dst: WAN_ADDRS[wan],
        tos: 0xb8,
        ttl: 50,
        id: 2,
        l4,
    }
}
