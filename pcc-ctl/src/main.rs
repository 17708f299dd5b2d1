//! pcc-ctl: the controller and command line of pcc.
use clap::Parser as _;
use pcc_ctl::{
    cli,
    commands::{down, quota, show},
    config::{self, Config},
    daemon,
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
        cli::Command::Up(args) => runtime().and_then(|rt| {
            // Root first, as before: a user without it learns that before any argument check.
            daemon::require_root()?;
            rt.block_on(daemon::run(Config::from_args(*args)?))
        }),
        cli::Command::Quota(args) => {
            quota::command(&config::quota_file(&args.state_dir, &args.lan), &args.set)
        }
        cli::Command::Down(args) => runtime().and_then(|rt| rt.block_on(down::run(&args.lan))),
        cli::Command::Status(args) => show::status(args.api, args.json),
        cli::Command::Flows(args) => show::flows(
            args.api,
            &show::FlowQuery {
                wan: args.wan,
                host: args.host,
                limit: args.limit,
            },
            args.json,
        ),
    };
    if let Err(e) = result {
        eprintln!("pcc-ctl: {e:#}");
        std::process::exit(1);
    }
}
