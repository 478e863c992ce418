//! Skipping a test whose environment is missing (not root, a tool absent). A skip is never
//! silent: the reason goes to stderr and, when `FERRY_SKIP_LOG` names a file (`scripts/test`
//! sets it and prints the file at the end), is appended there. With
//! `FERRY_REQUIRE_ALL_TESTS=1` every skip is a failure instead, for machines known to have
//! everything (`FERRY_REQUIRE_ALL_TESTS=1 scripts/test`).

use std::io::Write;

/// The environment variable that turns every skip into a failure.
pub const REQUIRE_ALL_TESTS: &str = "FERRY_REQUIRE_ALL_TESTS";
/// The environment variable naming the file that collects skip reasons.
pub const SKIP_LOG: &str = "FERRY_SKIP_LOG";

/// Skip the calling test for `reason` (the caller returns right after), or panic when
/// `FERRY_REQUIRE_ALL_TESTS=1`.
#[track_caller]
pub fn skip_or_fail(reason: &str) {
    let caller = std::panic::Location::caller();
    if std::env::var(REQUIRE_ALL_TESTS).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_ALL_TESTS}=1 and this test cannot run here: {reason}");
    }
    eprintln!("skipped: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{}:{}: {reason}", caller.file(), caller.line());
        }
    }
}
