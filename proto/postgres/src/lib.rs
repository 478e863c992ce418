//! # ferry-postgres: the PostgreSQL wire protocol (v3), sans-IO
//!
//! - [`message`]: framing of tagged messages and untagged startup packets, startup decoding.
//! - [`backend`] and [`frontend`]: typed decoding of the messages a pooler or driver acts on
//!   (authentication, ReadyForQuery, errors, Parse/Bind/Sync...) and their encoders.
//! - [`client`]: a client connection (startup, SCRAM/MD5/cleartext login, simple and
//!   extended queries, pipelined, COPY TO STDOUT and FROM STDIN); `examples/query.rs` runs
//!   it over a std socket.
//!   [`client::Login`] is its login alone, for a pooler's server connections.
//! - [`server`]: the backend side of a login ([`server::Login`]: SSLRequest, startup
//!   checks, SCRAM-SHA-256 against a verifier), for a server or a pooler's client side.
//! - [`auth`]: SCRAM-SHA-256 (client and server sides) and MD5 password authentication.
//! - [`sql`]: which statements leave state in a server session (for transaction pooling).
//!
//! Nothing here owns a socket, a thread or a clock: feed bytes, get messages; randomness
//! (SCRAM nonces, salts) comes from the caller. `ferry proxy --protocol postgres` is built on it.
//!
//! ## Embedding: split a server's reply stream and act on ReadyForQuery
//!
//! ```
//! use bytes::BytesMut;
//! use ferry_postgres::backend::{self, Message, TxStatus};
//! use ferry_postgres::message::frame;
//!
//! // Bytes as read from a server socket: CommandComplete, ReadyForQuery, then half a message.
//! let mut input = BytesMut::from(&b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05IZ\0\0"[..]);
//! let mut idle = false;
//! while let Some(f) = frame(&input, 1 << 20).expect("a sane length") {
//!     let msg = input.split_to(f.len); // forward `msg` as is, or decode it:
//!     if let Ok(Message::ReadyForQuery(status)) = backend::parse(&msg) {
//!         idle = status == TxStatus::Idle; // a transaction pooler may release the server here
//!     }
//! }
//! assert!(idle);
//! assert_eq!(&input[..], b"Z\0\0"); // waits for the rest
//! ```
#![deny(missing_docs)]

pub mod auth;
pub mod backend;
pub mod client;
pub mod frontend;
pub mod message;
pub mod server;
pub mod sql;
