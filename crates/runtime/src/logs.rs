//! Replica output: every line a replica prints on stdout or stderr, kept in
//! a size-bounded, rotated file per deployment, readable as a tail and
//! followable live.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use yatai_core::Timestamp;

/// Lines kept in memory per replica, for failure reasons.
const RECENT_LINES: usize = 30;

struct Current {
    file: std::fs::File,
    size: u64,
}

pub struct LogBook {
    dir: PathBuf,
    max_bytes: u64,
    keep: usize,
    current: Mutex<Current>,
    recent: Mutex<HashMap<String, VecDeque<String>>>,
    live: broadcast::Sender<Arc<str>>,
}

impl LogBook {
    /// Opens (appending to) the log in `dir`, rotating at `max_bytes` and
    /// keeping `keep` rotated files.
    pub fn open(dir: &Path, max_bytes: u64, keep: usize) -> std::io::Result<Arc<LogBook>> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("replicas.log");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        let (live, _) = broadcast::channel(1024);
        Ok(Arc::new(LogBook {
            dir: dir.to_owned(),
            max_bytes,
            keep,
            current: Mutex::new(Current { file, size }),
            recent: Mutex::new(HashMap::new()),
            live,
        }))
    }

    fn path(&self, n: usize) -> PathBuf {
        if n == 0 { self.dir.join("replicas.log") } else { self.dir.join(format!("replicas.log.{n}")) }
    }

    /// Appends one line from a replica (`source` is e.g. `r3 stderr`) or
    /// from yatai itself about the deployment.
    pub fn append(&self, replica: &str, source: &str, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        let text = format!("{} {replica} {source} | {line}", Timestamp::now().to_rfc3339());
        {
            let mut recent = self.recent.lock().expect("lock");
            let q = recent.entry(replica.to_owned()).or_default();
            if q.len() == RECENT_LINES {
                q.pop_front();
            }
            q.push_back(line.to_owned());
        }
        {
            let mut cur = self.current.lock().expect("lock");
            if cur.size + text.len() as u64 + 1 > self.max_bytes && cur.size > 0 {
                self.rotate(&mut cur);
            }
            if writeln!(cur.file, "{text}").is_ok() {
                cur.size += text.len() as u64 + 1;
            }
        }
        let _ = self.live.send(Arc::from(text));
    }

    fn rotate(&self, cur: &mut Current) {
        for n in (1..=self.keep).rev() {
            let from = self.path(n - 1);
            if n == self.keep {
                let _ = std::fs::remove_file(self.path(n));
            }
            let _ = std::fs::rename(&from, self.path(n));
        }
        if let Ok(f) = std::fs::OpenOptions::new().create(true).append(true).truncate(false).open(self.path(0)) {
            cur.file = f;
            cur.size = 0;
        }
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let mut lines: VecDeque<String> = VecDeque::new();
        for i in 0..=self.keep {
            if lines.len() >= n {
                break;
            }
            let Ok(text) = std::fs::read_to_string(self.path(i)) else {
                continue;
            };
            for l in text.lines().rev() {
                if lines.len() >= n {
                    break;
                }
                lines.push_front(l.to_owned());
            }
        }
        lines.into()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.live.subscribe()
    }

    /// The last lines a replica printed.
    pub fn recent(&self, replica: &str) -> Vec<String> {
        self.recent.lock().expect("lock").get(replica).map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }
}

impl yatai_core::deploy::LogSource for LogBook {
    fn tail(&self, lines: usize) -> Vec<String> {
        LogBook::tail(self, lines)
    }
    fn follow(&self) -> broadcast::Receiver<Arc<str>> {
        self.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_tails_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let book = LogBook::open(dir.path(), 2_000, 2).unwrap();
        for i in 0..200 {
            book.append("r1", "stdout", &format!("line {i}"));
        }
        let total: u64 = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(total <= 3 * 2_000, "logs grew to {total} bytes");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
        let tail = book.tail(5);
        assert_eq!(tail.len(), 5);
        assert!(tail[4].ends_with("| line 199"), "{tail:?}");
        assert!(tail[0].ends_with("| line 195"), "{tail:?}");
        assert_eq!(book.recent("r1").last().unwrap(), "line 199");
    }

    #[tokio::test]
    async fn followers_see_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let book = LogBook::open(dir.path(), 1 << 20, 2).unwrap();
        let mut rx = book.subscribe();
        book.append("r2", "stderr", "hello");
        let got = rx.recv().await.unwrap();
        assert!(got.ends_with("r2 stderr | hello"), "{got}");
    }
}
