#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Replays every committed fuzz corpus (`tests/fuzz/corpus/<target>/`) through its target
//! (`tongban-fuzz-support`): a smoke test that what the fuzzers once found, and the seeds,
//! still pass without a panic. The fuzzing itself is `cargo +nightly fuzz run --fuzz-dir
//! tests/fuzz <target>` (see the README).

use std::path::PathBuf;

#[test]
fn every_committed_corpus_input_passes_its_target() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in tongban_fuzz_support::TARGETS {
        let dir = root.join(name);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "the corpus of {name} is empty");
    }
}
