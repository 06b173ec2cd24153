//! One error type for the whole engine. Every message is a single line that says what went wrong
//! and what to do about it, because the CLI prints it as-is.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Msg(String),
    #[error("{path}: {source} (check the path and its permissions)")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid GGUF file: {why} (re-download it with `augur pull`)")]
    BadGguf { path: String, why: String },
    #[error(
        "no GPU adapter found ({0}); install a Vulkan driver, e.g. `bash scripts/setup-lavapipe.sh` for Mesa's lavapipe"
    )]
    NoAdapter(String),
    #[error("GPU error: {0}")]
    Gpu(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
}

/// `bail!("...")` returns an `Error::Msg` built with `format!`.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::error::Error::Msg(format!($($t)*))) };
}
