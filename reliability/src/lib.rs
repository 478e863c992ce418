//! # ferry-reliability
//!
//! Sans-IO reliability policies: deadlines, retries with budgets, circuit breakers, rate limits, concurrency limits, hedging
#![deny(missing_docs)]
