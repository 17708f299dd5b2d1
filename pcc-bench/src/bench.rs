//! Program benchmarks on the test bed (BPF_PROG_TEST_RUN): per-packet cost of each path
//! beside the XDP_DROP floor, at several conntrack fill levels, map memory, and NAT port
//! choice when the ports towards one server run short. Printed as JSON for `cargo xtask
//! bench program`.
//!
//! Each sample is one run on a fresh copy of the frame (`repeat` would feed the program its
//! own rewritten output); the kernel times the run itself, and the median of many samples is
//! reported, measured the same way for the floor.
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::IterableMap;
use pcc_common::{
    CtIn, CtOut, FlowKey, MAX_WANS,
    packet::{Frame, L4},
    proto::{TCP_ACK, TCP_SYN},
    route::{ROUTE_KERNEL, ROUTE_WAN_GATEWAY, Route},
    slots,
};
use pcc_ctl::dataplane::Role;
use serde::Serialize;

use crate::testbed::*;

#[derive(Serialize, serde::Deserialize)]
pub struct Cost {
    pub path: String,
    pub median_ns: f64,
    pub p90_ns: f64,
}

/// Runs per call in the amortized figures: each run decrements the TTL of the same frame,
/// sent with TTL 255, and the programs only forward while it is above 1.
pub const AMORTIZED_REPEAT: u32 = 250;

#[derive(Serialize, serde::Deserialize)]
pub struct FillLevel {
    pub connections: u32,
    pub established_ns: f64,
    pub new_connection_ns: f64,
    /// New connections per second one core can set up (1e9 / new_connection_ns).
    pub new_per_second: f64,
}

#[derive(Serialize, serde::Deserialize)]
pub struct PortShortage {
    pub ports_taken_pct: f64,
    pub attempts: u32,
    pub opened: u32,
    pub exhausted_drops: u64,
    pub median_ns: f64,
}

#[derive(Serialize, serde::Deserialize)]
pub struct Report {
    pub samples: usize,
    pub costs: Vec<Cost>,
    /// The same paths run `AMORTIZED_REPEAT` times per call (the kernel's mean per run), so
    /// the per-call overhead of BPF_PROG_TEST_RUN (copying the frame, reading the clock) is
    /// spread over many runs.
    pub amortized: Vec<Cost>,
    pub amortized_repeat: u32,
    pub map_bytes_per_connection: f64,
    pub map_mib_for_1m: f64,
    pub fill_levels: Vec<FillLevel>,
    pub port_shortage: Vec<PortShortage>,
}

fn frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, l4: impl Fn(u16) -> L4) -> Vec<u8> {
    frame_ttl(64, src, sport, dst, l4)
}

fn frame_ttl(ttl: u8, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, l4: impl Fn(u16) -> L4) -> Vec<u8> {
    Frame {
        dst_mac: LAN_MAC,
        src_mac: CLIENT_MAC,
        src,
        dst,
        tos: 0,
        ttl,
        id: 1,
        l4: l4(sport),
    }
    .bytes()
}

fn tcp(flags: u8) -> impl Fn(u16) -> L4 {
    move |sport| L4::Tcp {
        sport,
        dport: 80,
        flags,
        payload: vec![0; 64],
    }
}

fn udp(sport: u16) -> L4 {
    L4::Udp {
        sport,
        dport: 53,
        payload: vec![0; 64],
        checksum: true,
    }
}

fn stats(mut ns: Vec<f64>) -> (f64, f64) {
    ns.sort_by(f64::total_cmp);
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.9))
}

/// Median and p90 of `n` runs of `program` on the frames `make(i)` gives.
fn measure(
    tb: &mut TestBed,
    program: &str,
    n: usize,
    make: impl Fn(usize) -> Vec<u8>,
) -> Result<(f64, f64)> {
    let mut ns = Vec::with_capacity(n);
    for i in 0..n {
        let (_, _, d) = tb.run_named(program, &make(i))?;
        ns.push(d.as_nanos() as f64);
    }
    Ok(stats(ns))
}

/// Median and p90 of the per-run mean over `calls` calls of `AMORTIZED_REPEAT` runs each.
/// Every run must give `expect`, or the frame stopped taking the path being measured.
fn measure_amortized(
    tb: &mut TestBed,
    program: &str,
    calls: usize,
    frame: &[u8],
    expect: u32,
) -> Result<(f64, f64)> {
    let mut ns = Vec::with_capacity(calls);
    for _ in 0..calls {
        let (action, _, d) = tb.run_repeated(program, frame, AMORTIZED_REPEAT)?;
        ensure!(
            action == expect,
            "{program}: action {action} instead of {expect} after {AMORTIZED_REPEAT} runs"
        );
        ns.push(d.as_nanos() as f64);
    }
    Ok(stats(ns))
}

/// The paths that can run repeatedly on one frame: connections whose translation is the
/// identity (NAT address and port equal to the host's own), so each run finds the same
/// connection in the output of the one before and does all of its work again: lookup,
/// counters, checksum updates, MAC rewrite and redirect.
fn amortized_costs(tb: &mut TestBed, calls: usize) -> Result<Vec<Cost>> {
    let wan = tb.expected_wan(CLIENT, SERVER) as u8;
    // Identity down to the Ethernet header: the WAN's address is the host's own (a
    // connection whose NAT address is not its WAN's is re-pinned), and each frame out is
    // addressed to the MAC of the port it is fed to next (frames for other MACs are not ours).
    let mut info = tb.maps.wans.get(&u32::from(wan), 0)?;
    info.addr = be(CLIENT);
    info.gateway_mac = LAN_MAC;
    tb.maps.wans.set(u32::from(wan), info, 0)?;
    for (proto, sport, dport) in [(6u8, 41_000u16, 80u16), (17, 41_001, 53)] {
        let key = FlowKey::new(be(CLIENT), be(SERVER), sport.to_be(), dport.to_be(), proto);
        let out = CtOut {
            nat_addr: key.src_addr,
            nat_port: key.src_port,
            wan_id: wan,
            tcp_flags: pcc_common::CT_TCP_SYN | pcc_common::CT_TCP_ACK,
            lan_mac: CLIENT_MAC,
            ..Default::default()
        };
        tb.maps.ct_out.insert(key, out, 0)?;
    }
    let wan_addr = WAN_ADDRS[wan as usize];
    let reply_key = FlowKey::new(
        be(SERVER),
        be(wan_addr),
        80u16.to_be(),
        41_002u16.to_be(),
        6,
    );
    let reply_entry = CtIn {
        lan_addr: reply_key.dst_addr,
        lan_port: reply_key.dst_port,
        lan_id: 0,
        lan_mac: WAN_MACS[wan as usize],
        wan_id: wan,
        ..Default::default()
    };
    tb.maps.ct_in.insert(reply_key, reply_entry, 0)?;
    let reply = Frame {
        dst_mac: WAN_MACS[wan as usize],
        src_mac: GW_MACS[wan as usize],
        src: SERVER,
        dst: wan_addr,
        tos: 0,
        ttl: 255,
        id: 2,
        l4: L4::Tcp {
            sport: 80,
            dport: 41_002,
            flags: TCP_ACK,
            payload: vec![0; 64],
        },
    }
    .bytes();
    let mut arp = frame(CLIENT, 5000, SERVER, udp);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let runs: [(&str, &str, Vec<u8>, u32); 5] = [
        (
            "XDP_DROP floor",
            "bench_drop",
            frame(CLIENT, 5000, SERVER, udp),
            XDP_DROP,
        ),
        (
            "established TCP, LAN to WAN",
            "pcc_lan",
            frame_ttl(255, CLIENT, 41_000, SERVER, tcp(TCP_ACK)),
            XDP_REDIRECT,
        ),
        (
            "established UDP, LAN to WAN",
            "pcc_lan",
            frame_ttl(255, CLIENT, 41_001, SERVER, udp),
            XDP_REDIRECT,
        ),
        ("TCP reply, WAN to LAN", "pcc_wan", reply, XDP_REDIRECT),
        ("passed to the kernel (ARP)", "pcc_lan", arp, XDP_PASS),
    ];
    let mut costs = Vec::new();
    for (path, program, frame, expect) in runs {
        let (median_ns, p90_ns) = measure_amortized(tb, program, calls, &frame, expect)?;
        costs.push(Cost {
            path: path.into(),
            median_ns,
            p90_ns,
        });
    }
    Ok(costs)
}

/// Inserts `n` synthetic connection pairs (hosts of 10.x are never seen on the wire: the
/// entries only occupy the table).
fn prefill(tb: &mut TestBed, n: u32) -> Result<()> {
    for i in 0..n {
        let key = FlowKey::new(
            u32::from_ne_bytes([198, 19, (i >> 16) as u8, (i >> 8) as u8]),
            be(Ipv4Addr::new(203, 0, 113, 200)),
            (i as u16).to_be(),
            443u16.to_be(),
            6,
        );
        let nat_port = (1024 + (i % 31_000) as u16).to_be();
        let nat_addr = be(Ipv4Addr::new(198, 18, 9, (i / 31_000) as u8));
        let out = CtOut {
            nat_addr,
            nat_port,
            wan_id: 0,
            lan_mac: CLIENT_MAC,
            ..Default::default()
        };
        let reply = CtIn {
            lan_addr: key.src_addr,
            lan_port: key.src_port,
            ..Default::default()
        };
        tb.maps
            .ct_in
            .insert(key.reply_key(nat_addr, nat_port), reply, 0)?;
        tb.maps.ct_out.insert(key, out, 0)?;
    }
    Ok(())
}

/// A map's `memlock` as the kernel reports it for our own file descriptor (by fd, not by
/// name: other pcc instances may have maps of the same name).
fn map_bytes(map: &aya::maps::MapData) -> Result<f64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = map.fd().as_fd().as_raw_fd();
    let info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).context("reading fdinfo")?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in fdinfo")
}

/// Costs at one fill level: established TCP, and new connections (distinct source ports).
fn fill_level(n: usize, fill: u32) -> Result<FillLevel> {
    let mut tb = TestBed::new(fill + n as u32 + 1024)?;
    prefill(&mut tb, fill)?;
    tb.run(Role::Lan, &frame(CLIENT, 40000, SERVER, tcp(TCP_SYN)))?;
    let (established_ns, _) = measure(&mut tb, "pcc_lan", n, |_| {
        frame(CLIENT, 40000, SERVER, tcp(TCP_ACK))
    })?;
    let (new_connection_ns, _) = measure(&mut tb, "pcc_lan", n, |i| {
        frame(CLIENT, 1024 + (i % 60_000) as u16, SERVER, tcp(TCP_SYN))
    })?;
    Ok(FillLevel {
        connections: fill,
        established_ns,
        new_connection_ns,
        new_per_second: 1e9 / new_connection_ns,
    })
}

/// New connections to one server when `pct` % of the NAT ports towards it are taken.
fn port_shortage(pct: f64, attempts: u32) -> Result<PortShortage> {
    let mut tb = TestBed::new(70_000)?;
    let mut w = [0; MAX_WANS];
    w[0] = 1;
    tb.maps.slots.set(0, slots::build(&w), 0)?;
    let ports = tb.nat_ports;
    let taken = (f64::from(ports.len()) * pct / 100.0) as u32;
    for i in 0..taken {
        let remote = FlowKey::new(
            be(SERVER),
            be(WAN_ADDRS[0]),
            80u16.to_be(),
            ports.nth(i).to_be(),
            6,
        );
        tb.maps.ct_in.insert(remote, CtIn::default(), 0)?;
    }
    let mut ns = Vec::new();
    for i in 0..attempts {
        let (action, _, d) = tb.run(
            Role::Lan,
            &frame(CLIENT, 33_000 + i as u16, SERVER, tcp(TCP_SYN)),
        )?;
        ns.push(d.as_nanos() as f64);
        // A refusal is redirected too (ICMP "administratively prohibited" back to the host).
        let _ = action;
    }
    let opened = tb.maps.wan_counters(0)?.flows_created as u32;
    let exhausted_drops = tb.maps.counters()?[pcc_common::Counter::DropNatPortsExhausted as usize];
    Ok(PortShortage {
        ports_taken_pct: pct,
        attempts,
        opened,
        exhausted_drops,
        median_ns: stats(ns).0,
    })
}

/// `pcc-bench program [--samples N] [--quick] [--amortized]`: `--quick` (the smoke run) stops at 10 000
/// connections instead of 1 000 000.
pub fn program_costs(args: &[&str]) -> Result<()> {
    let (mut samples, mut fills) = (20_000usize, vec![0, 100_000, 1_000_000]);
    let mut amortized_only = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--samples" => samples = it.next().context("--samples takes a number")?.parse()?,
            "--quick" => fills = vec![0, 10_000],
            "--amortized" => amortized_only = true,
            other => bail!(
                "unknown option {other}: pcc-bench program [--samples N] [--quick] [--amortized]"
            ),
        }
    }
    if amortized_only {
        // Only the repeated runs, long enough to profile (`perf record -g`).
        let mut tb = TestBed::new(1024)?;
        let costs = amortized_costs(&mut tb, samples)?;
        println!("{}", serde_json::to_string_pretty(&costs)?);
        return Ok(());
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&measure_all(samples, &fills)?)?
    );
    Ok(())
}

/// Every program figure (see the module comment).
pub fn measure_all(samples: usize, fills: &[u32]) -> Result<Report> {
    // Room for the connections of both new-connection rows, and the amortized ones after.
    let mut tb = TestBed::new(2 * samples as u32 + 1024)?;
    let wan = tb.expected_wan(CLIENT, SERVER);
    let mut costs = Vec::new();
    let mut add = |path: &str, (median_ns, p90_ns): (f64, f64)| {
        costs.push(Cost {
            path: path.into(),
            median_ns,
            p90_ns,
        });
    };
    add(
        "XDP_DROP floor",
        measure(&mut tb, "bench_drop", samples, |_| {
            frame(CLIENT, 5000, SERVER, udp)
        })?,
    );
    // Open the connections, then time their later packets.
    let (_, out, _) = tb.run(Role::Lan, &frame(CLIENT, 40000, SERVER, tcp(TCP_SYN)))?;
    let nat_tcp = pcc_common::packet::parse(&out).context("NATed SYN")?.sport;
    tb.run(Role::Lan, &frame(CLIENT, 5000, SERVER, udp))?;
    add(
        "established TCP, LAN to WAN",
        measure(&mut tb, "pcc_lan", samples, |_| {
            frame(CLIENT, 40000, SERVER, tcp(TCP_ACK))
        })?,
    );
    add(
        "established UDP, LAN to WAN",
        measure(&mut tb, "pcc_lan", samples, |_| {
            frame(CLIENT, 5000, SERVER, udp)
        })?,
    );
    let reply = from_server(
        wan,
        L4::Tcp {
            sport: 80,
            dport: nat_tcp,
            flags: TCP_ACK,
            payload: vec![0; 64],
        },
    )
    .bytes();
    add(
        "TCP reply, WAN to LAN",
        measure(&mut tb, "pcc_wan", samples, |_| reply.clone())?,
    );
    add(
        "new TCP connection",
        measure(&mut tb, "pcc_lan", samples, |i| {
            frame(CLIENT2, 1024 + (i % 60_000) as u16, SERVER, tcp(TCP_SYN))
        })?,
    );
    // The routing-table mirror a router with VPNs and static routes gives the dataplane: a
    // thousand routes that the servers' addresses match none of, and one static route
    // through a WAN's gateway.
    for i in 0..1000u32 {
        let prefix = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + (i << 4));
        tb.set_route(
            prefix,
            28,
            Route {
                kind: ROUTE_KERNEL,
                ..Route::default()
            },
        )?;
    }
    let service = Ipv4Addr::new(203, 0, 113, 200);
    tb.set_route(
        service,
        32,
        Route {
            kind: ROUTE_WAN_GATEWAY,
            wan_id: wan as u8,
            ..Route::default()
        },
    )?;
    // Another server than the row without routes, so every tuple is new again.
    let server2 = Ipv4Addr::new(203, 0, 113, 11);
    add(
        "new TCP connection, 1000 routes mirrored",
        measure(&mut tb, "pcc_lan", samples, |i| {
            frame(CLIENT2, 1024 + (i % 60_000) as u16, server2, tcp(TCP_SYN))
        })?,
    );
    tb.run(Role::Lan, &frame(CLIENT, 40001, service, tcp(TCP_SYN)))?;
    add(
        "established TCP pinned by a static route",
        measure(&mut tb, "pcc_lan", samples, |_| {
            frame(CLIENT, 40001, service, tcp(TCP_ACK))
        })?,
    );
    let mut arp = frame(CLIENT, 5000, SERVER, udp);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    add(
        "passed to the kernel (ARP)",
        measure(&mut tb, "pcc_lan", samples, |_| arp.clone())?,
    );
    let amortized = amortized_costs(&mut tb, (samples / 50).max(20))?;
    drop(tb);

    let one_m = TestBed::new(1 << 20)?;
    // Every map sized by the connection count: the pair, the endpoint-independent bindings
    // (one per LAN endpoint, so up to one per connection), the hosts' counts (capped, see
    // dataplane.rs) and the sweep's expiry slots (two per connection).
    let m = &one_m.maps;
    let map_bytes = map_bytes(IterableMap::map(&m.ct_out))?
        + map_bytes(IterableMap::map(&m.ct_in))?
        + map_bytes(IterableMap::map(&m.bind_out))?
        + map_bytes(IterableMap::map(&m.bind_in))?
        + map_bytes(IterableMap::map(&m.host_connections))?
        + map_bytes(IterableMap::map(&m.expiry_slots))?;
    drop(one_m);
    let per_conn = map_bytes / f64::from(1u32 << 20);
    let mut fill_levels = Vec::new();
    for &fill in fills {
        fill_levels.push(fill_level(samples.min(20_000), fill)?);
    }
    let mut port_shortage_rows = Vec::new();
    for pct in [0.0, 90.0, 99.0, 100.0] {
        port_shortage_rows.push(port_shortage(pct, (samples as u32).min(500))?);
    }
    Ok(Report {
        samples,
        costs,
        amortized,
        amortized_repeat: AMORTIZED_REPEAT,
        map_bytes_per_connection: per_conn,
        map_mib_for_1m: map_bytes / (1024.0 * 1024.0),
        fill_levels,
        port_shortage: port_shortage_rows,
    })
}
