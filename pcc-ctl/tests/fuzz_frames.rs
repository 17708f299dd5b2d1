//! A BPF_PROG_TEST_RUN fuzzer: random frames and mutations of valid ones (flipped bytes,
//! random header fields, truncation, extension) into both programs. Every run must end in
//! drop, pass or redirect, and every redirected frame must be a well-formed IPv4 packet whose
//! checksums are as valid as the input's, leaving by a WAN address (LAN side) or going to a
//! LAN host (WAN side): no LAN address leaks, no rewrite breaks a checksum. Seeded, so a
//! failure repeats; `PCC_FUZZ_ITERATIONS` and `PCC_FUZZ_SEED` change the run. Needs root.
use pcc_bench::testbed::*;
use pcc_common::{
    csum,
    packet::{Frame, L4, parse},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, TCP_ACK, TCP_SYN},
};
use pcc_ctl::dataplane::Role;

/// xorshift64*: enough randomness for mutation, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Valid frames for each program, including replies to connections the LAN side opened.
fn seeds(tb: &mut TestBed) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let client = |l4: L4| Frame {
        dst_mac: LAN_MAC,
        src_mac: CLIENT_MAC,
        src: CLIENT,
        dst: SERVER,
        tos: 0,
        ttl: 64,
        id: 7,
        l4,
    };
    let udp = |sport, dport, len: usize, checksum| L4::Udp {
        sport,
        dport,
        payload: vec![0x5a; len],
        checksum,
    };
    let tcp = |sport, flags| L4::Tcp {
        sport,
        dport: 443,
        flags,
        payload: vec![1; 20],
    };
    let echo = L4::Icmp {
        kind: 8,
        code: 0,
        rest: [0, 77, 0, 1],
        payload: vec![2; 24],
    };
    let mut lan = vec![
        client(tcp(40000, TCP_SYN)).bytes(),
        client(tcp(40000, TCP_ACK)).bytes(),
        client(udp(5000, 53, 30, true)).bytes(),
        client(udp(5001, 53, 30, false)).bytes(),
        client(echo).bytes(),
    ];
    lan.extend(client(udp(5002, 7, 2000, true)).fragments(1000));
    let mut wan = Vec::new();
    for frame in lan.clone() {
        let Ok((XDP_REDIRECT, out, _)) = tb.run(Role::Lan, &frame) else {
            continue;
        };
        let Some(p) = parse(&out) else { continue };
        if p.proto == IPPROTO_ICMP || p.l4.len() < 8 {
            continue;
        }
        let wan_id = WAN_ADDRS.iter().position(|a| *a == p.src).expect("a WAN");
        let l4 = if p.proto == IPPROTO_TCP {
            L4::Tcp {
                sport: p.dport,
                dport: p.sport,
                flags: TCP_ACK,
                payload: vec![3; 40],
            }
        } else {
            udp(p.dport, p.sport, 40, true)
        };
        wan.push(
            Frame {
                dst_mac: WAN_MACS[wan_id],
                src_mac: GW_MACS[wan_id],
                src: SERVER,
                dst: p.src,
                tos: 0,
                ttl: 50,
                id: 9,
                l4,
            }
            .bytes(),
        );
    }
    assert!(wan.len() >= 3, "replies to fuzz with: {}", wan.len());
    (lan, wan)
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    match rng.below(6) {
        0 => {
            // Random bytes, half of them claiming to be IPv4.
            f = (0..14 + rng.below(120)).map(|_| rng.byte()).collect();
            if f.len() > 14 && rng.below(2) == 0 {
                f[12..14].copy_from_slice(&[0x08, 0x00]);
                f[14] = 0x45;
            }
        }
        1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
        }
        2 => {
            // One header byte (IPv4 or transport) set at random.
            let i = 14 + rng.below(f.len().min(60) - 14);
            f[i] = rng.byte();
        }
        3 => f.truncate(14 + rng.below(f.len() - 13)),
        4 => f.extend((0..1 + rng.below(64)).map(|_| rng.byte())),
        _ => {
            // A length field: IPv4 total length or UDP length.
            let at = if rng.below(2) == 0 { 16 } else { 38 };
            if f.len() > at + 1 {
                let v = rng.next() as u16 % 2048;
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
    }
    f
}

/// The properties every run must keep (see the module comment).
fn check(role: Role, input: &[u8], action: u32, out: &[u8]) -> Result<(), String> {
    match action {
        XDP_DROP | XDP_PASS => return Ok(()),
        XDP_REDIRECT => {}
        other => return Err(format!("unexpected action {other}")),
    }
    let p = parse(out).ok_or("redirected frame is not plain IPv4")?;
    let ip_ok_in = input.len() >= 34 && csum::checksum(&input[14..34]) == 0;
    if ip_ok_in && !p.ip_checksum_ok {
        return Err("IP checksum broken by the rewrite".into());
    }
    let fragmented = u16::from_be_bytes([input[20], input[21]]) & 0x3fff != 0;
    if !fragmented
        && let Some(before) = parse(input)
        && before.l4_checksum_ok
        && !p.l4_checksum_ok
    {
        return Err("transport checksum broken by the rewrite".into());
    }
    if p.ttl + 1 != input[22] {
        return Err(format!("TTL {} after {}", p.ttl, input[22]));
    }
    match role {
        Role::Lan if !WAN_ADDRS.contains(&p.src) => {
            Err(format!("left with source {} (not a WAN address)", p.src))
        }
        Role::Wan if p.dst.octets()[..3] != [198, 19, 10] => {
            Err(format!("sent to the LAN for {} (not a LAN host)", p.dst))
        }
        _ => Ok(()),
    }
}

#[test]
fn random_and_mutated_frames_keep_every_property() {
    let iterations = env_or("PCC_FUZZ_ITERATIONS", 20_000);
    let seed = env_or("PCC_FUZZ_SEED", 0x5eed_f022);
    let mut tb = TestBed::new(65_536).expect("loading BPF: run as root");
    let (lan, wan) = seeds(&mut tb);
    let mut rng = Rng(seed | 1);
    let mut redirected = 0;
    for i in 0..iterations {
        let (role, pool) = if i % 2 == 0 {
            (Role::Lan, &lan)
        } else {
            (Role::Wan, &wan)
        };
        let pick = rng.below(pool.len());
        let input = mutate(&mut rng, &pool[pick]);
        let (action, out, _) = tb
            .run(role, &input)
            .unwrap_or_else(|e| panic!("run {i}: {e:#}; input {input:02x?}"));
        if let Err(why) = check(role, &input, action, &out) {
            panic!(
                "run {i} ({role:?}, seed {seed:#x}): {why}\ninput  {input:02x?}\noutput {out:02x?}"
            );
        }
        redirected += u64::from(action == XDP_REDIRECT);
    }
    eprintln!("{iterations} frames, {redirected} redirected");
    assert!(redirected > 0, "the mutations kept some frames valid");
}
