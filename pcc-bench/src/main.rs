//! pcc-bench: benchmark helpers that need the BPF objects (run as root by `cargo xtask bench`).
//!
//! `pcc-bench attach drop|sink IFACE` attaches the XDP_DROP floor or the counting sink in
//! native mode until SIGINT/SIGTERM, then prints `{"packets":N,"bytes":N}`.
//! `pcc-bench program [--samples N] [--quick] [--amortized]` prints the per-packet cost of the dataplane programs
//! (BPF_PROG_TEST_RUN) as JSON.
//! `pcc-bench generate IFACE --count N --src-mac MAC --dst-mac MAC --src ADDR [--rate PPS]
//! [--batch B] [--seconds S]` sends 64-byte UDP frames over 6400 flows out of IFACE with the
//! `bench_gen` program in live-frames mode, then prints what it sent as JSON.
use anyhow::{Context as _, Result, bail};
use aya::{EbpfLoader, maps::PerCpuArray, programs::XdpMode};
use pcc_bench::{BENCH_PROGRAMS, xdp_program};

fn attach(kind: &str, iface: &str) -> Result<()> {
    let name = match kind {
        "drop" => "bench_drop",
        "sink" => "bench_sink",
        other => bail!("unknown program {other} (drop or sink)"),
    };
    let mut ebpf = EbpfLoader::new()
        .load(BENCH_PROGRAMS)
        .context("loading the benchmark object")?;
    let prog = xdp_program(&mut ebpf, name)?;
    prog.attach(iface, XdpMode::Driver)
        .with_context(|| format!("attaching {name} to {iface}"))?;
    println!("attached");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    let stats: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map("SINK_STATS").context("no SINK_STATS")?)?;
    let packets: u64 = stats.get(&0, 0)?.iter().sum();
    let bytes: u64 = stats.get(&1, 0)?.iter().sum();
    println!("{{\"packets\":{packets},\"bytes\":{bytes}}}");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["attach", kind, iface] => attach(kind, iface),
        ["program", rest @ ..] => pcc_bench::bench::program_costs(rest),
        ["generate", rest @ ..] => pcc_bench::generate::generate_cmd(rest),
        _ => Err(anyhow::anyhow!(
            "usage: pcc-bench attach drop|sink IFACE | pcc-bench program [--samples N] [--quick] [--amortized] | pcc-bench generate IFACE --count N --src-mac MAC --dst-mac MAC --src ADDR [--rate PPS] [--batch B] [--seconds S]"
        )),
    };
    if let Err(e) = result {
        eprintln!("pcc-bench: {e:#}");
        std::process::exit(1);
    }
}
