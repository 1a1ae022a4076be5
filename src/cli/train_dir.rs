//! What `densenet train` owns on disk while it runs: the checkpoint directory, under an
//! exclusive lock so that two runs never share it, and the JSONL log, kept in step with the
//! checkpoint.

use densenet::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The file in the checkpoint directory naming the process that holds its lock. The lock
/// itself is on the directory: a stale file from a killed run locks nothing.
const PID_FILE: &str = ".lock";

/// A checkpoint directory locked by this process (`flock` on the directory, released when
/// the process ends, however it ends).
pub struct TrainDir {
    dir: PathBuf,
    _lock: File,
    /// The checkpoint file whose absence, when this is dropped, means the run produced
    /// nothing: a directory this run created is then removed again.
    checkpoint: PathBuf,
    created: bool,
}

impl TrainDir {
    /// Locks `dir` if it exists (`None` if it does not yet).
    pub fn lock_existing(dir: &Path, checkpoint: &Path) -> Result<Option<TrainDir>> {
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::file(dir, format!("cannot use as the checkpoint directory: {e}"))),
            Ok(m) if !m.is_dir() => Err(Error::file(dir, "is not a directory (--checkpoint-dir)")),
            Ok(_) => TrainDir::lock(dir, checkpoint, false).map(Some),
        }
    }

    /// Creates `dir` (and its parents) and locks it.
    pub fn create(dir: &Path, checkpoint: &Path) -> Result<TrainDir> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
        TrainDir::lock(dir, checkpoint, true)
    }

    fn lock(dir: &Path, checkpoint: &Path, created: bool) -> Result<TrainDir> {
        let lock = File::open(dir).map_err(|e| Error::file(dir, format!("cannot open: {e}")))?;
        let owner =
            TrainDir { dir: dir.to_path_buf(), _lock: lock, checkpoint: checkpoint.to_path_buf(), created };
        // fs4's, not std's inherent `File::try_lock` (Rust 1.89, newer than rust-version).
        match fs4::FileExt::try_lock(&owner._lock) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                let holder = match read_pid(&dir.join(PID_FILE)) {
                    Some(pid) => format!("process {pid}"),
                    None => "another process".into(),
                };
                return Err(Error::file(
                    dir,
                    format!(
                        "is locked by {holder}: another `densenet train` is using this checkpoint directory"
                    ),
                ));
            }
            Err(fs4::TryLockError::Error(e)) => return Err(Error::file(dir, format!("cannot lock: {e}"))),
        }
        // Writing the PID file is also the proof that the directory is writable, before
        // any training is done.
        let pid_file = dir.join(PID_FILE);
        std::fs::write(&pid_file, format!("{}\n", std::process::id()))
            .map_err(|e| Error::file(&pid_file, format!("cannot write: {e}")))?;
        Ok(owner)
    }
}

impl Drop for TrainDir {
    fn drop(&mut self) {
        if self.created && !self.checkpoint.exists() {
            // Best effort: a rejected or failed run leaves no empty directory behind, but a
            // directory something else wrote into stays (remove_dir fails on it).
            let _ = std::fs::remove_file(self.dir.join(PID_FILE));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// The PID in a lock's PID file, if it holds one.
fn read_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(path).ok()?.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The JSONL log: one line per epoch, each flushed to disk before the checkpoint of its
/// epoch is renamed into place, and locked against a second writer.
pub struct Log {
    file: File,
    path: PathBuf,
}

impl Log {
    /// Opens the log keeping the lines of epochs `1..=keep` (a fresh run keeps none): lines
    /// past the checkpoint's epoch belong to a run killed between its log line and its
    /// checkpoint's rename, or to a partial line, and are dropped.
    pub fn open(path: &Path, keep: usize) -> Result<Log> {
        let err = |e: std::io::Error| Error::file(path, format!("cannot write: {e}"));
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(err)?;
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(Error::file(path, "is locked: another `densenet train` writes to this log"));
            }
            Err(fs4::TryLockError::Error(e)) => return Err(Error::file(path, format!("cannot lock: {e}"))),
        }
        let mut text = Vec::new();
        if keep > 0 {
            file.read_to_end(&mut text).map_err(err)?;
        }
        let end = kept_prefix(&text, keep);
        file.set_len(end as u64).map_err(err)?;
        file.seek(SeekFrom::End(0)).map_err(err)?;
        file.sync_all().map_err(err)?;
        Ok(Log { file, path: path.to_path_buf() })
    }

    /// Appends one line and flushes it to disk.
    pub fn append(&mut self, line: &str) -> Result<()> {
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::file(&self.path, format!("cannot write: {e}")))
    }
}

/// Length of the leading complete lines of `text` whose `epoch` is at most `keep`.
fn kept_prefix(text: &[u8], keep: usize) -> usize {
    let mut end = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let epoch =
            serde_json::from_slice::<serde_json::Value>(line).ok().and_then(|v| v.get("epoch")?.as_u64());
        match epoch {
            Some(e) if line.ends_with(b"\n") && e as usize <= keep => end += line.len(),
            _ => break,
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::kept_prefix;

    #[test]
    fn the_log_keeps_complete_lines_up_to_the_checkpoints_epoch() {
        let text = b"{\"epoch\":1}\n{\"epoch\":2}\n{\"epoch\":3}\n{\"epo";
        assert_eq!(kept_prefix(text, 2), 24);
        assert_eq!(kept_prefix(text, 3), 36);
        assert_eq!(kept_prefix(text, 9), 36, "a partial last line goes");
        assert_eq!(kept_prefix(text, 0), 0);
        assert_eq!(kept_prefix(b"garbage\n{\"epoch\":1}\n", 5), 0);
    }
}
