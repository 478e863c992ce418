//! A line-based control language for a [`Relay`], used by the binary's `--fault` flags and its
//! control socket (one command per line, answered by one line: `ok`, `error: …` or the stats):
//!
//! | command | effect |
//! |---|---|
//! | `latency MS [JITTER_MS]` | added delay per chunk, each direction |
//! | `stall MS` / `stall forever` / `stall off` | stop forwarding for a while / until `stall off` |
//! | `reset AFTER_BYTES [PROBABILITY] [up\|down]` / `reset off` | RST the client after N bytes (counted toward the upstream or the client; default down) on a share of new connections |
//! | `halfopen up\|down` / `halfopen off` | drop one direction silently |
//! | `refuse on\|off` | close new connections right after accept |
//! | `bandwidth BYTES_PER_S` / `bandwidth off` | pace each direction of each connection |
//! | `seed N` | seed of the PRNG (jitter, reset choice) |
//! | `clear` | no faults |
//! | `stats` | the counters, as `key=value` pairs |

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::fault::{Dir, Faults, Stall};
use crate::relay::Relay;

/// A parsed control command.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Command {
    /// Change the faults.
    Set(Change),
    /// Report the counters.
    Stats,
}

/// A change to a relay's faults.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Change {
    /// `latency`.
    Latency(Duration, Duration),
    /// `stall MS` (`Some`) or `stall forever` (`None`).
    Stall(Option<Duration>),
    /// `stall off`.
    Unstall,
    /// `reset`.
    Reset(Option<(u64, f64, Dir)>),
    /// `halfopen`.
    HalfOpen(Option<Dir>),
    /// `refuse`.
    Refuse(bool),
    /// `bandwidth`.
    Bandwidth(Option<u64>),
    /// `seed`.
    Seed(u64),
    /// `clear`.
    Clear,
}

/// Why a command line was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Empty line.
    Empty,
    /// Unknown command word.
    Unknown(String),
    /// A bad or missing argument.
    BadArgument(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Empty => write!(f, "empty command"),
            ParseError::Unknown(w) => write!(f, "unknown command `{w}`"),
            ParseError::BadArgument(a) => write!(f, "bad argument: {a}"),
        }
    }
}

impl std::error::Error for ParseError {}

fn num<T: std::str::FromStr>(w: Option<&str>, what: &str) -> Result<T, ParseError> {
    let w = w.ok_or_else(|| ParseError::BadArgument(format!("{what} missing")))?;
    w.parse()
        .map_err(|_| ParseError::BadArgument(format!("{what} `{w}`")))
}

fn dir(w: &str) -> Result<Dir, ParseError> {
    match w {
        "up" | "upstream" => Ok(Dir::ToUpstream),
        "down" | "downstream" => Ok(Dir::ToDownstream),
        _ => Err(ParseError::BadArgument(format!(
            "direction `{w}` (up or down)"
        ))),
    }
}

/// Parse one command line.
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let mut w = line.split_whitespace();
    let Some(cmd) = w.next() else {
        return Err(ParseError::Empty);
    };
    let arg = w.next();
    let change = match (cmd, arg) {
        ("stats", _) => return Ok(Command::Stats),
        ("clear", _) => Change::Clear,
        ("latency", a) => {
            let ms: u64 = num(a, "latency")?;
            let jitter: u64 = match w.next() {
                Some(j) => num(Some(j), "jitter")?,
                None => 0,
            };
            Change::Latency(Duration::from_millis(ms), Duration::from_millis(jitter))
        }
        ("stall", Some("forever")) => Change::Stall(None),
        ("stall", Some("off")) => Change::Unstall,
        ("stall", a) => Change::Stall(Some(Duration::from_millis(num(a, "stall")?))),
        ("reset", Some("off")) => Change::Reset(None),
        ("reset", a) => {
            let after: u64 = num(a, "reset bytes")?;
            let p: f64 = match w.next() {
                Some(p) => num(Some(p), "probability")?,
                None => 1.0,
            };
            if !(0.0..=1.0).contains(&p) {
                return Err(ParseError::BadArgument(format!("probability {p}")));
            }
            let d = match w.next() {
                Some(d) => dir(d)?,
                None => Dir::ToDownstream,
            };
            Change::Reset(Some((after, p, d)))
        }
        ("halfopen", Some("off")) => Change::HalfOpen(None),
        ("halfopen", Some(d)) => Change::HalfOpen(Some(dir(d)?)),
        ("refuse", Some("on")) => Change::Refuse(true),
        ("refuse", Some("off")) => Change::Refuse(false),
        ("bandwidth", Some("off")) => Change::Bandwidth(None),
        ("bandwidth", a) => Change::Bandwidth(Some(num::<u64>(a, "bandwidth")?.max(1))),
        ("seed", a) => Change::Seed(num(a, "seed")?),
        ("halfopen" | "refuse", None) => {
            return Err(ParseError::BadArgument(format!("{cmd}: argument missing")))
        }
        (other, _) => return Err(ParseError::Unknown(other.to_string())),
    };
    Ok(Command::Set(change))
}

impl Change {
    /// Apply to `f`; `now` is when the command arrived (for timed stalls).
    pub fn apply(&self, f: &mut Faults, now: std::time::Instant) {
        match *self {
            Change::Latency(l, j) => {
                f.latency = l;
                f.jitter = j;
            }
            Change::Stall(Some(d)) => f.stall = Stall::Until(now + d),
            Change::Stall(None) => f.stall = Stall::Forever,
            Change::Unstall => f.stall = Stall::None,
            Change::Reset(None) => f.reset = None,
            Change::Reset(Some((after, p, d))) => {
                let seed = f.seed;
                *f = std::mem::take(f).with_reset(after, p, d).with_seed(seed);
            }
            Change::HalfOpen(d) => f.half_open = d,
            Change::Refuse(on) => f.refuse = on,
            Change::Bandwidth(b) => f.bandwidth = b,
            Change::Seed(s) => f.seed = s,
            Change::Clear => *f = Faults::none().with_seed(f.seed),
        }
    }
}

/// Run one command against `relay`; returns the reply line (without newline).
pub fn execute(relay: &Relay, line: &str) -> String {
    match parse(line) {
        Ok(Command::Stats) => relay.stats().to_string(),
        Ok(Command::Set(c)) => {
            let now = std::time::Instant::now();
            relay.update(|f| c.apply(f, now));
            "ok".into()
        }
        Err(e) => format!("error: {e}"),
    }
}

/// Serve the control language on `addr` from a background thread (one client at a time,
/// lines in, one line out each). Returns the bound address.
pub fn serve(relay: Arc<Relay>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let bound = l.local_addr()?;
    std::thread::Builder::new()
        .name("chaos-relay-control".into())
        .spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let Ok(mut w) = conn.try_clone() else {
                    continue;
                };
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { break };
                    if line.trim().is_empty() {
                        continue;
                    }
                    let reply = execute(&relay, &line);
                    if writeln!(w, "{reply}").is_err() {
                        break;
                    }
                }
            }
        })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        let ms = Duration::from_millis;
        assert_eq!(
            parse("latency 50 20"),
            Ok(Command::Set(Change::Latency(ms(50), ms(20))))
        );
        assert_eq!(
            parse("latency 5"),
            Ok(Command::Set(Change::Latency(ms(5), ms(0))))
        );
        assert_eq!(
            parse("stall forever"),
            Ok(Command::Set(Change::Stall(None)))
        );
        assert_eq!(
            parse("stall 300"),
            Ok(Command::Set(Change::Stall(Some(ms(300)))))
        );
        assert_eq!(parse("stall off"), Ok(Command::Set(Change::Unstall)));
        assert_eq!(
            parse("reset 100 0.5 up"),
            Ok(Command::Set(Change::Reset(Some((
                100,
                0.5,
                Dir::ToUpstream
            )))))
        );
        assert_eq!(
            parse("reset 7"),
            Ok(Command::Set(Change::Reset(Some((
                7,
                1.0,
                Dir::ToDownstream
            )))))
        );
        assert_eq!(parse("reset off"), Ok(Command::Set(Change::Reset(None))));
        assert_eq!(
            parse("halfopen down"),
            Ok(Command::Set(Change::HalfOpen(Some(Dir::ToDownstream))))
        );
        assert_eq!(parse("refuse on"), Ok(Command::Set(Change::Refuse(true))));
        assert_eq!(
            parse("bandwidth 1000"),
            Ok(Command::Set(Change::Bandwidth(Some(1000))))
        );
        assert_eq!(parse("seed 9"), Ok(Command::Set(Change::Seed(9))));
        assert_eq!(parse("clear"), Ok(Command::Set(Change::Clear)));
        assert_eq!(parse("  stats "), Ok(Command::Stats));
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        for bad in [
            "",
            "   ",
            "latency",
            "latency x",
            "stall",
            "reset 1 2.0",
            "reset 1 0.5 sideways",
            "halfopen",
            "refuse maybe",
            "bandwidth -1",
            "seed",
            "explode",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn changes_apply() {
        let now = std::time::Instant::now();
        let mut f = Faults::none().with_seed(4);
        for line in [
            "latency 50 20",
            "reset 10 0.5 up",
            "halfopen down",
            "bandwidth 99",
            "stall 100",
        ] {
            let Ok(Command::Set(c)) = parse(line) else {
                panic!("{line}")
            };
            c.apply(&mut f, now);
        }
        assert_eq!(f.latency, Duration::from_millis(50));
        assert_eq!(
            f.reset.map(|r| (r.after_bytes, r.dir)),
            Some((10, Dir::ToUpstream))
        );
        assert_eq!(f.half_open, Some(Dir::ToDownstream));
        assert_eq!(f.bandwidth, Some(99));
        assert_eq!(f.stall, Stall::Until(now + Duration::from_millis(100)));
        assert_eq!(f.seed, 4);
        Change::Clear.apply(&mut f, now);
        assert_eq!(f, Faults::none().with_seed(4));
    }
}
