//! Learning: the draft head, its trainer (WGSL passes with a plain-Rust reference), and the
//! replay buffer of what verification saw, and offline training over a corpus.

pub mod checkpoint;
pub mod gpu;
pub mod guard;
pub mod head;
pub mod offline;
pub mod replay;
