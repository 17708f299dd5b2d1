//! Loading the XDP programs and attaching them to the ports.
use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, Xdp, XdpMode},
};

use crate::{cli::XdpModeArg, maps::Maps};

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

/// The loaded programs. Dropping it detaches every attachment (aya owns the links).
pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads (and verifies) both programs, with conntrack sized for `max_connections`.
    pub fn load(max_connections: u32) -> Result<(Self, Maps)> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("CT_OUT", max_connections)
            .map_max_entries("CT_IN", max_connections)
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
        let maps = Maps::take(&mut ebpf)?;
        Ok((Self { ebpf }, maps))
    }

    pub fn attach(&mut self, role: Role, interface: &str, mode: XdpModeArg) -> Result<()> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(role.program())
            .context("program missing")?
            .try_into()?;
        let xdp_mode = match mode {
            XdpModeArg::Native => XdpMode::Driver,
            XdpModeArg::Generic => XdpMode::Skb,
        };
        prog.attach(interface, xdp_mode)
            .map_err(|e| attach_error(interface, mode, e))?;
        Ok(())
    }

    /// The program's file descriptor-backed handle, for tests and benchmarks (TestRun).
    pub fn program_mut(&mut self, role: Role) -> Result<&mut Xdp> {
        self.named_program(role.program())
    }

    /// Any program of the object by name, loaded on first use (the benchmark-only ones are
    /// not loaded by `load`).
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

fn attach_error(interface: &str, mode: XdpModeArg, e: ProgramError) -> anyhow::Error {
    match errno_of(&e) {
        Some(libc::EBUSY) | Some(libc::EEXIST) => {
            anyhow!(
                "interface {interface} already has an XDP program attached (another pcc-ctl or XDP tool)"
            )
        }
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if mode == XdpModeArg::Native => anyhow!(
            "interface {interface} does not support native XDP; `--xdp-mode generic` runs (slower) on any interface"
        ),
        Some(libc::ENODEV) => anyhow!("unknown interface {interface}"),
        _ => anyhow!("cannot attach XDP to {interface}: {e}"),
    }
}
