//! Typed configuration errors, shared by every policy's `validate`.

use core::fmt;

/// Why a policy's `validate` rejected its configuration. The constructors that take a config
/// (`CircuitBreaker::new`, ...) accept any value and clamp it; `validate` (and the `try_new`
/// constructors) say instead what is wrong, naming the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A count or duration that must be positive is zero.
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// A ratio, rate or share is NaN or outside its range (named in the field's docs).
    OutOfRange {
        /// The field's name.
        field: &'static str,
    },
    /// Two fields contradict each other (e.g. an upper bound below a lower one).
    Inconsistent {
        /// The upper bound's or dependent field's name.
        field: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Zero { field } => write!(f, "{field} must be positive"),
            ConfigError::OutOfRange { field } => write!(f, "{field} is out of range"),
            ConfigError::Inconsistent { field } => {
                write!(f, "{field} contradicts another setting")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// `Err(Zero)` when `zero`.
pub(crate) fn nonzero(field: &'static str, zero: bool) -> Result<(), ConfigError> {
    if zero {
        Err(ConfigError::Zero { field })
    } else {
        Ok(())
    }
}

/// `Err(OutOfRange)` unless `lo < v <= hi` (`lo_open`) or `lo <= v <= hi`; NaN is out.
pub(crate) fn in_range(
    field: &'static str,
    v: f64,
    lo: f64,
    hi: f64,
    lo_open: bool,
) -> Result<(), ConfigError> {
    let ok = if lo_open { v > lo } else { v >= lo } && v <= hi;
    if ok {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange { field })
    }
}

#[cfg(test)]
mod tests {
    use core::time::Duration;

    use super::ConfigError::{self, Inconsistent, OutOfRange, Zero};
    use crate::breaker::{BreakerConfig, CircuitBreaker, SlidingWindow};
    use crate::concurrency::ShedConfig;
    use crate::hedge::{HedgeDelay, HedgePolicy};
    use crate::retry::{Backoff, RetryBudget, RetryPolicy};
    use crate::timeouts::TimeoutConfig;

    fn breaker(f: fn(&mut BreakerConfig)) -> Result<(), ConfigError> {
        let mut c = BreakerConfig::default();
        f(&mut c);
        c.validate()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(BreakerConfig::default().validate(), Ok(()));
        assert_eq!(RetryPolicy::default().validate(), Ok(()));
        assert_eq!(HedgePolicy::default().validate(), Ok(()));
        assert_eq!(ShedConfig::default().validate(), Ok(()));
        assert_eq!(TimeoutConfig::default().validate(), Ok(()));
        assert!(CircuitBreaker::try_new(BreakerConfig::default()).is_ok());
        assert!(RetryBudget::try_new(Duration::from_secs(10), 10, 0.2).is_ok());
    }

    #[test]
    fn breaker_config_errors_name_the_field() {
        let field = |field| Err(OutOfRange { field });
        assert_eq!(
            breaker(|c| c.failure_rate = Some(f64::NAN)),
            field("failure_rate")
        );
        assert_eq!(
            breaker(|c| c.failure_rate = Some(0.0)),
            field("failure_rate")
        );
        assert_eq!(
            breaker(|c| c.failure_rate = Some(1.5)),
            field("failure_rate")
        );
        assert_eq!(
            breaker(|c| c.slow_call_rate = Some(-0.1)),
            field("slow_call_rate")
        );
        assert_eq!(
            breaker(|c| c.consecutive_failures = Some(0)),
            Err(Zero {
                field: "consecutive_failures"
            })
        );
        assert_eq!(
            breaker(|c| {
                c.consecutive_failures = None;
                c.failure_rate = None;
            }),
            Err(Inconsistent {
                field: "consecutive_failures"
            })
        );
        assert_eq!(
            breaker(|c| c.window = SlidingWindow::Count(0)),
            Err(Zero { field: "window" })
        );
        assert_eq!(
            breaker(|c| c.window = SlidingWindow::Time {
                span: Duration::from_nanos(3),
                buckets: 4
            }),
            Err(Inconsistent { field: "window" })
        );
        assert_eq!(
            breaker(|c| c.open_duration = Duration::ZERO),
            Err(Zero {
                field: "open_duration"
            })
        );
        assert_eq!(
            breaker(|c| c.max_open_duration = Some(Duration::from_secs(1))),
            Err(Inconsistent {
                field: "max_open_duration"
            })
        );
        assert_eq!(
            breaker(|c| c.half_open_calls = 0),
            Err(Zero {
                field: "half_open_calls"
            })
        );
        assert_eq!(
            breaker(|c| c.event_capacity = 0),
            Err(Zero {
                field: "event_capacity"
            })
        );
        let c = BreakerConfig {
            failure_rate: Some(2.0),
            ..BreakerConfig::default()
        };
        assert!(CircuitBreaker::try_new(c).is_err());
        assert_eq!(
            OutOfRange {
                field: "failure_rate"
            }
            .to_string(),
            "failure_rate is out of range"
        );
    }

    #[test]
    fn other_policies_validate() {
        let ms = Duration::from_millis;
        assert_eq!(
            RetryPolicy::new(0, Backoff::Fixed(ms(1))).validate(),
            Err(Zero {
                field: "max_attempts"
            })
        );
        assert_eq!(
            RetryPolicy::new(
                3,
                Backoff::FullJitter {
                    base: ms(10),
                    cap: ms(1)
                }
            )
            .validate(),
            Err(Inconsistent { field: "cap" })
        );
        assert_eq!(
            RetryPolicy::new(
                3,
                Backoff::DecorrelatedJitter {
                    base: Duration::ZERO,
                    cap: ms(1)
                }
            )
            .validate(),
            Err(Zero { field: "base" })
        );
        assert_eq!(
            RetryBudget::try_new(Duration::ZERO, 1, 0.2).unwrap_err(),
            Zero { field: "ttl" }
        );
        assert_eq!(
            RetryBudget::try_new(ms(10), 1, f64::NAN).unwrap_err(),
            OutOfRange { field: "ratio" }
        );
        assert_eq!(
            RetryBudget::try_new(ms(10), 1, -1.0).unwrap_err(),
            OutOfRange { field: "ratio" }
        );
        let hedge = |p: f64| HedgePolicy {
            delay: HedgeDelay::Percentile {
                p,
                min: ms(1),
                fallback: ms(5),
            },
            ..HedgePolicy::default()
        };
        assert_eq!(hedge(1.5).validate(), Err(OutOfRange { field: "p" }));
        assert_eq!(hedge(f64::NAN).validate(), Err(OutOfRange { field: "p" }));
        let shed = ShedConfig {
            sheddable_share: 0.95,
            ..ShedConfig::default()
        };
        assert_eq!(
            shed.validate(),
            Err(Inconsistent {
                field: "sheddable_share"
            })
        );
        let t = TimeoutConfig {
            idle: Some(Duration::ZERO),
            ..TimeoutConfig::default()
        };
        assert_eq!(t.validate(), Err(Zero { field: "idle" }));
    }
}
