//! Replays every fuzz input kept in the repository (the seed corpus and each saved
//! crasher) through the fuzz targets' own checks, so that a crash once found stays fixed
//! under a plain `cargo test`, without a fuzzing toolchain.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// Runs `check` on every file under `fuzz/corpus/<target>` and `fuzz/artifacts/<target>`;
/// returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seen = 0;
    for kind in ["corpus", "artifacts"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            let bytes = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(
                outcome.is_ok(),
                "{} fails its target's checks",
                path.display()
            );
            seen += 1;
        }
    }
    seen
}

/// Client frames: the seed corpus covers the fast path and the general decoder, and the
/// 61-byte nesting bomb that once aborted `serve` is kept as a crasher.
#[test]
fn frame_corpus_and_crashers_pass() {
    let seen = replay("frame", checks::frame);
    assert!(
        seen >= 15,
        "only {seen} frame inputs: is fuzz/corpus/frame there?"
    );
}

/// Binary Kafka frames.
#[test]
fn kafka_binary_corpus_passes() {
    let seen = replay("kafka_binary", checks::kafka_binary);
    assert!(seen >= 6, "only {seen} binary inputs");
}
