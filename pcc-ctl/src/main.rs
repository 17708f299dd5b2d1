//! pcc-ctl: the controller and command line of pcc.
use clap::Parser as _;
use pcc_ctl::{
    cli,
    commands::{down, quota, show},
    daemon as up,
};

fn main() {
    // netlink_proto warns about every event that arrives while its stream shuts down.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,netlink_proto=error"),
    )
    .init();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line, not clap's usage block: the first line carries the reason.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "pcc-ctl: {} (see pcc-ctl --help)",
                first.trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    };
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
    };
    let result = match cli.command {
        cli::Command::Up(args) => runtime().and_then(|rt| rt.block_on(up::run(*args))),
        cli::Command::Quota(args) => quota::command(&args.state_file(), &args.set),
        cli::Command::Down(args) => runtime().and_then(|rt| rt.block_on(down::run(args))),
        cli::Command::Status(args) => show::status(&args),
        cli::Command::Flows(args) => show::flows(&args),
    };
    if let Err(e) = result {
        eprintln!("pcc-ctl: {e:#}");
        std::process::exit(1);
    }
}
