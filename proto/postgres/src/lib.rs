//! # ferry-postgres: the PostgreSQL wire protocol (v3), sans-IO
//!
//! - [`message`]: framing and typed codecs of frontend and backend messages, startup packets.
//! - [`auth`]: SCRAM-SHA-256 (client and server sides) and MD5 password authentication.
//! - [`sql`]: which statements leave state in a server session (for transaction pooling).
#![deny(missing_docs)]

pub mod auth;
pub mod message;
pub mod sql;
