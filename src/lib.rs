//! augur: LLM inference on any GPU that wgpu reaches, made fast by speculative decoding.

pub mod bench;
pub mod engine;
pub mod pull;
pub mod error;
pub mod gpu;
pub mod model;

pub use error::{Error, Result};
