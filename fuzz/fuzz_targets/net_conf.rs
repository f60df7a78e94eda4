//! libFuzzer target `net_conf`: see `bodies/net_conf.rs` for what it feeds and checks.

#![no_main]

#[path = "../bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::net_conf::run(data));
