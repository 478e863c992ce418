//! INCRBYFLOAT's `long double` emulation (`apps/kv/src/longdouble.rs`: `strtold` parsing,
//! correctly rounded addition, `%.17Lf` printing) on arbitrary bytes.
//!
//! The module's source is included by path (it uses only `std`), so this target does not
//! depend on how the store reaches it.
//!
//! Input: `a` or `a,b` (split at the first `,`).
//! Invariants: no panic (no overflow: the smoke builds with debug assertions), bounded
//! time and memory; every value that parses prints as text that parses again, printing is a
//! fixed point, and the print reads back as the value wherever `%.17Lf` can hold it (its last
//! significand bit weighs at least 2^-17, or |v| >= 2^7 so that the print's 1e-17 resolution
//! is under half a step between neighbours); plain decimal text rounded to `long double`
//! then to `f64` equals Rust's correctly rounded `f64` parse (unless the `long double` is an
//! exact `f64` midpoint); the sum commutes, `x + 0 = x`, and a sum that exists prints and
//! reads back the same way; `f64` sums agree after rounding.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../apps/kv/src/longdouble.rs"]
mod longdouble;

use longdouble::LongDouble;

/// `x` exactly, as hex text `strtold` reads.
fn hex_of(x: f64) -> String {
    let bits = x.to_bits();
    let neg = if bits >> 63 == 1 { "-" } else { "" };
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let frac = bits & ((1 << 52) - 1);
    let (m, e) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1 << 52), exp - 1075)
    };
    format!("{neg}0x{m:x}p{e}")
}

fn check(v: LongDouble, what: &[u8]) {
    let p = v.to_human();
    let w = LongDouble::parse(p.as_bytes())
        .unwrap_or_else(|| panic!("print {p:?} of {what:?} does not parse"));
    assert_eq!(w.to_human(), p, "print of {what:?} is not a fixed point");
    if v.print_is_exact() {
        assert!(
            w == v || (w.is_zero() && v.is_zero()),
            "{what:?}: {v:?} printed {p} reads back as {w:?}"
        );
    }
}

fn parse_checked(s: &[u8]) -> Option<LongDouble> {
    let v = LongDouble::parse(s)?;
    check(v, s);
    // Plain decimal text: Rust's f64 parser is correctly rounded too.
    if !s.is_empty() && s.iter().all(|c| b"0123456789.eE+-".contains(c)) {
        if let Ok(want) = std::str::from_utf8(s).unwrap().parse::<f64>() {
            if let Some(got) = v.to_f64() {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{:?}",
                    String::from_utf8_lossy(s)
                );
            }
        }
    }
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let (a, b) = match data.iter().position(|&c| c == b',') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Some(x) = parse_checked(a) else {
        return;
    };
    let _ = x.add(&x);
    if let Some(s) = x.add(&LongDouble::ZERO) {
        if !x.is_zero() {
            assert_eq!(s, x);
        }
    }
    let Some(y) = b.and_then(parse_checked) else {
        return;
    };
    let s = x.add(&y);
    assert_eq!(s, y.add(&x), "the sum commutes");
    if let Some(s) = s {
        check(s, data);
        if let (Some(fx), Some(fy), Some(fs)) = (x.to_f64(), y.to_f64(), s.to_f64()) {
            // Exact f64 operands (they round-trip through f64 unchanged).
            let exact = |v: &LongDouble, f: f64| {
                f.is_finite() && LongDouble::parse(hex_of(f).as_bytes()) == Some(*v)
            };
            if exact(&x, fx) && exact(&y, fy) {
                assert_eq!(fs.to_bits(), (fx + fy).to_bits(), "{fx} + {fy}");
            }
        }
    }
});
