//! Criterion benches for Ferry; see `benches/`.
