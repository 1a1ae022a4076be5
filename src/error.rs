//! The crate's typed error. Library code returns `Result<T, Error>`; the binary adds context
//! with `anyhow` and maps configuration errors to exit status 2.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// The network description is unusable (zero growth, empty blocks, image too small, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Two tensors or buffers that must agree in shape do not.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The backend could not provide the bytes asked for.
    #[error("out of memory on {device}: requested {requested} bytes, {free} bytes free")]
    OutOfMemory { device: String, requested: usize, free: usize },
    /// A network, a batch or a data set would need more memory than the device has: refused
    /// before anything is allocated (see [`crate::backend::memory::ensure_fits`]).
    #[error(
        "{what} needs {}, {} available on {device}",
        crate::profile::format_bytes(*needed),
        crate::profile::format_bytes(*available)
    )]
    InsufficientMemory { what: String, device: String, needed: usize, available: usize },
    /// The requested backend cannot run on this machine.
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),
    /// A file could not be read or has the wrong contents.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// Training produced a non-finite loss, parameter or running statistic.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// The observer asked training to stop (a signal, in the CLI) and it stopped at a safe
    /// point: between steps or after a complete save.
    #[error("interrupted by {0}")]
    Interrupted(String),
    /// The CUDA driver reported an error: its `CUresult` (`code`, e.g. 2), the constant's
    /// name (`CUDA_ERROR_OUT_OF_MEMORY`) and the driver's description. Our own fields rather
    /// than cudarc's error type, so that the public API does not expose a dependency.
    #[error("CUDA driver: {name} ({code}): {message}")]
    Driver { code: u32, name: String, message: String },
    /// A CUDA library could not be loaded (cudarc would panic on its first call).
    #[error("{library} not found: the dynamic loader (LD_LIBRARY_PATH, the ld.so cache, /lib, /usr/lib) found none of {}; {hint}", searched.join(", "))]
    MissingLibrary { library: String, searched: Vec<String>, hint: String },
    /// A kernel module could not be compiled or loaded.
    #[error("kernel module `{module}`: {message}")]
    KernelLoad { module: String, message: String },
    /// A kernel could not be launched or broke a CUDA rule (emulator diagnostics).
    #[error("kernel `{kernel}`: {message}")]
    Launch { kernel: String, message: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// [`Error::File`] naming `path`.
    pub fn file(path: &std::path::Path, message: impl Into<String>) -> Error {
        Error::File { path: path.display().to_string(), message: message.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for `Err(Error::Config(..))` with `format!` arguments.
#[macro_export]
macro_rules! config_err {
    ($($arg:tt)*) => { Err($crate::error::Error::Config(format!($($arg)*))) };
}
