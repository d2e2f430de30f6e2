//! Watching the files a config was read from: its own, and those it reads (`file:` secrets,
//! keys and URLs, the TLS certificate, key and client CA), so an edited ConfigMap, a
//! Kubernetes Secret updated in place or a renewed certificate is taken up without a `SIGHUP`.
//!
//! Files are compared by a digest of their content, not by modification time: a Secret
//! volume's update is a symlink swap (`..data`), which leaves the file's own path and times
//! as they were. Only digests are kept, never the content, so the watcher holds no copy of a
//! secret. The baseline is the digest of what validation read, not a second read after it,
//! so a change that lands while a reload runs is not lost. A change is acted on once it has
//! held for one more poll, file by file: a certificate and its key copied over one after the
//! other would otherwise be read half-way (the new certificate with the old key), refused, and
//! counted as a failed reload; and a file that changes at every poll (a token another sidecar
//! refreshes) does not hold back a change to the others.
//!
//! The polls run on a thread of their own ([`Watcher`]): a read that hangs (a stuck network
//! mount) holds up only the watching, never the signals `serve` answers. Only regular files
//! are read (a FIFO named by mistake would block and lose its data), at most
//! [`MAX_READ`] bytes of each.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// What a file held: the digest of its content, or `None` when it could not be read.
pub type Seen = Option<[u8; 32]>;

/// Files a config was read from, each with what it held then.
pub type Files = Vec<(PathBuf, Seen)>;

/// The digest [`Watch`] compares, of content read whole.
pub fn seen(content: &[u8]) -> Seen {
    Some(Sha256::digest(content).into())
}

/// Largest file a config may name (its own included): a secret, key, URL or certificate
/// bundle is far smaller.
pub const MAX_READ: u64 = 16 << 20;

/// Reads a file a config names, as validation and the watcher both do: a regular file of at
/// most [`MAX_READ`] bytes (a FIFO named by mistake would block the read, and a device never
/// end it).
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::OpenOptionsExt;
    // `InvalidInput` is kept for "not a regular file" (`digest` tells it apart).
    // Opened without blocking (a FIFO's open waits for a writer) and checked on the handle, so
    // a FIFO swapped in after a check by path cannot block either.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_READ + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_READ {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_READ >> 20),
        ));
    }
    Ok(bytes)
}

/// What the file holds now; `Err` when it is there but not a regular file (not read: the
/// read could block).
fn digest(path: &Path) -> Result<Seen, ()> {
    match read_file(path) {
        Ok(bytes) => Ok(seen(&bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Err(()),
        Err(_) => Ok(None),
    }
}

#[derive(Debug, Default)]
struct File {
    path: PathBuf,
    /// What it held when the running config was read (or when last acted on).
    seen: Seen,
    /// What it held at the last poll, when that differed from `seen`.
    settling: Option<Seen>,
}

#[derive(Debug, Default)]
pub struct Watch {
    files: Vec<File>,
}

impl Watch {
    /// Watches `files` from what they held when the config was read from them.
    pub fn new(files: Files) -> Watch {
        Watch {
            files: files
                .into_iter()
                .map(|(path, seen)| File {
                    path,
                    seen,
                    settling: None,
                })
                .collect(),
        }
    }

    /// Reads the files again. Returns those whose change since they were seen has held for a
    /// poll (they then count as seen), in the order given; empty otherwise.
    pub fn poll(&mut self) -> Vec<PathBuf> {
        let mut changed = Vec::new();
        for f in &mut self.files {
            let Ok(now) = digest(&f.path) else { continue };
            if now == f.seen {
                f.settling = None;
            } else if f.settling == Some(now) {
                f.seen = now;
                f.settling = None;
                changed.push(f.path.clone());
            } else {
                f.settling = Some(now);
            }
        }
        changed
    }
}

/// The watching thread. Dropping it (with the receiver of its changes) ends the thread at
/// its next poll.
pub struct Watcher {
    /// After a reload: the files to watch from what it read, numbered.
    resets: mpsc::Sender<(u64, Files)>,
    generation: u64,
}

/// Files that changed, found while watching the files of reset `generation` (0: the start's).
pub struct Changed {
    pub generation: u64,
    pub files: Vec<PathBuf>,
}

impl Watcher {
    /// Polls `files` every `every` on a thread of its own; each change is sent on the
    /// returned channel (the files that changed).
    pub fn spawn(
        files: Files,
        every: Duration,
    ) -> std::io::Result<(Watcher, tokio::sync::mpsc::UnboundedReceiver<Changed>)> {
        let (resets, reset_rx) = mpsc::channel();
        let (changes, changes_rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("hookgate-watch".into())
            .spawn(move || {
                let (mut watch, mut generation) = (Watch::new(files), 0);
                let mut next = Instant::now() + every;
                loop {
                    match reset_rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                        Ok((g, files)) => (watch, generation) = (Watch::new(files), g),
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            next = Instant::now() + every;
                            let files = watch.poll();
                            if !files.is_empty()
                                && changes.send(Changed { generation, files }).is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok((
            Watcher {
                resets,
                generation: 0,
            },
            changes_rx,
        ))
    }

    /// After a reload (taken or refused): watch `files` from what it read. Changes found
    /// before this are stale from now on ([`Watcher::current`]).
    pub fn reset(&mut self, files: Files) {
        self.generation += 1;
        let _ = self.resets.send((self.generation, files));
    }

    /// Whether a change was found since the last reset: an older one was read by that
    /// reload already (acting on it would reload a second time for one change).
    pub fn current(&self, changed: &Changed) -> bool {
        changed.generation == self.generation
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(path: &Path) -> (PathBuf, Seen) {
        (path.to_path_buf(), digest(path).unwrap())
    }

    #[test]
    fn only_regular_files_up_to_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_file(dir.path()).is_err(), "a directory");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_READ as usize + 1]).unwrap();
        let e = read_file(&big).unwrap_err().to_string();
        assert!(e.contains("larger than 16 MiB"), "{e}");
        std::fs::write(&big, vec![b'x'; MAX_READ as usize]).unwrap();
        assert_eq!(read_file(&big).unwrap().len(), MAX_READ as usize);
    }

    /// A refused config is watched from what it held: one that is not UTF-8 was noted as
    /// unreadable, and every poll took its bytes for a change (a refused reload every 4 s).
    #[test]
    fn a_config_that_is_not_text_is_not_a_change_at_every_poll() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hookgate.toml");
        std::fs::write(&file, b"[server]\n# caf\xe9\n").unwrap();
        let Err(problems) = crate::config::load(&file) else {
            panic!("loaded")
        };
        assert!(
            problems.errors[0].contains("not UTF-8"),
            "{:?}",
            problems.errors
        );
        let mut w = Watch::new(problems.files);
        assert!(w.poll().is_empty());
        assert!(w.poll().is_empty());
    }

    #[test]
    fn a_change_is_reported_once_it_held_for_a_poll() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "key").unwrap();
        let mut w = Watch::new(vec![read(&a), read(&b)]);
        assert!(w.poll().is_empty(), "nothing changed");

        std::fs::write(&a, "two").unwrap();
        assert!(w.poll().is_empty(), "first seen: may be half-way");
        assert_eq!(w.poll(), vec![a.clone()], "held for a poll");
        assert!(w.poll().is_empty(), "reported once");

        // Changed again before it settled: waits for the content to hold.
        std::fs::write(&a, "three").unwrap();
        assert!(w.poll().is_empty());
        std::fs::write(&a, "four").unwrap();
        assert!(w.poll().is_empty());
        assert_eq!(w.poll(), vec![a.clone()]);

        // Changed and changed back before it settled: nothing to do.
        std::fs::write(&b, "other").unwrap();
        assert!(w.poll().is_empty());
        std::fs::write(&b, "key").unwrap();
        assert!(w.poll().is_empty());
        assert!(w.poll().is_empty());

        // A file that goes away is a change too (the reload then names what is missing).
        std::fs::remove_file(&b).unwrap();
        assert!(w.poll().is_empty());
        assert_eq!(w.poll(), vec![b.clone()]);
    }

    #[test]
    fn a_file_changing_at_every_poll_does_not_hold_back_another() {
        let dir = tempfile::tempdir().unwrap();
        let (busy, cert) = (dir.path().join("token"), dir.path().join("cert"));
        std::fs::write(&busy, "0").unwrap();
        std::fs::write(&cert, "old").unwrap();
        let mut w = Watch::new(vec![read(&busy), read(&cert)]);
        std::fs::write(&cert, "new").unwrap();
        for i in 1..=3 {
            std::fs::write(&busy, i.to_string()).unwrap();
            let changed = w.poll();
            if i == 2 {
                assert_eq!(changed, vec![cert.clone()], "poll {i}");
            } else {
                assert!(changed.is_empty(), "poll {i}: {changed:?}");
            }
        }
    }

    #[test]
    fn the_baseline_is_what_was_read_not_a_later_read() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "new").unwrap();
        // The config was read while the file held "old"; it changed before the watch began.
        let mut w = Watch::new(vec![(a.clone(), seen(b"old"))]);
        assert!(w.poll().is_empty());
        assert_eq!(w.poll(), vec![a.clone()], "not lost");
    }

    #[test]
    fn a_symlink_swap_is_a_change() {
        // A Kubernetes Secret volume: key -> ..data/key, ..data -> ..<timestamp>.
        let dir = tempfile::tempdir().unwrap();
        let (v1, v2) = (dir.path().join("..2026_1"), dir.path().join("..2026_2"));
        std::fs::create_dir(&v1).unwrap();
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v1.join("secret"), "old").unwrap();
        std::fs::write(v2.join("secret"), "new").unwrap();
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink(&v1, &data).unwrap();
        let file = dir.path().join("secret");
        std::os::unix::fs::symlink(data.join("secret"), &file).unwrap();
        let mut w = Watch::new(vec![read(&file)]);

        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&v2, &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        assert!(w.poll().is_empty());
        assert_eq!(w.poll(), vec![file]);
    }

    #[test]
    fn a_fifo_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let mut w = Watch::new(vec![(fifo.clone(), seen(b"x"))]);
        // Would block for good if it were opened for reading.
        assert!(w.poll().is_empty());
        assert!(w.poll().is_empty());
        // Nor by validation: opened without blocking, refused on the handle.
        let e = read_file(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
