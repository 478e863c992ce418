//! # ferry-pool
//!
//! Sans-IO connection pools: fixed, dynamic, per-worker, shared, per-destination
#![deny(missing_docs)]
