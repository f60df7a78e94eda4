//! libFuzzer target `tx_batch`: see `bodies/tx_batch.rs` for what it feeds and checks.

#![no_main]

#[path = "../bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::tx_batch::run(data));
