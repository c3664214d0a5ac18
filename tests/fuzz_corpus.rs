//! The fuzz corpus as regression tests, on the pinned stable toolchain: every input kept in
//! `fuzz/corpus/<target>/` (crashes found once included, after their fix) goes through the
//! same function its fuzz target calls (`fuzz/src/lib.rs`, included here), so what the
//! fuzzer found stays fixed without nightly or libFuzzer.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn every_target_has_a_corpus() {
    for (name, _) in targets::TARGETS {
        let dir = corpus_dir(name);
        let inputs = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .count();
        assert!(inputs > 0, "{} is empty", dir.display());
    }
}

#[test]
fn corpus_inputs_replay_without_failing() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, body) in targets::TARGETS {
        let dir = corpus_dir(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        for file in files {
            let data = match std::fs::read(&file) {
                Ok(data) => data,
                // A fuzzer running meanwhile replaces inputs it has shortened.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => panic!("{}: {err}", file.display()),
            };
            replayed += 1;
            if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: {}: {message}", file.display()));
            }
        }
    }
    assert!(replayed > 0);
    assert!(
        failures.is_empty(),
        "{} corpus inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
