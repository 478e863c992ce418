//! Rule 1 of ARCHITECTURE.md, checked by scanning the sources: protocol, pool and reliability
//! crates hold no sockets, threads, async, clocks or unseeded randomness.

use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &[
    "std::net",
    "std::thread",
    "std::time::Instant",
    "Instant::now",
    "SystemTime",
    "async fn",
    ".await",
    "tokio",
    "mio::",
    "std::fs",
    "thread_rng",
    "Mutex",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            // Examples and integration tests may use sockets and clocks; the library may not.
            if !matches!(name, "examples" | "tests" | "benches" | "target") {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") && !name.ends_with("_tests.rs") {
            out.push(p);
        }
    }
}

/// Strip `//` comments (doc examples may show a std run loop) and `#[cfg(test)]` modules are
/// allowed to use std: only code before the first `#[cfg(test)]` is checked.
fn library_code(src: &str) -> String {
    let code = src.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn sans_io_crates_have_no_io_threads_or_clocks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["proto", "pool", "reliability"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() >= 5, "scanned too few files: {files:?}");
    let mut violations = Vec::new();
    for f in &files {
        let code = library_code(&std::fs::read_to_string(f).unwrap());
        for pat in FORBIDDEN {
            // The shared pool serves multi-threaded callers by design: its shards are locked,
            // but it still owns no thread, clock or socket.
            if *pat == "Mutex" && f.ends_with("pool/src/shared.rs") {
                continue;
            }
            if code.contains(pat) {
                violations.push(format!("{}: {pat}", f.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "sans-IO rule broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn sans_io_crates_are_no_std() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for krate in ["proto/core", "proto/http1"] {
        let lib = std::fs::read_to_string(root.join(krate).join("src/lib.rs")).unwrap();
        assert!(lib.contains("#![no_std]"), "{krate} is not #![no_std]");
    }
}
