//! Redis's glob-style pattern matching (`stringmatchlen`): `*`, `?`, `[abc]`, `[^a]`, `[a-z]`,
//! and `\` escapes. Used by KEYS, SCAN MATCH, PSUBSCRIBE and CONFIG GET.
//!
//! Unlike a naive recursive matcher, this one backtracks only to the last `*`, so it runs in
//! O(pattern × subject) even for patterns like `*a*a*a*a*b` (no exponential blow-up on peer
//! input).

/// The length of the single-character token at `pat[p]` and whether it matches `c`.
fn token(pat: &[u8], p: usize, c: u8) -> (usize, bool) {
    match pat[p] {
        b'?' => (1, true),
        b'\\' if p + 1 < pat.len() => (2, pat[p + 1] == c),
        b'[' => {
            let mut i = p + 1;
            let not = pat.get(i) == Some(&b'^');
            if not {
                i += 1;
            }
            let mut matched = false;
            while i < pat.len() && pat[i] != b']' {
                if pat[i] == b'\\' && i + 1 < pat.len() {
                    i += 1;
                    matched |= pat[i] == c;
                } else if i + 2 < pat.len() && pat[i + 1] == b'-' {
                    let (lo, hi) = (pat[i].min(pat[i + 2]), pat[i].max(pat[i + 2]));
                    matched |= (lo..=hi).contains(&c);
                    i += 2;
                } else {
                    matched |= pat[i] == c;
                }
                i += 1;
            }
            // Include the closing bracket (an unterminated class runs to the end).
            let len = (i + 1).min(pat.len()) - p;
            (len, matched != not)
        }
        other => (1, other == c),
    }
}

/// Whether `s` matches `pattern`.
pub fn matches(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            if pattern[p] == b'*' {
                while p < pattern.len() && pattern[p] == b'*' {
                    p += 1;
                }
                if p == pattern.len() {
                    return true;
                }
                star = Some((p, i));
                continue;
            }
            let (len, ok) = token(pattern, p, s[i]);
            if ok {
                p += len;
                i += 1;
                continue;
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches(b"*", b"anything"));
        assert!(matches(b"*", b""));
        assert!(matches(b"h?llo", b"hello"));
        assert!(matches(b"h*llo", b"heeeello"));
        assert!(matches(b"h[ae]llo", b"hallo"));
        assert!(!matches(b"h[^e]llo", b"hello"));
        assert!(matches(b"h[a-b]llo", b"hbllo"));
        assert!(matches(b"key:\\*", b"key:*"));
        assert!(!matches(b"key:\\*", b"key:a"));
        assert!(!matches(b"a*b", b"acd"));
        assert!(matches(b"user:*:name", b"user:42:name"));
        assert!(matches(b"*a*b", b"xxaxxb"));
        assert!(!matches(b"?", b""));
        assert!(matches(b"[hx]*", b"hash"));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let s = vec![b'a'; 20_000];
        let start = std::time::Instant::now();
        assert!(!matches(b"*a*a*a*a*a*a*a*a*a*a*b", &s));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}
