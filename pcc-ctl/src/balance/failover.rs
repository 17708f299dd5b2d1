//! `--failover-grace`: the TCP connections of a WAN that stays down longer than the grace are
//! reset towards their LAN hosts and forgotten, so applications reconnect at once (over a
//! live WAN) instead of hanging on retransmits. Until then they stay on their WAN (the
//! dataplane keeps forwarding them, see `pcc_common::failover::stays_on_down_wan`), and a WAN
//! back within the grace carries on with all of them.
use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use pcc_common::{
    CT_FLAG_ROUTED, CT_TCP_ACK, CT_TCP_RST, CtOut, FlowKey, MAX_WANS,
    failover::{Endpoint, reset_frame},
    proto::IPPROTO_TCP,
};

use crate::{
    balance::wan::WanView,
    kernel::{conntrack::forget_connection, maps::Maps},
    sync::lock,
};

/// Default `--failover-grace` in seconds; see the README ("Health checking and failover").
/// Longer than a blip pcc notices (down after 0.6 s without replies, up again only after 1 s
/// of answers, so a 1 s outage reads as about 2 s down), than an LTE radio link's recovery
/// (RRC re-establishment) of a second or two, and than TCP's 1 s initial retransmission
/// timeout (RFC 6298) plus its first doubled one, so a connection retransmitting through a
/// blip gets through; short enough that an application on a line that really died
/// reconnects within seconds, not after the minutes TCP retransmits before giving up.
pub const DEFAULT_GRACE_SECS: u64 = 5;

/// Each WAN's grace: since when it is down, and whether its connections were reset since.
#[derive(Debug)]
pub struct Grace {
    grace: Duration,
    down_since: [Option<Instant>; MAX_WANS],
    reset: [bool; MAX_WANS],
}

impl Grace {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            down_since: [None; MAX_WANS],
            reset: [false; MAX_WANS],
        }
    }

    /// Follows the WANs' settled states: a WAN going down starts its grace, one coming back
    /// ends it. Returns the WANs that came back within their grace.
    pub fn follow(&mut self, wans: &[WanView], now: Instant) -> Vec<u8> {
        let mut back = Vec::new();
        for wan in wans {
            let i = usize::from(wan.wan_id);
            match (wan.up, self.down_since[i]) {
                (true, Some(since)) => {
                    if !self.reset[i] && now < since + self.grace {
                        back.push(wan.wan_id);
                    }
                    self.down_since[i] = None;
                    self.reset[i] = false;
                }
                (false, None) => self.down_since[i] = Some(now),
                _ => {}
            }
        }
        back
    }

    /// When the next grace ends, among the WANs not reset yet. `None` while no WAN is up: the
    /// hosts' new connections would have nowhere to go, and the WAN that comes back first may
    /// well be theirs, so the connections wait (until a WAN is up).
    pub fn next_end(&self, wans: &[WanView]) -> Option<Instant> {
        if !wans.iter().any(|w| w.up) {
            return None;
        }
        self.down_since
            .iter()
            .zip(&self.reset)
            .filter_map(|(since, reset)| since.filter(|_| !reset))
            .min()
            .map(|since| since + self.grace)
    }

    /// The WANs whose grace has ended by `now`, each once per time down (while another WAN
    /// is up; see [`next_end`](Self::next_end)).
    pub fn ended(&mut self, wans: &[WanView], now: Instant) -> Vec<u8> {
        if !wans.iter().any(|w| w.up) {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (i, (since, reset)) in self.down_since.iter().zip(&mut self.reset).enumerate() {
            if since.is_some_and(|s| now >= s + self.grace) && !*reset {
                *reset = true;
                due.push(i as u8);
            }
        }
        due
    }
}

/// An `AF_PACKET` socket that sends whole Ethernet frames out of a given port: the resets go
/// to the LAN host's MAC from the LAN port's, like every frame the dataplane forwards, without
/// the kernel's routing, ARP or firewall (whose output chain would see a foreign source).
pub struct LanSender(OwnedFd);

impl LanSender {
    pub fn open() -> Result<Self> {
        // SAFETY: plain socket(2); protocol 0 receives nothing, the socket only sends.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!(
                "cannot open a packet socket for failover resets: {}",
                io::Error::last_os_error()
            );
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `frame` (Ethernet header included) out of port `ifindex`.
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and the address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// What [`reset_wan`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resets {
    /// TCP connections forgotten (both halves).
    pub forgotten: usize,
    /// Resets sent to LAN hosts.
    pub sent: usize,
    /// Resets that could not be sent (the first error is logged).
    pub failed: usize,
}

fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

/// Sends each LAN host with a balanced TCP connection on `wan_id` a reset from the remote end
/// and forgets those connections, so the host's next SYN opens on a live WAN. Connections a
/// route pins to the WAN are left alone (health is not about them), and so are UDP and ICMP,
/// which the dataplane moves at their next packet. Connections the host never acknowledged
/// anything on, or that a reset already ended, are only forgotten.
pub fn reset_wan(
    maps: &mut Maps,
    wan_id: u8,
    send: &mut dyn FnMut(u32, &[u8]) -> io::Result<()>,
) -> Resets {
    let on_wan: Vec<FlowKey> = maps
        .ct_out
        .iter()
        .flatten()
        .filter(|(key, out)| {
            key.proto == IPPROTO_TCP && out.wan_id == wan_id && out.flags & CT_FLAG_ROUTED == 0
        })
        .map(|(key, _)| key)
        .collect();
    let mut done = Resets::default();
    for key in on_wan {
        // Read again just before it goes: the host's latest acknowledgment is the reset's
        // sequence number.
        let Ok(out) = maps.ct_out.get(&key, 0) else {
            continue;
        };
        let CtOut {
            nat_addr,
            nat_port,
            tcp_flags,
            lan_ack,
            ..
        } = out;
        let reply = maps.ct_in.get(&key.reply_key(nat_addr, nat_port), 0).ok();
        forget_connection(maps, &key, &out);
        done.forgotten += 1;
        let Some(reply) = reply else { continue };
        if tcp_flags & CT_TCP_ACK == 0 || (tcp_flags | reply.tcp_flags) & CT_TCP_RST != 0 {
            continue;
        }
        let Ok(lan) = maps.lans.get(&u32::from(reply.lan_id), 0) else {
            continue;
        };
        let host = Endpoint {
            mac: reply.lan_mac,
            addr: addr(key.src_addr),
            port: u16::from_be(key.src_port),
        };
        let remote = Endpoint {
            mac: lan.mac,
            addr: addr(key.dst_addr),
            port: u16::from_be(key.dst_port),
        };
        match send(lan.ifindex, &reset_frame(host, remote, lan_ack)) {
            Ok(()) => done.sent += 1,
            Err(e) => {
                if done.failed == 0 {
                    log::warn!("cannot send a reset to {}: {e}", host.addr);
                }
                done.failed += 1;
            }
        }
    }
    done
}

/// The grace of every WAN and the socket its resets leave by.
pub struct Failover {
    grace: Grace,
    seconds: u64,
    lan: LanSender,
}

impl Failover {
    pub fn new(grace_secs: u64) -> Result<Self> {
        Ok(Self {
            grace: Grace::new(Duration::from_secs(grace_secs)),
            seconds: grace_secs,
            lan: LanSender::open()?,
        })
    }

    /// Follows the WANs' settled states (after every change).
    pub fn follow(&mut self, wans: &[WanView]) {
        for wan_id in self.grace.follow(wans, Instant::now()) {
            if let Some(wan) = wans.iter().find(|w| w.wan_id == wan_id) {
                log::info!(
                    "WAN {} is back within the failover grace ({} s): its TCP connections continue",
                    wan.name,
                    self.seconds
                );
            }
        }
    }

    /// When the next WAN's grace ends (`None`: no grace running, or no WAN up to take over).
    pub fn next_end(&self, wans: &[WanView]) -> Option<tokio::time::Instant> {
        self.grace
            .next_end(wans)
            .map(tokio::time::Instant::from_std)
    }

    /// Resets the TCP connections of every WAN whose grace has ended, logged once per WAN;
    /// the resets sent, as (`wan_id`, count), for `pcc_failover_resets_total`.
    pub fn reset_ended(&mut self, maps: &Mutex<Maps>, wans: &[WanView]) -> Vec<(u8, u64)> {
        let mut sent = Vec::new();
        for wan_id in self.grace.ended(wans, Instant::now()) {
            let Some(wan) = wans.iter().find(|w| w.wan_id == wan_id) else {
                continue;
            };
            let lan = &self.lan;
            let done = reset_wan(&mut lock(maps), wan_id, &mut |ifindex, frame| {
                lan.send(ifindex, frame)
            });
            sent.push((wan_id, done.sent as u64));
            log::warn!(
                "WAN {} still down after the failover grace ({} s): reset {} TCP connections \
                 towards their LAN hosts ({} forgotten, {} resets not sent), they reconnect \
                 over a live WAN",
                wan.name,
                self.seconds,
                done.sent,
                done.forgotten,
                done.failed
            );
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wan(id: u8, up: bool) -> WanView {
        crate::balance::wan::tests::wan(id, false, up)
    }

    #[test]
    fn a_wan_down_past_the_grace_is_reset_once() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut g = Grace::new(5 * s);
        assert!(g.follow(&[wan(0, true), wan(1, true)], t0).is_empty());
        assert_eq!(g.next_end(&[wan(0, true), wan(1, true)]), None);
        let down = [wan(0, false), wan(1, true)];
        g.follow(&down, t0 + s);
        assert_eq!(g.next_end(&down), Some(t0 + 6 * s));
        assert!(g.ended(&down, t0 + 5 * s).is_empty(), "within the grace");
        assert_eq!(g.ended(&down, t0 + 6 * s), vec![0]);
        assert!(g.ended(&down, t0 + 9 * s).is_empty(), "once per time down");
        assert_eq!(g.next_end(&down), None);
        // Back after the reset: nothing to announce; down again: a new grace.
        assert!(
            g.follow(&[wan(0, true), wan(1, true)], t0 + 10 * s)
                .is_empty()
        );
        g.follow(&down, t0 + 11 * s);
        assert_eq!(g.next_end(&down), Some(t0 + 16 * s));
    }

    #[test]
    fn a_wan_back_within_the_grace_is_not_reset() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut g = Grace::new(5 * s);
        g.follow(&[wan(0, false), wan(1, true)], t0);
        assert_eq!(g.follow(&[wan(0, true), wan(1, true)], t0 + s), vec![0]);
        assert_eq!(g.next_end(&[wan(0, true), wan(1, true)]), None);
        assert!(
            g.ended(&[wan(0, true), wan(1, true)], t0 + 10 * s)
                .is_empty()
        );
    }

    #[test]
    fn with_no_wan_up_connections_wait_for_one() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut g = Grace::new(5 * s);
        let none = [wan(0, false), wan(1, false)];
        g.follow(&none, t0);
        assert_eq!(g.next_end(&none), None);
        assert!(g.ended(&none, t0 + 60 * s).is_empty());
        // wan1 returns: wan0's grace is long over, its connections go now.
        let one = [wan(0, false), wan(1, true)];
        assert!(g.follow(&one, t0 + 61 * s).is_empty(), "not back within it");
        assert_eq!(g.next_end(&one), Some(t0 + 5 * s));
        assert_eq!(g.ended(&one, t0 + 61 * s), vec![0]);
    }
}
