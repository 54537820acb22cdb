//! The Vault token: fixed (`vaultToken`) or read from a file (`vaultTokenMountPath`).
//!
//! A token file is rotated by whoever mounts it (a Kubernetes projected volume, Vault Agent),
//! so it is read again when it changes. Nothing polls: a request that finds the last look at
//! the file older than [`CHECK_EVERY`] starts a background look (the request itself goes on
//! with the token it has), and a `403` from Vault makes the request re-read the file at once
//! and retry once when the token there is different.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderValue;
use tandem_components::{Error, Result};

use crate::metadata::TokenSource;

/// How stale the last look at a token file may be before a request triggers another.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies one version of the token file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

struct Loaded {
    value: HeaderValue,
    stamp: Option<Stamp>,
}

/// The token a component sends.
pub(crate) struct Token {
    current: ArcSwap<Loaded>,
    file: Option<PathBuf>,
    origin: Instant,
    /// Milliseconds after `origin` of the last look at the file.
    checked: AtomicU64,
}

impl Token {
    /// Reads the token (from its file, if it has one).
    pub(crate) async fn new(source: &TokenSource) -> Result<Arc<Self>> {
        let (loaded, file) = match source {
            TokenSource::Inline(t) => (
                Loaded {
                    value: header(t.trim()).ok_or_else(|| {
                        Error::invalid_metadata("vaultToken", "not a valid header value")
                    })?,
                    stamp: None,
                },
                None,
            ),
            TokenSource::File(path) => (read(path).await?, Some(path.clone())),
        };
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(loaded),
            file,
            origin: Instant::now(),
            checked: AtomicU64::new(0),
        }))
    }

    /// The token to send now.
    pub(crate) fn current(&self) -> HeaderValue {
        self.current.load().value.clone()
    }

    /// Starts a background look at the token file when the last one is older than
    /// [`CHECK_EVERY`]; at most one look runs at a time.
    pub(crate) fn check_soon(self: &Arc<Self>) {
        let Some(path) = &self.file else {
            return;
        };
        let now = self.origin.elapsed().as_millis() as u64;
        let last = self.checked.load(Ordering::Relaxed);
        if now.saturating_sub(last) < CHECK_EVERY.as_millis() as u64
            || self
                .checked
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let this = self.clone();
        let path = path.clone();
        tokio::spawn(async move {
            let Ok(meta) = tokio::fs::metadata(&path).await else {
                return;
            };
            if Some(stamp_of(&meta)) != this.current.load().stamp {
                this.replace(&path).await;
            }
        });
    }

    /// Re-reads the token file after `used` was refused; `true` when the file now holds a
    /// different token, worth one retry.
    pub(crate) async fn reload(&self, used: &HeaderValue) -> bool {
        let Some(path) = &self.file else {
            return false;
        };
        self.checked
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.replace(path).await;
        self.current.load().value != used
    }

    async fn replace(&self, path: &PathBuf) {
        match read(path).await {
            Ok(loaded) => {
                if loaded.value != self.current.load().value {
                    tracing::info!(file = %path.display(), "vault token file changed; using the new token");
                }
                self.current.store(Arc::new(loaded));
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the vault token file; keeping the previous token");
            }
        }
    }
}

fn stamp_of(meta: &std::fs::Metadata) -> Stamp {
    Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    }
}

fn header(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::try_from(token).ok()?;
    value.set_sensitive(true);
    Some(value)
}

async fn read(path: &PathBuf) -> Result<Loaded> {
    let unreadable = |e: std::io::Error| {
        Error::invalid_metadata(
            "vaultTokenMountPath",
            format!("cannot read the token file {}: {e}", path.display()),
        )
    };
    let meta = tokio::fs::metadata(path).await.map_err(unreadable)?;
    let text = tokio::fs::read(path).await.map_err(unreadable)?;
    let text = String::from_utf8_lossy(&text);
    let value = header(text.trim()).ok_or_else(|| {
        Error::invalid_metadata(
            "vaultTokenMountPath",
            "the token file does not hold a valid token",
        )
    })?;
    Ok(Loaded {
        value,
        stamp: Some(stamp_of(&meta)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_file_is_picked_up_on_reload_only_when_different() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let token = Token::new(&TokenSource::File(path.clone())).await.unwrap();
        assert_eq!(token.current(), "first");
        let used = token.current();
        assert!(!token.reload(&used).await, "unchanged file: no retry");
        std::fs::write(&path, "  second  ").unwrap();
        assert!(token.reload(&used).await);
        assert_eq!(token.current(), "second");
    }

    #[tokio::test]
    async fn background_check_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one").unwrap();
        let token = Token::new(&TokenSource::File(path.clone())).await.unwrap();
        std::fs::write(&path, "two-longer").unwrap();
        tokio::time::sleep(CHECK_EVERY + Duration::from_millis(50)).await;
        token.check_soon();
        for _ in 0..100 {
            if token.current() == "two-longer" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the new token was not picked up");
    }

    #[tokio::test]
    async fn a_missing_file_names_the_field() {
        let err = match Token::new(&TokenSource::File("/nonexistent/token".into())).await {
            Err(e) => e,
            Ok(_) => panic!("a missing file must fail"),
        };
        assert!(err.to_string().contains("vaultTokenMountPath"), "{err}");
    }

    #[tokio::test]
    async fn inline_tokens_never_reload() {
        let token = Token::new(&TokenSource::Inline("root".into()))
            .await
            .unwrap();
        assert!(!token.reload(&token.current()).await);
        assert!(token.current().is_sensitive());
    }
}
