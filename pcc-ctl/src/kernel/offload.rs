//! NIC offloads that change what the XDP programs see, turned off on pcc's ports while it runs
//! and turned back on when it exits.
//!
//! **rx-vlan-offload** (`rxvlan`): the NIC strips the 802.1Q tag into the packet's metadata
//! before XDP runs, so a frame of another VLAN would look like an untagged frame of the port's
//! own network and be balanced and translated as such. Off, the tag stays in the frame: the
//! program passes it to the kernel (`not_ipv4`), whose VLAN code untags it after XDP as it would
//! have before. A driver that cannot turn it off is refused.
//!
//! Receive coalescing needs nothing: native XDP runs before GRO, and with a generic program
//! attached the kernel skips GRO on that device (`netif_elide_gro`) and turns LRO and hardware
//! GRO off itself (`generic_xdp_install`), so no super-frame is built on pcc's ports.
//!
//! What was changed is recorded in `/run/pcc/<first LAN>.offloads.json` as it is changed, so
//! that `pcc-ctl down`, or the next `pcc-ctl up`, turns it back on after a controller that was
//! killed. Uses the `SIOCETHTOOL` ioctl's single-feature commands (what `ethtool -K` falls back
//! to), which every kernel and driver has.
use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

const STATE_DIR: &str = "/run/pcc";

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;
const ETH_FLAG_RXVLAN: u32 = 1 << 8;
const ETHTOOL_GTXCSUM: u32 = 0x16;

/// An offload pcc turns off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Offload {
    RxVlan,
}

impl Offload {
    /// The keyword of `ethtool -K`.
    pub fn keyword(self) -> &'static str {
        match self {
            Offload::RxVlan => "rxvlan",
        }
    }

    fn get(self, sock: &OwnedFd, interface: &str) -> std::io::Result<bool> {
        match self {
            Offload::RxVlan => {
                Ok(ethtool(sock, interface, ETHTOOL_GFLAGS, 0)? & ETH_FLAG_RXVLAN != 0)
            }
        }
    }

    fn set(self, sock: &OwnedFd, interface: &str, on: bool) -> std::io::Result<()> {
        match self {
            Offload::RxVlan => {
                let flags = ethtool(sock, interface, ETHTOOL_GFLAGS, 0)?;
                let flags = if on {
                    flags | ETH_FLAG_RXVLAN
                } else {
                    flags & !ETH_FLAG_RXVLAN
                };
                ethtool(sock, interface, ETHTOOL_SFLAGS, flags).map(drop)
            }
        }
    }
}

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member (40 bytes on 64-bit).
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn control_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One `SIOCETHTOOL` command with a `struct ethtool_value`; returns its `data`.
fn ethtool(sock: &OwnedFd, interface: &str, cmd: u32, data: u32) -> std::io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    let bytes = interface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from_raw_os_error(libc::ENODEV));
    }
    for (dst, src) in req.name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq whose data points at a live ethtool_value for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value.data)
}

/// One offload pcc turned off on one interface (by ifindex: a re-created interface of the
/// same name comes with its own defaults, which are not pcc's to change back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Changed {
    interface: String,
    ifindex: u32,
    offload: Offload,
}

/// The offloads pcc turned off, kept on disk as they change.
pub struct Offloads {
    path: PathBuf,
    changed: Vec<Changed>,
}

impl Offloads {
    /// The record of the instance named after `first_lan`, with whatever a controller that
    /// was killed left in it.
    pub fn open(first_lan: &str) -> Result<Self> {
        Self::open_at(Path::new(STATE_DIR).join(format!("{first_lan}.offloads.json")))
    }

    fn open_at(path: PathBuf) -> Result<Self> {
        let changed = match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not pcc's offload record", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self { path, changed })
    }

    fn save(&self) -> Result<()> {
        if self.changed.is_empty() {
            let _ = fs::remove_file(&self.path);
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fs::write(&self.path, serde_json::to_string_pretty(&self.changed)?)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Turns `offload` off on `interface` if it is on, and records it; an error if the driver
    /// keeps it on.
    pub fn turn_off(&mut self, interface: &str, ifindex: u32, offload: Offload) -> Result<()> {
        let sock = control_socket().context("cannot open a socket for ethtool")?;
        let key = offload.keyword();
        let on = offload
            .get(&sock, interface)
            .with_context(|| format!("{interface}: cannot read its {key} offload"))?;
        if !on {
            return Ok(());
        }
        let refused = match offload.set(&sock, interface, false) {
            Err(e) => Some(e.to_string()),
            Ok(()) if offload.get(&sock, interface).unwrap_or(true) => {
                Some("the driver kept it on".into())
            }
            Ok(()) => None,
        };
        if let Some(why) = refused {
            match offload {
                Offload::RxVlan => bail!(
                    "{interface} strips 802.1Q tags before XDP sees them (rx-vlan-offload on) and \
                     cannot turn that off ({why}): tagged frames would pass for untagged ones; \
                     run pcc on a port whose driver can (`ethtool -K {interface} rxvlan off`)"
                ),
            }
        }
        log::info!("{interface}: {key} offload turned off while pcc runs");
        let change = Changed {
            interface: interface.to_string(),
            ifindex,
            offload,
        };
        if !self.changed.contains(&change) {
            self.changed.push(change);
        }
        self.save()
    }

    /// Turns back on what was turned off, on interfaces that are still the ones it was turned
    /// off on; failures are logged (the controller is exiting). Returns what was restored, as
    /// `ethtool -K` words (`lan0 rxvlan`).
    pub fn restore_all(&mut self, ifindex_of: impl Fn(&str) -> Option<u32>) -> Vec<String> {
        let mut restored = Vec::new();
        let sock = match control_socket() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot open a socket for ethtool: {e}");
                return restored;
            }
        };
        for c in std::mem::take(&mut self.changed) {
            if ifindex_of(&c.interface) != Some(c.ifindex) {
                continue;
            }
            match c.offload.set(&sock, &c.interface, true) {
                Ok(()) => restored.push(format!("{} {}", c.interface, c.offload.keyword())),
                Err(e) => log::warn!(
                    "{}: cannot turn its {} offload back on: {e}",
                    c.interface,
                    c.offload.keyword()
                ),
            }
        }
        if let Err(e) = self.save() {
            log::warn!("{e:#}");
        }
        restored
    }
}

/// Whether `interface` (in the calling thread's network namespace) leaves TCP and UDP
/// checksums to the device (`ethtool -k`'s tx-checksumming).
pub fn tx_checksumming(interface: &str) -> std::io::Result<bool> {
    let sock = control_socket()?;
    Ok(ethtool(&sock, interface, ETHTOOL_GTXCSUM, 0)? != 0)
}

/// The ifindex of `interface` in this network namespace.
pub fn ifindex_of(interface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(interface).ok()?;
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_survives_a_restart_and_goes_when_empty() {
        let dir = std::env::temp_dir().join(format!("pcc-offload-test-{}", std::process::id()));
        let path = dir.join("lan0.offloads.json");
        let mut o = Offloads::open_at(path.clone()).unwrap();
        o.changed.push(Changed {
            interface: "lan0".into(),
            ifindex: 7,
            offload: Offload::RxVlan,
        });
        o.save().unwrap();
        assert!(fs::read_to_string(&path).unwrap().contains("\"rx-vlan\""));
        let mut again = Offloads::open_at(path.clone()).unwrap();
        assert_eq!(again.changed, o.changed);
        // lan0 is another interface now: nothing to turn back on, and the record goes.
        assert!(again.restore_all(|_| Some(8)).is_empty());
        assert!(!path.exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
