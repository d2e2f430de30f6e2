//! Watching the files a config reads besides its own (`file:` secrets and URLs, the TLS
//! certificate, key and client CA), so a Kubernetes Secret updated in place or a renewed
//! certificate is taken up without a `SIGHUP`.
//!
//! Files are compared by a digest of their content, not by modification time: a Secret
//! volume's update is a symlink swap (`..data`), which leaves the file's own path and times
//! as they were. Only digests are kept, never the content, so the watcher holds no copy of a
//! secret. A change is acted on once it has held for one more poll: a certificate and its key
//! copied over one after the other would otherwise be read half-way (the new certificate
//! with the old key), refused, and counted as a failed reload.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What a file held at a poll: the digest of its content, or `None` when it could not be read.
type Seen = Option<[u8; 32]>;

fn digest(path: &Path) -> Seen {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

#[derive(Debug, Default)]
pub struct Watch {
    files: Vec<PathBuf>,
    /// What each file held when the running config was loaded (or last acted on).
    seen: Vec<Seen>,
    /// What they held at the last poll, when that differed from `seen`: acted on once a poll
    /// finds the same again.
    settling: Option<Vec<Seen>>,
}

impl Watch {
    /// Watches `files` from what they hold now (the config just loaded from them).
    pub fn new(files: Vec<PathBuf>) -> Watch {
        let seen = files.iter().map(|f| digest(f)).collect();
        Watch {
            files,
            seen,
            settling: None,
        }
    }

    /// Reads the files again. Returns the ones that changed since the config was loaded, once
    /// the change has held for a poll (then they count as seen: a reload that refuses the new
    /// content is not tried again until they change again); empty otherwise.
    pub fn poll(&mut self) -> Vec<PathBuf> {
        let now: Vec<Seen> = self.files.iter().map(|f| digest(f)).collect();
        if now == self.seen {
            self.settling = None;
            return Vec::new();
        }
        if self.settling.as_ref() != Some(&now) {
            self.settling = Some(now);
            return Vec::new();
        }
        let changed = self
            .files
            .iter()
            .zip(self.seen.iter().zip(&now))
            .filter(|(_, (was, is))| was != is)
            .map(|(f, _)| f.clone())
            .collect();
        self.seen = now;
        self.settling = None;
        changed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_change_is_reported_once_it_held_for_a_poll() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "key").unwrap();
        let mut w = Watch::new(vec![a.clone(), b.clone()]);
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
        let mut w = Watch::new(vec![file.clone()]);

        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&v2, &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        assert!(w.poll().is_empty());
        assert_eq!(w.poll(), vec![file]);
    }
}
