//! The program test rig shared by the program test files: the loaded dataplane with
//! assertions, the hosts, and frames as they must come out.
#![allow(
    dead_code,
    reason = "each test file compiles the rig on its own and uses part of it; `expect` would fail in the files that use all of it"
)]
use std::net::Ipv4Addr;

use pcc_bench::testbed::*;
use pcc_common::{
    Counter, FlowKey,
    packet::{Frame, L4, TcpSegment},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use pcc_ctl::dataplane::Role;

/// The shared test bed, with assertions instead of errors.
pub struct Rig(TestBed);

impl std::ops::Deref for Rig {
    type Target = TestBed;
    fn deref(&self) -> &TestBed {
        &self.0
    }
}

impl std::ops::DerefMut for Rig {
    fn deref_mut(&mut self) -> &mut TestBed {
        &mut self.0
    }
}

impl Rig {
    pub fn new(max_connections: u32) -> Rig {
        Rig(TestBed::new(max_connections).expect("program tests load BPF: run them as root"))
    }

    pub fn run(&mut self, role: Role, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_on(role, LO, frame)
    }

    /// Runs `role`'s program on `frame` arriving on port `ifindex`.
    pub fn run_on(&mut self, role: Role, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let (action, out, _) = self
            .0
            .run_on(role, ifindex, frame)
            .expect("BPF_PROG_TEST_RUN");
        (action, out)
    }

    /// Runs each case's LAN frame arriving on port `ifindex`: each must end in its XDP action
    /// and be counted under its reason.
    pub fn check_lan_cases(&mut self, ifindex: u32, cases: Vec<(&str, Vec<u8>, u32, Counter)>) {
        self.check(
            cases
                .into_iter()
                .map(|(what, frame, action, counter)| Case {
                    what: what.to_string(),
                    role: Role::Lan,
                    port: ifindex,
                    frame,
                    action,
                    counter,
                    out: Out::Unchecked,
                })
                .collect(),
        );
    }

    /// Runs a fixture table, one row after the other on the same dataplane (a row sees the
    /// connections the rows before it opened). Each row's frame must end in its XDP action,
    /// be counted once under its counter, and come out as the row says; a failure names the
    /// row. Returns the frames out, in the rows' order.
    pub fn check(&mut self, cases: Vec<Case>) -> Vec<Vec<u8>> {
        cases.into_iter().map(|case| self.check_one(case)).collect()
    }

    fn check_one(&mut self, case: Case) -> Vec<u8> {
        let Case {
            what,
            role,
            port,
            frame,
            action: want,
            counter,
            out: want_out,
        } = case;
        let before = self.counter(counter);
        let (action, out) = self.run_on(role, port, &frame);
        assert_eq!(action, want, "{what}");
        assert_eq!(
            self.counter(counter),
            before + 1,
            "{what} counted as {counter:?}"
        );
        match want_out {
            Out::Unchecked => {}
            Out::Frame(want) => assert_frame(&what, &out, &want),
            Out::WithNatPort(want) => {
                let nat_port = pcc_common::packet::parse(&out)
                    .unwrap_or_else(|| panic!("{what}: no IPv4 out"))
                    .sport;
                assert_frame(&what, &out, &want(nat_port));
            }
        }
        out
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.maps.counters().unwrap()[c as usize]
    }
}

/// One row of a fixture table (Katran's style): what it shows, the frame in (by the program
/// of `role`, arriving on port `port`), the XDP action and the counter it must end in, and the
/// frame that must come out. Built with `Case::lan` or `Case::wan`, then the frame's fate.
pub struct Case {
    pub what: String,
    pub role: Role,
    pub port: u32,
    pub frame: Vec<u8>,
    pub action: u32,
    pub counter: Counter,
    pub out: Out,
}

/// What must come out of a row.
pub enum Out {
    /// Not looked at: the frame was passed to the kernel or dropped, or only its action and
    /// counter matter.
    Unchecked,
    /// Exactly this frame, byte for byte (so every checksum as computed from scratch).
    Frame(Frame),
    /// Exactly the frame this makes of the NAT port (ICMP echo: identifier) the dataplane
    /// chose, for a port the test cannot know beforehand.
    WithNatPort(Box<dyn Fn(u16) -> Frame>),
}

/// A frame in, as a `Frame` or as raw bytes (a fixture's damaged or foreign frame).
pub trait FrameIn {
    fn into_bytes(self) -> Vec<u8>;
}

impl FrameIn for Vec<u8> {
    fn into_bytes(self) -> Vec<u8> {
        self
    }
}

impl FrameIn for Frame {
    fn into_bytes(self) -> Vec<u8> {
        self.bytes()
    }
}

impl FrameIn for &Frame {
    fn into_bytes(self) -> Vec<u8> {
        self.bytes()
    }
}

/// A row with its frame in but not yet its fate.
pub struct Sent {
    what: String,
    role: Role,
    port: u32,
    frame: Vec<u8>,
}

impl Case {
    /// `frame` arriving on the LAN port (`LO` unless `on` says otherwise).
    pub fn lan(what: impl Into<String>, frame: impl FrameIn) -> Sent {
        Sent {
            what: what.into(),
            role: Role::Lan,
            port: LO,
            frame: frame.into_bytes(),
        }
    }

    /// `frame` arriving on a WAN port.
    pub fn wan(what: impl Into<String>, frame: impl FrameIn) -> Sent {
        Sent {
            role: Role::Wan,
            ..Case::lan(what, frame)
        }
    }
}

impl Sent {
    /// Arriving on port `ifindex` instead.
    pub fn on(self, ifindex: u32) -> Sent {
        Sent {
            port: ifindex,
            ..self
        }
    }

    fn ends(self, action: u32, counter: Counter, out: Out) -> Case {
        Case {
            what: self.what,
            role: self.role,
            port: self.port,
            frame: self.frame,
            action,
            counter,
            out,
        }
    }

    /// Redirected, counted under `counter`, exactly `want` out.
    pub fn sends(self, counter: Counter, want: Frame) -> Case {
        self.ends(XDP_REDIRECT, counter, Out::Frame(want))
    }

    /// Redirected, counted under `counter`, exactly `want(NAT port chosen)` out.
    pub fn sends_with_nat_port(
        self,
        counter: Counter,
        want: impl Fn(u16) -> Frame + 'static,
    ) -> Case {
        self.ends(XDP_REDIRECT, counter, Out::WithNatPort(Box::new(want)))
    }

    /// Redirected and counted under `counter`; what comes out is not looked at.
    pub fn redirected(self, counter: Counter) -> Case {
        self.ends(XDP_REDIRECT, counter, Out::Unchecked)
    }

    /// Passed to the kernel, counted under `counter`.
    pub fn passed(self, counter: Counter) -> Case {
        self.ends(XDP_PASS, counter, Out::Unchecked)
    }

    /// Dropped, counted under `counter`.
    pub fn dropped(self, counter: Counter) -> Case {
        self.ends(XDP_DROP, counter, Out::Unchecked)
    }
}

/// A LAN host as the router sees it: its address and MAC, and the MAC of the LAN port it is on.
pub struct Host {
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
    pub lan_mac: [u8; 6],
}

pub const HOST: Host = Host {
    addr: CLIENT,
    mac: CLIENT_MAC,
    lan_mac: LAN_MAC,
};
pub const HOST2: Host = Host {
    addr: CLIENT2,
    mac: CLIENT2_MAC,
    lan_mac: LAN_MAC,
};

/// The `CT_OUT` key of a connection from `CLIENT` to `SERVER` (ports in host order).
pub fn client_key(sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(be(CLIENT), be(SERVER), sport.to_be(), dport.to_be(), proto)
}

/// `l4` with its source (`src`) or destination port set to `port`; ICMP echo: its identifier.
pub fn with_port(l4: &L4, src: bool, port: u16) -> L4 {
    let mut l4 = l4.clone();
    match &mut l4 {
        L4::Tcp { sport, dport, .. }
        | L4::Udp { sport, dport, .. }
        | L4::TcpFull(TcpSegment { sport, dport, .. }) => *(if src { sport } else { dport }) = port,
        L4::Icmp { rest, .. } => rest[..2].copy_from_slice(&port.to_be_bytes()),
    }
    l4
}

/// What WAN `wan` must send for `sent`, a LAN host's frame, with NAT port (or echo
/// identifier) `nat_port`: from the WAN's MAC to its gateway's, from the WAN's address, TTL
/// one less; IP ID, TOS and payload as sent; every checksum computed afresh.
pub fn out_via(sent: &Frame, wan: usize, nat_port: u16) -> Frame {
    Frame {
        dst_mac: GW_MACS[wan],
        src_mac: WAN_MACS[wan],
        src: WAN_ADDRS[wan],
        ttl: sent.ttl - 1,
        l4: with_port(&sent.l4, true, nat_port),
        ..sent.clone()
    }
}

/// What `host`'s LAN port must send it for `got`, a frame from a WAN, whose transport part
/// becomes `l4`: from the port's MAC to the host's, to the host's address, TTL one less; IP
/// ID, TOS and payload as received; every checksum computed afresh.
pub fn back_to(got: &Frame, host: &Host, l4: L4) -> Frame {
    Frame {
        dst_mac: host.mac,
        src_mac: host.lan_mac,
        dst: host.addr,
        ttl: got.ttl - 1,
        l4,
        ..got.clone()
    }
}

/// A reply from a WAN, as `host` must get it on its own port `port`.
pub fn reply_to(got: &Frame, host: &Host, port: u16) -> Frame {
    back_to(got, host, with_port(&got.l4, false, port))
}

/// The ICMP error `err` as `host` must get it: quoting `sent` as the host sent it, with the
/// TTL the router forwarded it with, cut where the error cut its quote.
pub fn error_to(err: &Frame, host: &Host, sent: &Frame) -> Frame {
    let L4::Icmp {
        kind,
        code,
        rest,
        payload,
    } = &err.l4
    else {
        panic!("not an ICMP error: {err:?}")
    };
    let mut quote = Frame {
        ttl: sent.ttl - 1,
        ..sent.clone()
    }
    .ip_bytes();
    quote.truncate(payload.len());
    let l4 = L4::Icmp {
        kind: *kind,
        code: *code,
        rest: *rest,
        payload: quote,
    };
    back_to(err, host, l4)
}

/// Asserts the frame out is `want` byte for byte (so every checksum equals one computed from
/// scratch); on a mismatch both are shown in hex, a header a line.
pub fn assert_frame(what: &str, out: &[u8], want: &Frame) {
    let want = want.bytes();
    let differ: Vec<&str> = sections(out)
        .iter()
        .zip(sections(&want).iter())
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0)
        .collect();
    assert_eq!(
        Hex(out),
        Hex(&want),
        "{what}: the frame out (left) is not the expected one (right): {differ:?} differ, \
         {} bytes out, {} expected",
        out.len(),
        want.len()
    );
}

#[derive(PartialEq)]
struct Hex<'a>(&'a [u8]);

impl std::fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, bytes) in sections(self.0) {
            write!(f, "\n  {name:<11}")?;
            for b in bytes {
                write!(f, " {b:02x}")?;
            }
        }
        Ok(())
    }
}

/// A frame cut at its headers: Ethernet, IPv4, the transport header, for an ICMP error the
/// quoted IPv4 header and its first 8 bytes; the rest in lines of 16 bytes.
pub fn sections(frame: &[u8]) -> Vec<(&'static str, &[u8])> {
    let mut cuts = vec![("ethernet", 14), ("ipv4", 20)];
    match frame.get(23) {
        Some(&IPPROTO_TCP) => cuts.push(("tcp", 20)),
        Some(&IPPROTO_UDP) => cuts.push(("udp", 8)),
        Some(&IPPROTO_ICMP) => {
            cuts.push(("icmp", 8));
            if matches!(frame.get(34), Some(3 | 11 | 12)) {
                cuts.extend([("quoted ipv4", 20), ("quoted l4", 8)]);
            }
        }
        _ => {}
    }
    let mut at = 0;
    let mut out = Vec::new();
    for (name, len) in cuts {
        let end = (at + len).min(frame.len());
        out.push((name, &frame[at..end]));
        at = end;
    }
    out.extend(frame[at..].chunks(16).map(|c| ("payload", c)));
    out
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
        payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    }
}

/// An ICMP echo message (`kind` 8 request, 0 reply).
pub fn echo(kind: u8, id: u16, seq: u16, payload: Vec<u8>) -> L4 {
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[2..].copy_from_slice(&seq.to_be_bytes());
    L4::Icmp {
        kind,
        code: 0,
        rest,
        payload,
    }
}

/// An ICMP error from a router on the path, quoting what we sent (after NAT).
pub fn icmp_error(wan: usize, kind: u8, code: u8, quoted: Vec<u8>) -> Frame {
    let rest = if kind == 3 && code == 4 {
        [0, 0, 0x05, 0x78]
    } else {
        [0; 4]
    }; // next-hop MTU 1400
    Frame {
        dst_mac: WAN_MACS[wan],
        src_mac: GW_MACS[wan],
        src: Ipv4Addr::new(198, 18, 1, 1),
        dst: WAN_ADDRS[wan],
        tos: 0xc0, // network control, as routers send their errors
        ttl: 60,
        id: 3,
        l4: L4::Icmp {
            kind,
            code,
            rest,
            payload: quoted,
        },
    }
}

/// The ICMP "destination unreachable" with `code` and `rest` that `sender_frame` must bring
/// back from `router` (its address on the port the frame came in on): MACs swapped, TOS
/// "internetwork control" and TTL 64 as the kernel's own errors, quoting the offending IPv4
/// header and 8 bytes as they arrived (RFC 792).
pub fn unreachable_from(sender_frame: &Frame, router: Ipv4Addr, code: u8, rest: [u8; 4]) -> Frame {
    let mut quote = sender_frame.ip_bytes();
    quote.truncate(28);
    Frame {
        dst_mac: sender_frame.src_mac,
        src_mac: sender_frame.dst_mac,
        src: router,
        dst: sender_frame.src,
        tos: 0xc0,
        ttl: 64,
        id: 0,
        l4: L4::Icmp {
            kind: 3,
            code,
            rest,
            payload: quote,
        },
    }
}

/// `frame` with its IPv4 header checksum made valid again after a fixture changed a field.
pub fn with_valid_ip_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    frame[24..26].fill(0);
    let c = pcc_common::csum::checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    frame
}
