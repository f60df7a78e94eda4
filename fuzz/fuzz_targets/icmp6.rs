//! libFuzzer target `icmp6`: see `bodies/icmp6.rs` for what it feeds and checks.

#![no_main]

#[path = "../bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::icmp6::run(data));
