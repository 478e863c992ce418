//! # ferry-resp: sans-IO Redis RESP2/RESP3
//!
//! [`ServerConnection`] and [`ClientConnection`] are state machines over bytes: feed them what
//! you read, they hand you events and bytes to write. No socket, thread or clock inside, so
//! they run in any event loop (Ferry's epoll/io_uring drivers, a blocking thread, a test).
//!
//! ## Embedding: a blocking server loop over a std socket
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::sync::Arc;
//! use bytes::BytesMut;
//! use ferry_proto::{Connection, Instant};
//! use ferry_resp::{server::Event, ServerConfig, ServerConnection, Value};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let config = Arc::new(ServerConfig::default());
//! let start = std::time::Instant::now();
//! let now = || Instant::from_nanos(start.elapsed().as_nanos() as u64);
//! let (mut stream, _) = listener.accept().unwrap();
//! let mut conn = ServerConnection::new(config, now());
//! let mut input = BytesMut::with_capacity(16 * 1024);
//! let mut chunk = [0u8; 16 * 1024];
//! loop {
//!     // 1. Feed what the socket gave us (errors are answered on the wire, then it closes).
//!     let _ = conn.handle_input(now(), &mut input);
//!     // 2. Execute commands; replies may be sent in any order, they leave in command order.
//!     while let Some(ev) = conn.poll_event() {
//!         if let Event::Command(cmd) = ev {
//!             let reply = if cmd.is("ping") { Value::simple("PONG") } else { Value::ok() };
//!             conn.send_reply(cmd.id, &reply).unwrap();
//!         }
//!     }
//!     // 3. Write everything queued.
//!     while let Some(bytes) = conn.poll_transmit() {
//!         stream.write_all(&bytes).unwrap();
//!     }
//!     if conn.is_closed() {
//!         break;
//!     }
//!     // 4. Read more (a real driver also arms a timer from `poll_timeout`).
//!     match stream.read(&mut chunk) {
//!         Ok(0) | Err(_) => conn.handle_eof(now()),
//!         Ok(n) => input.extend_from_slice(&chunk[..n]),
//!     }
//! }
//! ```
//!
//! `ferry-kv`'s `examples/redis_server.rs` is the complete version (pub/sub routing, HELLO,
//! a shared store).
//!
//! ## Pieces
//!
//! - [`Value`]: every RESP2 and RESP3 type, payloads as zero-copy [`Bytes`].
//! - [`parse()`] / [`parse::parse_buf`]: the streaming parser (`Ok(None)` = need more bytes,
//!   never an error), including streamed strings (`$?` + `;` chunks) and streamed aggregates
//!   (`*?` … `.`), with [`Limits`] on bulk length, aggregate length, nesting depth and lines.
//!   [`parse::frame_len_resume`] measures a frame arriving over many reads resumably (each
//!   byte examined about once; [`ClientConnection`] uses it, [`parse::parse_buf_resume`]
//!   wraps it).
//! - [`encode()`]: writes a value for a RESP2 or RESP3 peer straight into a `BytesMut`
//!   (RESP3 types downgraded for RESP2 like Redis does).
//! - [`server`]: commands (multibulk or inline, Redis's limits and exact error texts), pipelined
//!   replies in order even when produced out of order, `HELLO`, pub/sub mode, `QUIT`, `RESET`.
//!   Its module docs say which commands the connection answers itself.
//! - [`client`]: pipelining with a correlation queue, push frames apart from replies, pub/sub,
//!   `HELLO` with `AUTH`, `MULTI`/`EXEC` transactions.
//!
//! Limits (all in [`ServerConfig`]): `proto_max_bulk_len` (512 MiB, "invalid bulk length"),
//! `max_multibulk_len` (`INT_MAX` as in Redis 7, "invalid multibulk length"),
//! `max_inline_size` (64 KiB: "too big inline request", "too big mbulk count string",
//! "too big bulk count string"), `max_query_buffer` (1 GiB, silent close); the client's
//! [`Limits`] also bound nesting depth.
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod client;
mod command;
mod encode;
mod error;
pub mod parse;
mod scan;
pub mod server;
mod value;

pub use bytes::Bytes;
pub use client::{ClientConfig, ClientConnection, RequestId};
pub use command::{split_args, Command, CommandId, Hello, INLINE_ARGS};
pub use encode::{encode, encode_command, encoded_len};
pub use error::{Error, ParseError, SendError};
pub use parse::{parse, Limits};
pub use server::{wrong_args, ServerConfig, ServerConnection, SubKind};
pub use value::{write_double, Protocol, Value};
