//! The layer check (`scripts/check-layers.sh`, run by `.ci/run`) still catches what it
//! should: its self-test plants bad imports in temp trees and expects each reported.

use std::process::Command;

#[test]
fn layer_check_catches_planted_violations() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-layers.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("--self-test")
        .output()
        .expect("run bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("check-layers self-test: ok"), "{text}");
}
