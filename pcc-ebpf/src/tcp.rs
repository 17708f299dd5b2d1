//! TCP options of SYNs: the MSS clamp (the kernel's `TCPMSS --clamp-mss-to-pmtu`; the XDP
//! fast path skips the router's own firewall, so pcc must do it) and the window scale.
use aya_ebpf::programs::XdpContext;
use pcc_common::{csum, tcp};

use crate::parse::{L4_OFF, TcpHdr, ptr_at};

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
const TCPOPT_WSCALE: u8 = 3;
/// Options a SYN carries in practice (MSS, SACK-permitted, timestamps, window scale, NOPs
/// between them); the loop bound the verifier needs.
const MAX_OPTIONS: usize = 12;
/// The largest TCP header (data offset 15).
const MAX_TCP_HEADER: usize = 60;

/// Lowers the MSS option of the SYN or SYN-ACK at `L4_OFF` to what a path of `mtu` allows,
/// fixing the TCP checksum, and returns its window scale option (0 without one). The TCP
/// header was bounds-checked by `parse::tcp`.
///
/// A function of its own in BPF (a subprogram): inlined, every way out of the option loop
/// would be a separate state for the verifier to carry through the rest of the program.
#[inline(never)]
pub fn syn_options(ctx: &XdpContext, th: *mut TcpHdr, mtu: u16) -> u8 {
    // SAFETY: bounds-checked by parse::tcp.
    let header_len = usize::from(unsafe { (*th).off_res } >> 4) * 4;
    let limit = tcp::mss_for_mtu(mtu);
    let mut wscale = 0;
    let mut offset = 20usize;
    for _ in 0..MAX_OPTIONS {
        // Every path through an option leaves another offset; masked through a value LLVM
        // cannot see into, they all become "some offset below 64" to the verifier, so the
        // states of later iterations match earlier ones and are pruned instead of multiplying.
        // SAFETY: reading a local.
        offset = unsafe { core::ptr::read_volatile(&offset) } & 0x3f;
        if offset >= header_len || offset >= MAX_TCP_HEADER {
            break;
        }
        // Kind and length; a NOP or EOL as the frame's last byte ends the walk anyway.
        let Some(opt) = ptr_at::<[u8; 2]>(ctx, L4_OFF + offset) else {
            break;
        };
        // SAFETY: bounds-checked by ptr_at.
        let [kind, len] = unsafe { *opt };
        if kind == TCPOPT_EOL {
            break;
        }
        if kind == TCPOPT_NOP {
            offset += 1;
            continue;
        }
        let len = usize::from(len);
        if len < 2 || offset + len > header_len {
            break;
        }
        if kind == TCPOPT_MSS && len == 4 {
            clamp(ctx, th, offset + 2, limit);
        } else if kind == TCPOPT_WSCALE
            && len == 3
            && let Some(shift) = ptr_at::<u8>(ctx, L4_OFF + offset + 2)
        {
            // SAFETY: bounds-checked by ptr_at.
            wscale = unsafe { *shift };
        }
        offset += len;
    }
    wscale
}

/// Rewrites the MSS value at `value_off` (from the TCP header's start) to at most `limit`.
/// The checksum is updated by 16-bit words of the segment: an MSS at an odd offset straddles
/// two of them.
#[inline(always)]
fn clamp(ctx: &XdpContext, th: *mut TcpHdr, value_off: usize, limit: u16) {
    // SAFETY: `th` bounds-checked by parse::tcp; the option by ptr_at.
    unsafe {
        if value_off & 1 == 0 {
            let Some(value) = ptr_at::<u16>(ctx, L4_OFF + value_off) else {
                return;
            };
            let old = *value;
            let new = tcp::clamp_mss(u16::from_be(old), limit).to_be();
            if new != old {
                (*th).check = csum::replace2((*th).check, old, new);
                *value = new;
            }
        } else {
            let Some(words) = ptr_at::<[u8; 4]>(ctx, L4_OFF + value_off - 1) else {
                return;
            };
            let [a, hi, lo, b] = *words;
            let announced = u16::from_be_bytes([hi, lo]);
            let clamped = tcp::clamp_mss(announced, limit);
            if clamped != announced {
                let [new_hi, new_lo] = clamped.to_be_bytes();
                let mut check = csum::replace2(
                    (*th).check,
                    u16::from_ne_bytes([a, hi]),
                    u16::from_ne_bytes([a, new_hi]),
                );
                check = csum::replace2(
                    check,
                    u16::from_ne_bytes([lo, b]),
                    u16::from_ne_bytes([new_lo, b]),
                );
                (*th).check = check;
                *words = [a, new_hi, new_lo, b];
            }
        }
    }
}
