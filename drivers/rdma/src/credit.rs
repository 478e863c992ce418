//! Credit-based flow control: the sender never overruns the receive buffers its peer posted.
//!
//! An RC `SEND` consumes one posted receive buffer on the peer; with none posted the peer's
//! adapter answers RNR NAK and, once retries run out, the queue pair breaks. So each side counts
//! **credits**: receive buffers the peer has posted that it has not yet consumed. It starts with
//! the peer's `recv_slots` (from the handshake), spends one per message, and gets them back in
//! the `credits` field of the peer's messages, which the peer fills with buffers it re-posted
//! after the application read them (so a slow reader stops the writer: backpressure).
//!
//! Deadlock avoidance, the classic trap: both sides out of credits, neither able to send the
//! update that would free the other. Rules (with at least 4 receive buffers per side):
//!
//! 1. Data and close messages need two credits; the last one is reserved for credit updates,
//!    so a side can always return credits.
//! 2. Every message carries all credits owed so far (piggybacking).
//! 3. A standalone credit update goes out when the credits owed reach half the receive ring
//!    (at least 2). An update therefore returns at least 2 credits while consuming one buffer
//!    on the peer, which owes it back lazily: updates die out instead of ping-ponging, and
//!    a side that spent its reserved credit on an update has just handed the peer enough
//!    credits to answer.
//!
//! The only stall left is the application-level one TCP has too: both applications writing
//! and neither reading.
use std::fmt;

/// Credit state of one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credits {
    available: u32,
    owed: u32,
    threshold: u32,
}

/// Misuse of the credit counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CreditError {
    /// A send was attempted without the credit it needs.
    NoCredit,
    /// The peer granted more credits than it has receive buffers (a protocol violation).
    Overgrant {
        /// Credits after the grant.
        total: u32,
        /// The peer's receive buffers.
        limit: u32,
    },
}

impl fmt::Display for CreditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreditError::NoCredit => f.write_str("send without credit"),
            CreditError::Overgrant { total, limit } => {
                write!(f, "peer granted {total} credits but has {limit} buffers")
            }
        }
    }
}

impl std::error::Error for CreditError {}

/// What kind of message is being sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendClass {
    /// Application data or close (needs two credits).
    Data,
    /// Credit update (may use the reserved credit).
    Control,
}

impl Credits {
    /// Start with `peer_recv_slots` credits; return credits in batches of half of
    /// `own_recv_slots` (at least 2).
    pub fn new(peer_recv_slots: u32, own_recv_slots: u32) -> Credits {
        Credits {
            available: peer_recv_slots,
            owed: 0,
            threshold: (own_recv_slots / 2).max(2),
        }
    }

    /// Credits in hand.
    pub fn available(&self) -> u32 {
        self.available
    }

    /// Credits owed to the peer.
    pub fn owed(&self) -> u32 {
        self.owed
    }

    /// Whether a message of `class` may be sent now.
    pub fn can_send(&self, class: SendClass) -> bool {
        match class {
            SendClass::Data => self.available >= 2,
            SendClass::Control => self.available >= 1,
        }
    }

    /// Spend one credit; returns the owed credits to piggyback (now cleared).
    pub fn on_send(&mut self, class: SendClass) -> Result<u16, CreditError> {
        if !self.can_send(class) {
            return Err(CreditError::NoCredit);
        }
        self.available -= 1;
        let n = self.owed.min(u16::MAX as u32);
        self.owed -= n;
        Ok(n as u16)
    }

    /// The peer returned `n` credits (`limit`: its receive buffers).
    pub fn on_grant(&mut self, n: u16, limit: u32) -> Result<(), CreditError> {
        let total = self.available + n as u32;
        if total > limit {
            return Err(CreditError::Overgrant { total, limit });
        }
        self.available = total;
        Ok(())
    }

    /// A receive buffer was re-posted: one more credit owed to the peer.
    pub fn on_reposted(&mut self) {
        self.owed += 1;
    }

    /// Whether a standalone credit update should be sent now.
    pub fn update_due(&self) -> bool {
        self.can_send(SendClass::Control) && self.owed >= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_and_piggyback() {
        let mut c = Credits::new(4, 4);
        assert!(c.can_send(SendClass::Data));
        for _ in 0..3 {
            assert_eq!(c.on_send(SendClass::Data), Ok(0));
        }
        assert!(!c.can_send(SendClass::Data));
        assert!(c.can_send(SendClass::Control));
        assert_eq!(c.on_send(SendClass::Data), Err(CreditError::NoCredit));
        c.on_reposted();
        assert!(!c.update_due(), "below threshold 2");
        c.on_reposted();
        assert!(c.update_due());
        assert_eq!(c.on_send(SendClass::Control), Ok(2));
        assert_eq!(c.owed(), 0);
        assert_eq!(c.on_send(SendClass::Control), Err(CreditError::NoCredit));
        assert_eq!(
            c.on_grant(5, 4),
            Err(CreditError::Overgrant { total: 5, limit: 4 })
        );
        c.on_grant(4, 4).unwrap();
        assert_eq!(c.available(), 4);
        assert!(!c.update_due());
    }
}
