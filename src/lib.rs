//! eventline: a message broker that speaks the NATS client protocol.
//!
//! # Layout
//! Arrows point down only: each layer uses the ones below it, never above (see
//! ARCHITECTURE.md for the threads and the paths through them).
//! - [`server`]: the tokio accept loop; per connection a reader task (bytes -> ops) and a
//!   writer task (queued bytes -> coalesced socket writes). Nothing else.
//! - [`broker`]: the service's state machine: sessions, subscriptions, routing, the
//!   byte-bounded outbound queues, the timeline writer (conditions, group commit, fan-out
//!   after commit, answers) and the log's readers (one cursor each). No sockets, no parsing.
//! - [`protocol`]: the nom parser and the encoder of NATS ops and eventline's extensions,
//!   with every refusal's text. No I/O.
//! - [`store`]: the event log: a write-ahead log in front of fjall, its durability protocol
//!   and checkpoint thread, ranged and indexed reads, the dedup window, the high-water mark.
//!   Synchronous, no network, no protocol.
//! - [`config`]: every setting, grouped, with its default, and every tuning constant.
//! - [`essential`]: the threads whose death stops the server.
//! - [`subject`]: subject validation, wildcard matching and the subscription trie.
//!
//! The load tool (`eventline bench`) and the command-line client (`eventline pub`, `sub`,
//! `fetch`) are modules of the binary, not of this library: they use it as any client would.
#![deny(unsafe_code)]

pub mod broker;
pub mod config;
pub mod essential;
pub mod protocol;
pub mod server;
pub mod store;
pub mod subject;
