//! Loading the XDP programs and attaching them to the ports, and the TC egress hook to the WANs.
use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use pcc_common::expiry;

use crate::{
    config::XdpMode as AttachMode,
    kernel::{maps::Maps, pin::Pins},
};

/// The compiled `pcc-ebpf` object, embedded at build time by `build.rs` (aya-build).
pub static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pcc"));

/// Which program a port runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Lan,
    Wan,
}

impl Role {
    pub fn program(self) -> &'static str {
        match self {
            Role::Lan => "pcc_lan",
            Role::Wan => "pcc_wan",
        }
    }
}

/// The TC egress program on every WAN, which records the router's own connections
/// (`pcc-ebpf/src/local.rs`).
pub const WAN_EGRESS: &str = "pcc_wan_egress";

/// How a port got its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new XDP link.
    Fresh,
    /// The pinned link of a previous controller, switched to this program atomically.
    Adopted,
}

/// The loaded programs. Dropping it closes this process's handles: an unpinned attachment
/// goes with them, a pinned one stays until its pin is removed.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Links this process pinned (their handles are held until exit).
    pinned: Vec<PinnedLink>,
}

impl Dataplane {
    /// Loads (and verifies) both programs, with conntrack sized for `max_connections`; maps
    /// are private to this process (tests, benchmarks).
    pub fn load(max_connections: u32) -> Result<(Self, Maps)> {
        Self::load_with(max_connections, None)
    }

    /// Like [`load`](Self::load), with every dataplane map pinned in `pins` (reused if a
    /// previous controller left it there).
    pub fn load_pinned(max_connections: u32, pins: &Pins) -> Result<(Self, Maps)> {
        std::fs::create_dir_all(&pins.dir)
            .with_context(|| format!("cannot create {}", pins.dir.display()))?;
        Self::load_with(max_connections, Some(pins))
    }

    fn load_with(max_connections: u32, pins: Option<&Pins>) -> Result<(Self, Maps)> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("CT_OUT", max_connections)
            .map_max_entries("CT_IN", max_connections)
            .map_max_entries("NAT_BIND_OUT", max_connections)
            .map_max_entries("NAT_BIND_IN", max_connections)
            .map_max_entries("EXPIRY_SLOTS", expiry::slot_count(max_connections));
        if let Some(pins) = pins {
            for name in crate::kernel::pin::PINNED_MAPS {
                loader.map_pin_path(name, pins.map_path(name));
            }
        }
        let mut ebpf = loader
            .load(PROGRAM)
            .context("cannot load the eBPF object")?;
        for role in [Role::Lan, Role::Wan] {
            let prog: &mut Xdp = ebpf
                .program_mut(role.program())
                .with_context(|| format!("program {} missing", role.program()))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel refused program {}", role.program()))?;
        }
        let egress: &mut SchedClassifier = ebpf
            .program_mut(WAN_EGRESS)
            .with_context(|| format!("program {WAN_EGRESS} missing"))?
            .try_into()?;
        egress
            .load()
            .with_context(|| format!("the kernel refused program {WAN_EGRESS}"))?;
        let maps = Maps::take(&mut ebpf)?;
        Ok((
            Self {
                ebpf,
                pinned: Vec::new(),
            },
            maps,
        ))
    }

    /// Attaches `role`'s program to `interface` through a link pinned at `pin`: a link left
    /// there by a previous controller is switched to this program atomically, so the port
    /// never runs without one; a stale link (its interface was re-created) is replaced.
    pub fn attach_pinned(
        &mut self,
        role: Role,
        interface: &str,
        mode: AttachMode,
        pin: &Path,
    ) -> Result<Attached> {
        let prog = self.xdp(role)?;
        if let Some(link) = pinned_link::<XdpLink>(pin, "an XDP link")? {
            match prog.attach_to_link(link) {
                Ok(_) => return Ok(Attached::Adopted),
                Err(e) => stale_pin(interface, pin, &e),
            }
        }
        let id = prog
            .attach(interface, xdp_mode(mode))
            .map_err(|e| attach_error(interface, mode, &e))?;
        let link = prog.take_link(id)?;
        let link = FdLink::try_from(link).with_context(|| {
            format!("{interface}: the kernel gave no bpf_link to pin (XDP links need Linux 5.9)")
        })?;
        self.pin(link, interface, pin)
    }

    /// Attaches the TC egress hook to WAN `interface` through a tcx link pinned at `pin`, with
    /// the same adoption as [`attach_pinned`](Self::attach_pinned): the WAN never runs without
    /// it across a restart. A tcx link needs no clsact qdisc, and goes with its pin.
    pub fn attach_egress_pinned(&mut self, interface: &str, pin: &Path) -> Result<Attached> {
        let prog = self.egress_program()?;
        if let Some(link) = pinned_link::<SchedClassifierLink>(pin, "a tcx link")? {
            match prog.attach_to_link(link) {
                Ok(_) => return Ok(Attached::Adopted),
                Err(e) => stale_pin(interface, pin, &e),
            }
        }
        let options = TcAttachOptions::TcxOrder(LinkOrder::default());
        let id = prog
            .attach_with_options(interface, TcAttachType::Egress, options)
            .map_err(|e| egress_error(interface, &e))?;
        let link = FdLink::try_from(prog.take_link(id)?)?;
        self.pin(link, interface, pin)
    }

    fn pin(&mut self, link: FdLink, interface: &str, pin: &Path) -> Result<Attached> {
        let pinned = link
            .pin(pin)
            .with_context(|| format!("cannot pin the link of {interface} at {}", pin.display()))?;
        self.pinned.push(pinned);
        Ok(Attached::Fresh)
    }

    fn xdp(&mut self, role: Role) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(role.program())
            .context("program missing")?
            .try_into()?)
    }

    /// The program's file descriptor-backed handle, for tests and benchmarks (TestRun).
    pub fn program_mut(&mut self, role: Role) -> Result<&mut Xdp> {
        self.named_program(role.program())
    }

    /// The TC egress hook, for tests (TestRun).
    pub fn egress_program(&mut self) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(WAN_EGRESS)
            .context("program missing")?
            .try_into()?)
    }

    /// Any program of the object by name, loaded on first use.
    pub fn named_program(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("the kernel refused program {name}"))?;
        }
        Ok(prog)
    }
}

/// The link a previous controller pinned at `pin`, if there is one.
fn pinned_link<L: TryFrom<FdLink>>(pin: &Path, kind: &str) -> Result<Option<L>>
where
    L::Error: std::error::Error + Send + Sync + 'static,
{
    if !pin.exists() {
        return Ok(None);
    }
    let link = PinnedLink::from_pin(pin)
        .with_context(|| format!("cannot open the pinned link {}", pin.display()))?;
    let link = L::try_from(FdLink::from(link))
        .with_context(|| format!("{} is not {kind}", pin.display()))?;
    Ok(Some(link))
}

/// A pinned link that no longer works (its interface was re-created) goes; a fresh one
/// replaces it.
fn stale_pin(interface: &str, pin: &Path, e: &ProgramError) {
    log::warn!("{interface}: the pinned link no longer works ({e}); attaching afresh");
    let _ = std::fs::remove_file(pin);
}

fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Generic => XdpMode::Skb,
    }
}

fn errno_of(e: &ProgramError) -> Option<i32> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        source = err.source();
    }
    None
}

fn egress_error(interface: &str, e: &ProgramError) -> anyhow::Error {
    match errno_of(e) {
        Some(libc::ENODEV) => anyhow!("unknown interface {interface}"),
        // tcx (bpf_mprog) came with Linux 6.6; before it the kernel refuses the attach type.
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => anyhow!(
            "cannot attach the TC egress hook to WAN {interface}: the kernel has no tcx links (Linux 6.6+)"
        ),
        _ => anyhow!("cannot attach the TC egress hook to WAN {interface}: {e}"),
    }
}

fn attach_error(interface: &str, mode: AttachMode, e: &ProgramError) -> anyhow::Error {
    match errno_of(e) {
        Some(libc::EBUSY) | Some(libc::EEXIST) => {
            anyhow!(
                "interface {interface} already has an XDP program attached (another pcc-ctl or XDP tool)"
            )
        }
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if mode == AttachMode::Native => anyhow!(
            "interface {interface} does not support native XDP; `--xdp-mode generic` runs (slower) on any interface"
        ),
        Some(libc::ENODEV) => anyhow!("unknown interface {interface}"),
        _ => anyhow!("cannot attach XDP to {interface}: {e}"),
    }
}
