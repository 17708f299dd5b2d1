//! A veth port whose peer has tx checksumming on receives what that peer sends (its own TCP and
//! UDP, and TCP it forwards after GRO merged it) with partial checksums (`CHECKSUM_PARTIAL`:
//! only the pseudo-header summed, the rest left to a "device" that never computes it) and, with
//! TSO, as 64 KB segments. The kernel would finish both on delivery, but XDP cannot see that
//! state: native XDP forwards the frame with its unfinished checksum, which the receiver drops
//! (in the lab: `TcpInCsumErrors` at the client and a stalled download), and generic XDP gets
//! the 64 KB segments, bigger than the MTU, which it can only pass to the kernel. Nothing in the
//! port's own settings changes that, so start-up (and a re-created port) says so in one line,
//! with the fix: `tx off` on the peer, which makes the peer's stack checksum and segment in
//! software. Physical NICs never hand partial checksums up.
use std::{
    collections::HashSet,
    fs::File,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::MetadataExt as _,
    },
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};

use crate::kernel::{netlink::Netlink, offload};

/// At most this many namespace handles are looked at when searching the peer's namespace.
const MAX_NAMESPACES: usize = 4096;

/// Logs one warning if `port` is a veth whose peer sends partial checksums.
pub async fn warn_partial_checksums(nl: &Netlink, port: &str, ifindex: u32) {
    match partial_checksum_peer(nl, ifindex).await {
        Ok(Some((peer, elsewhere))) => log::warn!(
            "{port}: its veth peer {peer}{} has tx checksumming on, so frames from it can carry \
             unfinished checksums (or be 64 KB segments) that XDP cannot complete and receivers \
             drop: run `ethtool -K {peer} tx off` there",
            if elsewhere {
                " (in another network namespace)"
            } else {
                ""
            }
        ),
        Ok(None) => {}
        Err(e) => log::debug!("{port}: cannot check its veth peer: {e:#}"),
    }
}

/// The peer's name, and whether it is in another namespace, if `ifindex` is a veth whose peer
/// has tx checksumming on.
async fn partial_checksum_peer(nl: &Netlink, ifindex: u32) -> Result<Option<(String, bool)>> {
    let Some((peer, nsid)) = nl.veth_peer(ifindex).await? else {
        return Ok(None);
    };
    let Some(nsid) = nsid else {
        let name = interface_name(peer)?;
        return Ok(offload::tx_checksumming(&name)?.then_some((name, false)));
    };
    let Some(ns) = namespace_with_id(nl, nsid).await? else {
        bail!("no handle on the peer's network namespace (id {nsid})");
    };
    // setns changes the calling thread only: a thread of its own, which ends with the answer.
    let (name, on) = std::thread::spawn(move || -> Result<(String, bool)> {
        // SAFETY: ns is an open namespace file; only this thread moves.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot enter the peer's namespace");
        }
        let name = interface_name(peer)?;
        let on = offload::tx_checksumming(&name)?;
        Ok((name, on))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))??;
    Ok(on.then_some((name, true)))
}

fn interface_name(ifindex: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IFNAMSIZ];
    // SAFETY: buf has the IFNAMSIZ bytes if_indextoname writes at most.
    if unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) }.is_null() {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("no interface with ifindex {ifindex}"));
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// An open handle on the network namespace our namespace calls `nsid`: among the named ones
/// (`ip netns`) and those of running processes (containers).
async fn namespace_with_id(nl: &Netlink, nsid: i32) -> Result<Option<File>> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        candidates.extend(
            procs
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .map(|e| e.path().join("ns/net")),
        );
    }
    let mut seen = HashSet::new();
    for path in candidates.into_iter().take(MAX_NAMESPACES) {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        if nl.nsid_of(file.as_fd()).await.ok().flatten() == Some(nsid) {
            return Ok(Some(file));
        }
    }
    Ok(None)
}
