//! augur: LLM inference on any GPU that wgpu reaches, made fast by speculative decoding.

pub mod bench;
pub mod chat;
pub mod engine;
pub mod error;
pub mod gpu;
pub mod model;
pub mod pull;
pub mod sampler;
pub mod serve;
pub mod spec;
pub mod stop;
pub mod train;
pub mod util;

pub use error::{Error, Result};
