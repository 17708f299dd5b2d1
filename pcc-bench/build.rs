use anyhow::Context as _;
use aya_build::Toolchain;

/// Builds the benchmark programs, `pcc-ebpf`'s `bench` binary and only it (`pcc-ctl/build.rs`
/// builds the dataplane), for the bpf target with nightly (aya-build), so `pcc-bench` can embed
/// them.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = std::fs::canonicalize(format!("{manifest_dir}/../pcc-ebpf"))
        .context("the pcc-ebpf directory")?;
    let root_dir = root_dir.to_str().context("pcc-ebpf's path is not UTF-8")?;
    let ebpf_package = aya_build::Package {
        name: "pcc-ebpf",
        root_dir,
        no_default_features: true,
        features: &["bench"],
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::default())
}
