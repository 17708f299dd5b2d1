//! pcc-ctl: the controller and command line of pcc.
use clap::Parser as _;
use pcc_ctl::{cli, up};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pcc-ctl: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Up(args) => up::run(args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("pcc-ctl: {e:#}");
        std::process::exit(1);
    }
}
