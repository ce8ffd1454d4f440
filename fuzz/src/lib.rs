//! A small mutational fuzzer for the parsers that read untrusted bytes, bounded in time so
//! that it runs in every test run (and longer on demand).
//!
//! Each target starts from the seeds of its corpus (`fuzz/corpus/<target>/`, kept in the
//! repository, plus seeds a target makes itself) and runs, until its time is up, inputs made
//! by mutating seeds: flipped bits, overwritten, inserted, deleted or repeated ranges, splices
//! of two seeds, and interesting integers written over little-endian words. Every input runs
//! under `catch_unwind`; the first one that panics is written to `<target dir>/fuzz-crashes/`
//! and the run fails with its path, the random seed, and a hex preview.
//!
//! - `SQUILLA_FUZZ_SECS`: seconds per target (default 8).
//! - `SQUILLA_FUZZ_SEED`: the random seed (default: from the clock; printed either way).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A fast, seeded random stream (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.bits() % n as u64) as usize }
    }
}

/// Integers that often sit on edges.
const INTERESTING: [u64; 12] =
    [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX / 2, u64::MAX];

/// Applies 1 to 8 random mutations to `input`, splicing from `other` sometimes.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.bits() as u8;
            }
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.bits() as u8).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                input.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy = input[at..at + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, copy);
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = 1 + rng.below((other.len() - from).min(256));
                let at = rng.below(len + 1);
                let cut = rng.below(len - at + 1);
                input.splice(at..at + cut, other[from..from + n].iter().copied());
            }
            6 if len >= 4 => {
                let at = rng.below(len - 3);
                let value = INTERESTING[rng.below(INTERESTING.len())] as u32;
                input[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            7 if len >= 8 => {
                let at = rng.below(len - 7);
                let value = INTERESTING[rng.below(INTERESTING.len())];
                input[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            _ => input.push(rng.bits() as u8),
        }
    }
}

/// Seconds each target runs for (`SQUILLA_FUZZ_SECS`, default 8).
pub fn budget() -> Duration {
    let secs = std::env::var("SQUILLA_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8.0_f64);
    Duration::from_secs_f64(secs.max(0.1))
}

/// The seeds in `fuzz/corpus/<target>/`.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Inputs run.
    pub runs: u64,
    /// The random seed.
    pub seed: u64,
}

/// Runs `target` on mutations of `seeds` for [`budget`]; panics (failing the test) with the
/// first input that made it panic.
pub fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8])) -> Report {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let seed = std::env::var("SQUILLA_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng::new(seed);
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    // Every seed as it is first, then mutations.
    let mut pending: Vec<Vec<u8>> = seeds.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let crash = loop {
        let input = match pending.pop() {
            Some(input) => input,
            None if Instant::now() >= deadline => break None,
            None => {
                let mut input = seeds[rng.below(seeds.len())].clone();
                let other = &seeds[rng.below(seeds.len())];
                mutate(&mut rng, &mut input, other);
                input
            }
        };
        runs += 1;
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            break Some(input);
        }
    };
    std::panic::set_hook(previous);
    if let Some(input) = crash {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-crashes");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}-{seed}"));
        let _ = std::fs::write(&path, &input);
        let preview: String = input.iter().take(64).map(|b| format!("{b:02x}")).collect();
        // Run it once more with the hook in place, so that the panic's message is printed.
        let _ = catch_unwind(AssertUnwindSafe(|| target(&input)));
        panic!("{name}: an input panicked after {runs} runs (seed {seed}), saved to {}: {preview}…", path.display());
    }
    eprintln!("{name}: {runs} inputs in {:?}, no panic (seed {seed})", budget());
    Report { runs, seed }
}
