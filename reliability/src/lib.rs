//! # ferry-reliability: sans-IO reliability policies
//!
//! Deadlines, timeouts, retries with budgets, circuit breakers, rate limits, adaptive
//! concurrency limits, hedging, trace propagation and request/response patterns — as plain
//! state machines. Like every Ferry sans-IO crate, nothing here touches a socket, a thread or
//! a clock: the caller passes the current [`Instant`] in, arms timers at the `poll_timeout`
//! instants it is given, and draws randomness from a caller-seeded [`Rng`], so every run is
//! reproducible and every policy is testable with a virtual clock.
//!
//! | module | what |
//! |---|---|
//! | [`deadline`] | [`Deadline`]: propagate, split, `grpc-timeout` header encode/decode |
//! | [`timeouts`] | connect / request / idle / keep-alive timers |
//! | [`retry`] | backoff + jitter, idempotency gate, [`RetryBudget`], [`AdaptiveThrottle`] |
//! | [`breaker`] | [`CircuitBreaker`] and per-destination [`Breakers`] |
//! | [`ratelimit`] | [`TokenBucket`], [`Gcra`], keyed limiters |
//! | [`concurrency`] | AIMD / Gradient2 limits, priority load shedding |
//! | [`hedge`] | hedged requests |
//! | [`trace`] | correlation ids, W3C `traceparent` |
//! | [`patterns`] | request-reply table, fire-and-forget outbox, streams, fan-out |
//!
//! ## Embedding: a client loop
//!
//! A client wraps each call in a deadline, a breaker for the destination and a retry policy
//! limited by a budget. Here the "transport" fails twice, then answers, and the clock is a
//! plain number (a driver would use its monotonic clock and its timer wheel instead):
//!
//! ```
//! use std::time::Duration;
//! use ferry_reliability::{
//!     Backoff, BreakerConfig, Breakers, Deadline, Failure, Instant, RequestInfo, RetryBudget,
//!     RetryDecision, RetryGate, RetryPolicy, RetryState, Rng,
//! };
//!
//! // A fake transport: fails the first two attempts with 503, then succeeds.
//! let mut calls = 0;
//! let mut send = |_now: Instant| -> Result<&'static str, Failure> {
//!     calls += 1;
//!     if calls <= 2 { Err(Failure::Status(503)) } else { Ok("pong") }
//! };
//!
//! let mut now = Instant::from_nanos(0);                  // virtual clock
//! let mut rng = Rng::new(42);                            // seeded randomness
//! let policy = RetryPolicy::new(4, Backoff::EqualJitter {
//!     base: Duration::from_millis(10),
//!     cap: Duration::from_secs(1),
//! });
//! let mut budget = RetryBudget::default();              // 20% + 10/s over 10 s
//! let mut breakers: Breakers<&str> = Breakers::new(BreakerConfig::default());
//!
//! let deadline = Deadline::after(now, Duration::from_secs(2));
//! let req = RequestInfo::from_method(b"GET");
//! let mut state = RetryState::new(now, req, deadline);
//! budget.deposit(now);
//! let reply = loop {
//!     // 1. The breaker for this destination must admit the attempt.
//!     let permit = match breakers.try_acquire(&"10.0.0.7:80", now) {
//!         Ok(p) => p,
//!         Err(rejected) => break Err(format!("{rejected:?}")),
//!     };
//!     // 2. Send, with the remaining budget as the header the next hop sees.
//!     let _grpc_timeout = deadline.to_header(now);
//!     match send(now) {
//!         Ok(reply) => {
//!             breakers.on_success(&"10.0.0.7:80", now, permit);
//!             break Ok(reply);
//!         }
//!         Err(failure) => {
//!             breakers.on_failure(&"10.0.0.7:80", now, permit);
//!             // 3. Retry? (idempotent, transient, attempts left, before the deadline,
//!             //    and within the budget).
//!             match policy.decide(&mut state, failure, now, &mut budget, &mut rng) {
//!                 RetryDecision::Retry { at, .. } => now = at, // "sleep" on the virtual clock
//!                 give_up => break Err(format!("{give_up:?}")),
//!             }
//!         }
//!     }
//! };
//! assert_eq!(reply, Ok("pong"));
//! assert_eq!(state.attempts(), 3);
//! assert!(!deadline.is_expired(now));
//! ```
//!
//! ## Configuration
//!
//! Constructors take any configuration and clamp what they must (a NaN rate never trips, a
//! zero count acts as one). To reject a bad configuration instead — at start-up, from a config
//! file — call `validate()` on [`BreakerConfig`], [`RetryPolicy`], [`HedgePolicy`],
//! [`TimeoutConfig`] or [`ShedConfig`](concurrency::ShedConfig), or use
//! [`CircuitBreaker::try_new`], [`Breakers::try_new`], [`RetryBudget::try_new`] or
//! [`Quota::try_new`]; each
//! answers a [`ConfigError`] naming the field.
//!
//! ```
//! use ferry_reliability::{BreakerConfig, CircuitBreaker, ConfigError};
//!
//! let config = BreakerConfig { failure_rate: Some(50.0), ..BreakerConfig::default() }; // meant 50%
//! assert_eq!(
//!     CircuitBreaker::try_new(config).unwrap_err(),
//!     ConfigError::OutOfRange { field: "failure_rate" }
//! );
//! ```
//!
//! ## Caller duties
//!
//! - The caller MUST pass instants that never go backwards to any one object. (The sliding
//!   windows of breakers, budgets and throttles take an older instant as the newest one seen,
//!   so a clock hiccup cannot wipe their history.)
//! - The caller MUST hand every [`Permit`] and
//!   [`Token`](concurrency::Token) back with its outcome (or as ignored); a lost one holds a
//!   half-open probe slot or an in-flight slot until the object is dropped.
//! - After each call the caller SHOULD re-arm its timer at the object's `poll_timeout()` and
//!   call `handle_timeout(now)` when it fires; early or extra calls are harmless.
//! - Each process MUST seed its [`Rng`] differently (e.g. from the OS at start-up):
//!   identically seeded clients jitter identically, which defeats the point of jitter.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod breaker;
pub mod concurrency;
mod config;
pub mod deadline;
pub mod hedge;
pub mod patterns;
pub mod ratelimit;
pub mod retry;
pub mod rng;
pub mod timeouts;
pub mod trace;
mod window;

pub use breaker::{BreakerConfig, BreakerEvent, BreakerState, Breakers, CircuitBreaker, Permit};
pub use concurrency::{Aimd, ConcurrencyLimiter, Gradient2, LimitAlgorithm, Priority};
pub use config::ConfigError;
pub use deadline::{Deadline, DeadlineError, TimeoutHeader};
pub use ferry_proto::Instant;
pub use hedge::{Hedge, HedgeAction, HedgePolicy, LatencyTracker};
pub use patterns::{FanOut, Gather, Outbox, RequestReply, StreamFlow};
pub use ratelimit::{Gcra, Quota, RateLimited, TokenBucket};
pub use retry::{
    AdaptiveThrottle, Backoff, ConcurrentRetryBudget, Failure, RequestInfo, RetryBudget,
    RetryDecision, RetryGate, RetryPolicy, RetryState,
};
pub use rng::Rng;
pub use timeouts::{RequestTimer, TimeoutConfig, TimeoutKind};
pub use trace::{CorrelationId, CorrelationIds, TraceParent};
