//! `bench_gen`, the live-frames generator of `cargo xtask bench forward`, on crafted frames
//! (BPF_PROG_TEST_RUN). Needs root (loading BPF).
use std::net::Ipv4Addr;

use pcc_bench::generate::{GenerateOpts, Generator, generate};
use pcc_common::{
    generator::{GEN_FLOWS, flow},
    packet::{Frame, L4, parse},
};

const XDP_TX: u32 = 3;

fn opts(iface: &str, count: &str) -> GenerateOpts {
    GenerateOpts::parse(&[
        iface,
        "--count",
        count,
        "--src-mac",
        "02:00:00:00:00:11",
        "--dst-mac",
        "02:00:00:00:00:01",
        "--src",
        "198.19.10.11",
    ])
    .unwrap()
}

/// The generator's frame for flow `i`, built from scratch.
fn expected(i: u32) -> Vec<u8> {
    let (dst, sport) = flow(i);
    Frame {
        dst_mac: [2, 0, 0, 0, 0, 1],
        src_mac: [2, 0, 0, 0, 0, 0x11],
        src: Ipv4Addr::new(198, 19, 10, 11),
        dst: Ipv4Addr::from(dst),
        tos: 0,
        ttl: 64,
        id: 1,
        l4: L4::Udp {
            sport,
            dport: 9,
            payload: vec![0; 18],
            checksum: false,
        },
    }
    .bytes()
}

/// Each run makes the next flow's frame, byte for byte, out of whatever the page held: the
/// frame as sent, or as a router left it after translating it in place (other MACs, source
/// address and port, TTL, checksums).
#[test]
fn bench_gen_rewrites_recycled_frames_to_the_next_flow() {
    let mut generator = Generator::load(&opts("lo", "1000000")).expect("loading bench_gen (root)");
    let translated = Frame {
        dst_mac: [2, 0, 0, 0, 1, 1],
        src_mac: [2, 0, 0, 0, 1, 2],
        src: Ipv4Addr::new(198, 18, 1, 2),
        dst: Ipv4Addr::new(203, 0, 113, 33),
        tos: 0,
        ttl: 63,
        id: 1,
        l4: L4::Udp {
            sport: 40000,
            dport: 9,
            payload: vec![0; 18],
            checksum: true,
        },
    }
    .bytes();
    let mut page = expected(0);
    for i in 0..GEN_FLOWS + 3 {
        let input = if i % 3 == 1 { &translated } else { &page };
        let (action, out) = generator.run_on(input).unwrap();
        assert_eq!(action, XDP_TX);
        assert_eq!(out, expected(i), "run {i}");
        let p = parse(&out).unwrap();
        assert!(p.ip_checksum_ok && p.udp_checksum_zero, "run {i}: {p:?}");
        page = out;
    }
    assert_eq!(generator.sent().unwrap(), u64::from(GEN_FLOWS + 3));
}

/// The live-frames call itself (flags, context, batch) is accepted: on `lo`, which cannot
/// transmit XDP frames, the kernel drops them after the program ran.
#[test]
fn generate_runs_in_live_frames_mode() {
    let done = generate(&opts("lo", "5000")).expect("live-frames test run");
    assert_eq!(done.sent, 5000);
    assert!(!done.stopped_early);
}

/// Paced, the program spaces the frames and stops at the count.
#[test]
fn generate_paces_and_stops_at_the_count() {
    let mut o = opts("lo", "3000");
    o.rate = Some(100_000);
    let done = generate(&o).expect("live-frames test run");
    assert_eq!(done.sent, 3000);
    // 30 ms at 100 kpps; the program catches up at most 100 µs after a stall.
    assert!(done.seconds >= 0.025, "{done:?}");
}
