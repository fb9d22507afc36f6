//! Fuzz target `stream_json`: arbitrary bytes split into lines → `RunAccumulator`
//! (`push_line` each, then `conclude`), the path every CLI stdout line takes. Must never
//! panic; a failed run must carry the exit code and stderr it was given.
#![no_main]

use ccgate::protocol::{RunAccumulator, RunEnd};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The exit code is only recorded, never interpreted; vary it a little anyway.
    let code = i32::from(data.len() % 2 == 1);
    let text = String::from_utf8_lossy(data);
    let mut acc = RunAccumulator::new();
    for line in text.split('\n') {
        let _ = acc.push_line(line);
    }
    match acc.conclude(RunEnd { exit_code: Some(code), stderr_tail: "stderr tail".to_string(), ..RunEnd::default() }) {
        Ok(_success) => {}
        Err(facts) => {
            assert_eq!(facts.exit_code, Some(code));
            assert_eq!(facts.stderr_tail, "stderr tail");
            let _ = facts.summary();
        }
    }
});
