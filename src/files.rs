//! Opening input files safely: only regular files are read, so a FIFO, a device, a directory
//! or a link loop given where a data set or a checkpoint belongs is a clear error naming the
//! path and what it is — never a read that blocks forever (a FIFO with no writer) or that
//! never ends (`/dev/zero`).
//!
//! The file is opened first (with `O_NONBLOCK`, so that opening a FIFO returns at once instead
//! of waiting for a writer) and its type is then taken from the *open descriptor*
//! (`fstat`), not from the path: a path swapped between the check and the open cannot slip
//! a different file past the check. `O_NONBLOCK` has no effect on reads of regular files.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A regular file opened for reading, with its length when it was opened.
#[derive(Debug)]
pub struct InputFile {
    pub file: File,
    /// Bytes in the file (from `fstat` of the open descriptor).
    pub len: u64,
    path: PathBuf,
}

impl InputFile {
    /// Opens `path` (following symbolic links) for reading if it is a regular file. The error
    /// ([`Error::File`], naming the path) says what it is otherwise: missing, a directory, a
    /// FIFO, a character or block device, a socket, a symbolic link loop, unreadable.
    pub fn open(path: &Path) -> Result<InputFile> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NONBLOCK);
        }
        let file = options.open(path).map_err(|e| Error::file(path, open_failure(&e)))?;
        let meta = file.metadata().map_err(|e| Error::file(path, format!("cannot stat: {e}")))?;
        if !meta.is_file() {
            return Err(Error::file(path, format!("is {}, not a regular file", kind(&meta.file_type()))));
        }
        Ok(InputFile { file, len: meta.len(), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An [`Error::File`] naming this file.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::file(&self.path, message.into())
    }

    /// Reads the whole file: exactly [`InputFile::len`] bytes, into a buffer reserved with
    /// `try_reserve_exact` (an allocation failure is an error, not an abort). A file that
    /// shrank or grew since it was opened is an error rather than a silently different read.
    /// Callers check `len` against their format (and the memory they have) first.
    pub fn read_all(mut self) -> Result<Vec<u8>> {
        let len = usize::try_from(self.len).map_err(|_| self.error("is too large to read into memory"))?;
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(len)
            .map_err(|_| self.error(format!("cannot allocate {len} bytes to read it")))?;
        // One byte more than expected reveals a file that grew.
        let read = (&mut self.file)
            .take(self.len + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.error(format!("cannot read: {e}")))?;
        if read != len {
            return Err(self.error(format!("changed size while being read ({len} bytes when opened)")));
        }
        Ok(bytes)
    }
}

/// Checks that `path` is a directory (following links), with the same kind of error as
/// [`InputFile::open`] otherwise. Only `stat`s the path: nothing is opened, so a FIFO cannot
/// block.
pub fn require_dir(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::file(path, open_failure(&e)))?;
    if !meta.is_dir() {
        return Err(Error::file(path, format!("is {}, not a directory", kind(&meta.file_type()))));
    }
    Ok(())
}

/// Checks, before any work starts, that `path` can be written as the output file `what` (a
/// flag, e.g. `--log`), creating nothing: an existing file must be a regular file that opens
/// for writing (a log is locked and truncated, which a device is not; `/dev/full` would fail
/// only when written), a new one needs an existing directory this process may write in.
pub fn check_output_file(path: &Path, what: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(Error::file(path, format!("is not a regular file ({what})"))),
        Ok(_) => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| Error::file(path, format!("cannot write ({what}): {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if !parent.is_dir() {
                return Err(Error::file(
                    path,
                    format!("cannot create ({what}): {} is not a directory", parent.display()),
                ));
            }
            if !dir_is_writable(parent) {
                return Err(Error::file(
                    path,
                    format!("cannot create ({what}): {} is not writable", parent.display()),
                ));
            }
            Ok(())
        }
        Err(e) => Err(Error::file(path, format!("cannot use ({what}): {e}"))),
    }
}

/// Whether this process can create files in `dir`, found out by creating and removing a probe
/// file: permission bits and access(2) do not tell (root passes them, yet sysfs refuses new
/// files), so only trying does. Nothing is left behind.
fn dir_is_writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".densenet-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(f) => {
            drop(f);
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

/// Why `open` failed, in words (the OS's own text for the rare cases).
fn open_failure(e: &std::io::Error) -> String {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return "is a symbolic link loop (too many levels of symbolic links)".into();
    }
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ENXIO) {
        // open(2) of a socket, or of a device with no driver behind it.
        return "is a socket or a device that cannot be opened, not a regular file".into();
    }
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        std::io::ErrorKind::PermissionDenied => "cannot open: permission denied".into(),
        _ => format!("cannot open: {e}"),
    }
}

/// "a directory", "a FIFO (named pipe)", ... for a file type that is not a regular file.
fn kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "of an unknown kind"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(path: &Path) -> String {
        InputFile::open(path).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn regular_files_open_with_their_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seven.bin");
        std::fs::write(&path, b"1234567").unwrap();
        let f = InputFile::open(&path).unwrap();
        assert_eq!(f.len, 7);
        assert_eq!(f.read_all().unwrap(), b"1234567");
    }

    #[cfg(unix)]
    #[test]
    fn other_kinds_are_named_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(message(&fifo).contains("is a FIFO (named pipe), not a regular file"), "{}", message(&fifo));
        assert!(message(dir.path()).contains("is a directory"));
        assert!(message(Path::new("/dev/zero")).contains("is a character device"));
        let missing = dir.path().join("missing");
        assert!(message(&missing).ends_with(": does not exist"), "{}", message(&missing));
        assert!(message(&missing).starts_with(&missing.display().to_string()));
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(message(&a).contains("symbolic link loop"), "{}", message(&a));
        // A link to a device is judged by what it points to.
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(message(&zero).contains("is a character device"));
        assert!(require_dir(dir.path()).is_ok());
        let e = require_dir(&fifo).unwrap_err().to_string();
        assert!(e.ends_with("is a FIFO (named pipe), not a directory"), "{e}");
        assert!(require_dir(&missing).unwrap_err().to_string().ends_with("does not exist"));
    }
}
