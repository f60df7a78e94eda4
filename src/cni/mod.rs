//! The `weft-cni` CNI plugin: flannel's CNI plugin, drop-in. A container
//! runtime runs it for every pod with flannel's plugin configuration (only
//! `type` changed to `weft-cni`); it reads the node's `subnet.env` (written by
//! weftd), renders the delegate configuration exactly as flannel does (by
//! default the standard `bridge` plugin with `host-local` IPAM over the node's
//! subnet), saves it per container for DEL, and runs the delegate.
//!
//! - [`spec`]: the CNI protocol (parameters, versions, error codes).
//! - [`netconf`]: flannel's plugin configuration and the delegate rendering.
//! - [`invoke`]: finding and running the delegate plugin from `CNI_PATH`.
//! - [`store`]: the saved delegate configurations in `dataDir`.
//! - [`plugin`]: one invocation, ADD/DEL/CHECK/GC/STATUS/VERSION.
//! - [`install`]: `weft-cni install`, the plugin and a conflist onto a node.
//!
//! No CNI crate is used: `cni-plugin` (0.2, last released 2021) rejects
//! cniVersion 0.3.x, which flannel's shipped conflist declares; `rscni-plugin`
//! requires `ipam.type` (flannel defaults it) and forces the ADD result through
//! its typed result, which cannot read the 0.3.x/0.4.0 result layout the
//! `bridge` plugin prints for those versions, and neither runs delegates. The
//! protocol part a meta-plugin needs is small (spec.rs), and the delegate's
//! result passes through byte for byte, as flannel's does in effect.

pub mod install;
pub mod invoke;
pub mod netconf;
pub mod plugin;
pub mod spec;
pub mod store;

use std::io::{Read, Write};
use std::process::ExitCode;

/// Runs the plugin with the process's environment, stdin and stdout.
pub fn plugin_main() -> ExitCode {
    let reply = plugin::run(
        |name| std::env::var(name).ok(),
        || {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map(|_| buf)
        },
    );
    let mut stdout = std::io::stdout().lock();
    let written = if reply.stdout.is_empty() {
        Ok(())
    } else {
        writeln!(stdout, "{}", reply.stdout).and_then(|()| stdout.flush())
    };
    if let Err(e) = written {
        eprintln!("weft-cni: cannot write the result to stdout: {e}");
        return ExitCode::FAILURE;
    }
    if reply.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
