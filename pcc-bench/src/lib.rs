//! pcc's benchmarks and program test bed, kept out of the controller a router runs: the test
//! bed (`testbed`, shared by pcc-ctl's program tests and the program benchmark), the program
//! cost benchmark (`bench`) and the live-frames packet generator (`generate`). `main.rs` is the
//! `pcc-bench` command on top, which `cargo xtask bench` runs.
pub mod bench;
pub mod generate;
pub mod testbed;

use anyhow::{Context as _, Result};
use aya::{Ebpf, programs::Xdp};

/// The benchmark programs (`bench_drop`, `bench_sink`, `bench_gen`): `pcc-ebpf`'s `bench`
/// object, embedded at build time by `build.rs` (aya-build). The dataplane object, which
/// `pcc-ctl` embeds, does not contain them.
pub static BENCH_PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));

/// XDP program `name` of `ebpf`, loaded (verified) on first use.
pub fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the BPF object"))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("the kernel refused program {name}"))?;
    }
    Ok(prog)
}
