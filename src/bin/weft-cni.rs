//! weft-cni: the CNI plugin (no arguments, or CNI_COMMAND set), or
//! `weft-cni install` to put the plugin and a conflist onto a node.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use weft::cni::install::{InstallArgs, install};

#[derive(Debug, Parser)]
#[command(
    name = "weft-cni",
    version,
    about = "weft's CNI plugin (flannel's plugin configuration, type \"weft-cni\"). \
             Run with no arguments by a container runtime; `install` sets up a node."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Copy this binary to <bin-dir>/weft-cni and the conflist to <conf-dir>/<name>, each atomically.
    Install(InstallArgs),
}

fn main() -> ExitCode {
    // A runtime sets CNI_COMMAND; it may also pass arguments, which plugins ignore.
    if std::env::var_os("CNI_COMMAND").is_some() || std::env::args_os().len() <= 1 {
        return weft::cni::plugin_main();
    }
    let Cmd::Install(args) = Cli::parse().command;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("weft-cni install: cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    match install(&args, &exe) {
        Ok(done) => {
            println!(
                "installed {} and {}",
                done.plugin.display(),
                done.conflist.display()
            );
            if !done.uses_weft {
                eprintln!(
                    "weft-cni install: warning: no plugin in {} has \"type\": \"weft-cni\"; pods on this node will not use weft",
                    done.conflist.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-cni install: {e}");
            ExitCode::FAILURE
        }
    }
}
