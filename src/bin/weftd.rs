//! weftd: the weft node agent. See `weftd --help`.

use clap::Parser;
use std::process::ExitCode;
use weft::agent::cli::{Cli, Command, LogFormat, RunArgs};
use weft::agent::{self, status};

fn init_logging(args: &RunArgs) {
    let default = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weftd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Status(args)) => runtime.block_on(async {
            match status::fetch(&args.status_socket).await {
                Ok(report) => {
                    if args.json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&report).unwrap_or_default()
                        );
                    } else {
                        print!("{}", status::render(&report));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("weftd status: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Some(Command::CleanupMasq) => {
            let errors = agent::masq::cleanup_all();
            for e in &errors {
                eprintln!("weftd cleanup-masq: {e}");
            }
            if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        None => {
            init_logging(&cli.run);
            match runtime.block_on(agent::run(cli.run)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("weftd stopped: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
