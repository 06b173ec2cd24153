//! augur: LLM inference on any GPU that wgpu reaches, made fast by speculative decoding.

pub mod error;
pub mod gpu;
pub mod model;

pub use error::{Error, Result};
