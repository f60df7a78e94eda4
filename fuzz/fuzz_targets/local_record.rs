//! libFuzzer target `local_record`: see `bodies/local_record.rs` for what it feeds and checks.

#![no_main]

#[path = "../bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::local_record::run(data));
