//! `--config FILE` (TOML), shared by `ferry serve` and `ferry proxy`: reading the file into a
//! command's settings (unknown keys are errors naming the key) and one-line errors that name
//! the key, for values the flags' own parsers reject (durations, addresses, ranges).

use std::path::Path;

use serde::de::DeserializeOwned;

/// The settings in `path`. Errors are one line: `--config PATH: [KEY: ]MESSAGE`, naming the
/// key when the TOML parser's message does not (a value of the wrong type).
pub(crate) fn load<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    toml::from_str::<T>(&text).map_err(|e| {
        let msg = e.message().lines().next().unwrap_or("invalid TOML");
        let at = e.span().and_then(|s| key_at(&text, s.start));
        match at {
            // An unknown field's message names it already.
            Some(key) if !msg.contains(&format!("`{key}`")) => {
                format!("--config {}: {key}: {msg}", path.display())
            }
            _ => format!("--config {}: {msg}", path.display()),
        }
    })
}

/// The key of the `key = value` line holding byte `at` of `text`, if that line is one.
fn key_at(text: &str, at: usize) -> Option<&str> {
    let start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    bare.then_some(key)
}

/// Fill `slot` (a flag's value, which wins) from the file's `value` for `key` when the flag
/// was not given, with `parse` (the flag's own parser). The error names the key.
pub(crate) fn fill<T, V>(
    slot: &mut Option<T>,
    key: &str,
    value: Option<V>,
    parse: impl FnOnce(V) -> Result<T, String>,
) -> Result<(), String> {
    if slot.is_none() {
        if let Some(v) = value {
            *slot = Some(parse(v).map_err(|e| format!("--config: {key}: {e}"))?);
        }
    }
    Ok(())
}

/// A number from the file, checked against the range its flag allows.
pub(crate) fn in_range<N>(lo: N, hi: N) -> impl FnOnce(N) -> Result<N, String>
where
    N: PartialOrd + std::fmt::Display + Copy,
{
    move |v| {
        if v < lo || v > hi {
            Err(format!("{v} is not in {lo}..={hi}"))
        } else {
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: Option<String>,
        n: Option<u32>,
    }

    fn load_text(text: &str) -> Result<T, String> {
        let dir = std::env::temp_dir().join(format!("ferry-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.toml"));
        std::fs::write(&path, text).unwrap();
        let r = load::<T>(&path);
        let _ = std::fs::remove_file(&path);
        r.map_err(|e| e.replace(&path.display().to_string(), "F"))
    }

    #[test]
    fn errors_name_the_key_in_one_line() {
        let e = load_text("a = \"x\"\nbogus = 1\n").unwrap_err();
        assert!(e.starts_with("--config F: unknown field `bogus`"), "{e}");
        let e = load_text("a = \"x\"\nn = \"five\"\n").unwrap_err();
        assert!(e.starts_with("--config F: n: invalid type"), "{e}");
        let e = load_text("n = -1\n").unwrap_err();
        assert!(e.starts_with("--config F: n: "), "{e}");
        let e = load_text("a = \n").unwrap_err();
        assert!(e.starts_with("--config F: "), "{e}");
        for e in [
            load_text("bogus = 1").unwrap_err(),
            load_text("n = [1,\n2]").unwrap_err(),
        ] {
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let t = load_text("a = \"x\"\nn = 3\n").unwrap();
        assert_eq!((t.a.as_deref(), t.n), (Some("x"), Some(3)));
        let e = load::<T>(Path::new("/nonexistent/ferry.toml")).unwrap_err();
        assert!(e.starts_with("--config /nonexistent/ferry.toml: "), "{e}");
    }

    #[test]
    fn flags_win_and_values_are_checked() {
        let mut slot = Some(1u32);
        fill(&mut slot, "n", Some(2u32), Ok).unwrap();
        assert_eq!(slot, Some(1));
        let mut slot = None;
        fill(&mut slot, "n", Some(2u32), Ok).unwrap();
        assert_eq!(slot, Some(2));
        let mut slot: Option<u32> = None;
        fill(&mut slot, "n", None, Ok).unwrap();
        assert_eq!(slot, None);
        let e = fill(&mut slot, "n", Some(0u32), in_range(1, 8)).unwrap_err();
        assert_eq!(e, "--config: n: 0 is not in 1..=8");
        assert_eq!(key_at("a = 1\n  bc_d = 2", 10), Some("bc_d"));
        assert_eq!(key_at("[t]\n", 1), None);
    }
}
