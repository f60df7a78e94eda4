//! The fuzz targets' bodies (`fuzz/bodies/`, shared with the libFuzzer
//! targets in `fuzz/fuzz_targets/`) run by `cargo test` on stable: each body
//! gets its seeds as they are, then a fixed number of inputs from a seeded
//! PRNG — random bytes, and seeds mutated by bit flips, byte changes,
//! truncations, insertions (random bytes and format tokens), deletions,
//! duplications and splices with other seeds. Deterministic: the same inputs
//! on every run. A failing input is printed as a byte string to paste into a
//! unit test (or into a file for `cargo fuzz run <target> FILE`).
//!
//! Then every file of the target's kept libFuzzer corpus, `fuzz/corpus/<target>/`
//! (grown by `scripts/fuzz-campaign.sh`), runs as a regression input.
//!
//! `WEFT_FUZZ_ITERATIONS=N` runs N inputs per target instead of the default,
//! `WEFT_FUZZ_SEED=S` draws another sequence (for a longer local hunt).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "../fuzz/bodies/mod.rs"]
mod bodies;

use bodies::Target;
use std::panic::{self, AssertUnwindSafe};

/// SplitMix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const INTERESTING: [u8; 10] = [0x00, 0x01, 0x02, 0x08, 0x10, 0x3f, 0x40, 0x7f, 0x80, 0xff];

/// One mutation of `data`, in place.
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>], dict: &[&[u8]]) {
    let len = data.len();
    let at = |rng: &mut Rng| rng.below(len + 1);
    match rng.below(13) {
        0 | 1 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        3 if len > 0 => {
            let i = rng.below(len);
            data[i] = data[i].wrapping_add(rng.below(33) as u8).wrapping_sub(16);
        }
        4 => data.truncate(at(rng)),
        5 => {
            let n = 1 + rng.below(8);
            let bytes = rng.bytes(n);
            let i = at(rng);
            data.splice(i..i, bytes);
        }
        6 | 7 if !dict.is_empty() => {
            let token = dict[rng.below(dict.len())];
            let i = at(rng);
            if rng.chance(2) {
                data.splice(i..i, token.iter().copied());
            } else {
                let end = (i + token.len()).min(len);
                data.splice(i..end, token.iter().copied());
            }
        }
        8 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(32));
            data.drain(i..i + n);
        }
        9 if len > 0 => {
            // Duplicate a piece somewhere else.
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            let piece = data[i..i + n].to_vec();
            let j = at(rng);
            data.splice(j..j, piece);
        }
        10 => {
            // Splice: our head with another seed's tail.
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(other.len() + 1);
            data.truncate(at(rng));
            data.extend_from_slice(&other[cut..]);
        }
        11 if rng.chance(16) => {
            // Grow towards and past 64 KiB (sizes only the offload paths care about).
            let target = 60_000 + rng.below(10_000);
            while data.len() < target {
                let n = (target - data.len()).min(data.len().max(1));
                let piece = if data.is_empty() {
                    vec![0]
                } else {
                    data[..n].to_vec()
                };
                data.extend_from_slice(&piece);
            }
        }
        12 if len >= 2 => {
            let (i, j) = (rng.below(len), rng.below(len));
            data.swap(i, j);
        }
        _ => {}
    }
}

fn input(rng: &mut Rng, seeds: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    if rng.chance(8) || seeds.is_empty() {
        let n = if rng.chance(8) {
            rng.below(2048)
        } else {
            rng.below(96)
        };
        return rng.bytes(n);
    }
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, &mut data, seeds, dict);
    }
    data
}

fn env_usize(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `target` on its seeds and `iterations` generated inputs.
fn drive(name: &str, iterations: usize) {
    let target = bodies::TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    let iterations = env_usize("WEFT_FUZZ_ITERATIONS").map_or(iterations, |n| n as usize);
    let salt = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut rng = Rng(env_usize("WEFT_FUZZ_SEED").unwrap_or(0x5eed) ^ salt);
    let seeds = (target.seeds)();
    assert!(!seeds.is_empty(), "{name} has seeds");
    let inputs = seeds
        .iter()
        .cloned()
        .map(Some)
        .chain((0..iterations).map(|_| None));
    for (i, fixed) in inputs.enumerate() {
        let data = fixed.unwrap_or_else(|| input(&mut rng, &seeds, target.dict));
        one(target, i, &data);
    }
    // The libFuzzer corpus kept in git (scripts/fuzz-campaign.sh): every
    // input that reached new code in a long run is a regression test here.
    for (path, data) in corpus(name) {
        one_named(target, &path, &data);
    }
}

/// The files of `fuzz/corpus/<name>/`, in name order (none if it is absent).
fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p.display().to_string(), data)
        })
        .collect()
}

/// Runs one corpus file, naming it when it fails.
fn one_named(target: &Target, path: &str, data: &[u8]) {
    if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(data))) {
        eprintln!(
            "fuzz target {} failed on corpus file {path} (replay: cargo fuzz run -s none {} {path})",
            target.name, target.name
        );
        panic::resume_unwind(panic);
    }
}

fn one(target: &Target, i: usize, data: &[u8]) {
    if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(data))) {
        // The input, for a unit test or `cargo fuzz run <target> FILE`.
        let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fuzz-smoke-{}-{i}", target.name));
        let saved = std::fs::write(&file, data).map_or_else(
            |e| format!("(not saved: {e})"),
            |()| format!("saved to {}", file.display()),
        );
        let shown = &data[..data.len().min(2048)];
        eprintln!(
            "fuzz target {} failed on input #{i} ({} bytes, {saved}):\nb\"{}\"{}",
            target.name,
            data.len(),
            shown.escape_ascii(),
            if shown.len() < data.len() { " ..." } else { "" }
        );
        panic::resume_unwind(panic);
    }
}

#[test]
fn ingress() {
    drive("ingress", 50_000);
}

#[test]
fn egress() {
    drive("egress", 50_000);
}

#[test]
fn tx_batch() {
    drive("tx_batch", 20_000);
}

#[test]
fn rx_batch() {
    drive("rx_batch", 20_000);
}

#[test]
fn split() {
    drive("split", 20_000);
}

#[test]
fn coalesce() {
    drive("coalesce", 20_000);
}

#[test]
fn checksum() {
    drive("checksum", 40_000);
}

#[test]
fn icmp() {
    drive("icmp", 50_000);
}

#[test]
fn icmp6() {
    drive("icmp6", 20_000);
}

#[test]
fn ndp() {
    drive("ndp", 50_000);
}

#[test]
fn allocate() {
    drive("allocate", 20_000);
}

#[test]
fn lease() {
    drive("lease", 30_000);
}

#[test]
fn backend_data() {
    drive("backend_data", 30_000);
}

#[test]
fn local_record() {
    drive("local_record", 30_000);
}

#[test]
fn etcd() {
    drive("etcd", 30_000);
}

#[test]
fn net_conf() {
    drive("net_conf", 30_000);
}

#[test]
fn subnet_env() {
    drive("subnet_env", 40_000);
}

#[test]
fn kube() {
    drive("kube", 10_000);
}

#[test]
fn cni() {
    drive("cni", 10_000);
}

#[test]
fn tunables() {
    drive("tunables", 30_000);
}

/// Writes every target's seeds into `fuzz/corpus/<target>/` (cargo-fuzz's
/// corpus directory), so a libFuzzer run starts from them:
/// `cargo test --test fuzz_smoke -- --ignored write_corpus`.
#[test]
#[ignore = "writes files into fuzz/corpus; run it before a libFuzzer session"]
fn write_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for target in bodies::TARGETS {
        let dir = root.join(target.name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in (target.seeds)().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
}

/// Every body has a libFuzzer target of the same name and a smoke test, and
/// every libFuzzer target a body.
#[test]
fn every_body_has_a_fuzz_target() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(dir.join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut names: Vec<String> = bodies::TARGETS
        .iter()
        .map(|t| format!("{}.rs", t.name))
        .collect();
    names.sort();
    assert_eq!(files, names);
    for t in bodies::TARGETS {
        let file =
            std::fs::read_to_string(dir.join(format!("fuzz_targets/{}.rs", t.name))).unwrap();
        assert!(
            file.contains(&format!("bodies::{}::run(data)", t.name)),
            "{}",
            t.name
        );
        assert!(
            manifest.contains(&format!("name = \"{}\"", t.name)),
            "{} in fuzz/Cargo.toml",
            t.name
        );
        assert!(
            include_str!("fuzz_smoke.rs").contains(&format!("drive(\"{}\"", t.name)),
            "a smoke test for {}",
            t.name
        );
    }
}
