//! `bindings.localstorage`: files under `rootPath`.
//!
//! Operations (metadata `fileName`): `create` (a new UUID name when none is given; a quoted
//! JSON string is unquoted and base64 text decoded, as daprd does; answers
//! `{"fileName": ...}`), `get` (the file's bytes), `list` (the files under `fileName` or the
//! root, recursively, as a JSON array of paths), `delete`. Names cannot escape the root:
//! `..` and absolute paths are resolved inside it.

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tandem_components::bindings::{InvokeRequest, InvokeResponse, OutputBinding};
use tandem_components::{Error, Metadata, Result};

/// A `bindings.localstorage` component.
#[derive(Debug)]
pub struct LocalStorageBinding {
    root: PathBuf,
}

const DISALLOWED: [&str; 6] = ["/proc", "/sys", "/dev", "/boot", "/etc", "/bin"];

impl LocalStorageBinding {
    /// Reads `rootPath` (created if missing).
    pub async fn build(meta: &Metadata) -> Result<Self> {
        let root = meta
            .get("rootPath")
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| {
                Error::invalid_metadata("rootPath", "property rootPath must not be empty")
            })?;
        let mut root = PathBuf::from(root);
        if root.is_relative() {
            root = std::env::current_dir().map_err(Error::backend)?.join(root);
        }
        let root = normalize(&root);
        if root == Path::new("/")
            || DISALLOWED
                .iter()
                .any(|d| root == Path::new(d) || root.starts_with(d))
        {
            return Err(Error::invalid_metadata(
                "rootPath",
                "property rootPath points to a disallowed location",
            ));
        }
        tokio::fs::create_dir_all(&root).await.map_err(|e| {
            Error::invalid_metadata("rootPath", format!("unable to create the directory: {e}"))
        })?;
        Ok(Self { root })
    }

    /// `fileName` resolved inside the root (never outside it).
    fn resolve(&self, name: &str) -> (PathBuf, String) {
        let mut rel = PathBuf::new();
        for c in Path::new(name).components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::ParentDir => {
                    rel.pop();
                }
                _ => {}
            }
        }
        let shown = rel.to_string_lossy().into_owned();
        (
            self.root.join(&rel),
            if shown.is_empty() { ".".into() } else { shown },
        )
    }
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn decode_standard(text: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn walk(dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

#[async_trait]
impl OutputBinding for LocalStorageBinding {
    fn operations(&self) -> &'static [&'static str] {
        &["create", "get", "list", "delete"]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse> {
        let name = req.metadata.get("fileName").cloned().unwrap_or_default();
        match req.operation.as_str() {
            "create" => {
                let name = if name.is_empty() {
                    uuid::Uuid::new_v4().to_string()
                } else {
                    name
                };
                let (path, rel) = self.resolve(&name);
                let mut data = req.data.to_vec();
                if let Ok(serde_json::Value::String(s)) = serde_json::from_slice(&data) {
                    data = s.into_bytes();
                }
                if let Some(decoded) = decode_standard(&data) {
                    data = decoded;
                }
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir).await.map_err(|e| {
                        Error::backend(format!("error creating directory for {rel}: {e}"))
                    })?;
                }
                tokio::fs::write(&path, &data)
                    .await
                    .map_err(|e| Error::backend(format!("error writing file {rel}: {e}")))?;
                Ok(InvokeResponse {
                    data: Some(Bytes::from(
                        serde_json::to_vec(&serde_json::json!({ "fileName": rel }))
                            .unwrap_or_default(),
                    )),
                    ..Default::default()
                })
            }
            "get" => {
                let (path, rel) = self.resolve(&name);
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(InvokeResponse {
                        data: Some(Bytes::from(bytes)),
                        ..Default::default()
                    }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(Error::NotFound(format!("file not found: {rel}")))
                    }
                    Err(e) => Err(Error::backend(format!("error reading file {rel}: {e}"))),
                }
            }
            "list" => {
                let (path, rel) = self.resolve(&name);
                let files = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    walk(&path, &mut out).map(|()| {
                        out.sort();
                        out
                    })
                })
                .await
                .map_err(Error::backend)?
                .map_err(|e| Error::backend(format!("error listing {rel}: {e}")))?;
                Ok(InvokeResponse {
                    data: Some(Bytes::from(serde_json::to_vec(&files).unwrap_or_default())),
                    ..Default::default()
                })
            }
            "delete" => {
                let (path, rel) = self.resolve(&name);
                tokio::fs::remove_file(&path)
                    .await
                    .map_err(|e| Error::backend(format!("error deleting file {rel}: {e}")))?;
                Ok(InvokeResponse::default())
            }
            other => Err(Error::InvalidRequest(format!(
                "unsupported operation {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn req(op: &str, file: Option<&str>, data: &[u8]) -> InvokeRequest {
        InvokeRequest {
            operation: op.into(),
            data: Bytes::copy_from_slice(data),
            metadata: file
                .map(|f| HashMap::from([("fileName".to_owned(), f.to_owned())]))
                .unwrap_or_default(),
        }
    }

    #[tokio::test]
    async fn create_get_list_delete_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = Metadata::new("files", "app");
        meta.insert("rootPath", dir.path().join("root").to_string_lossy());
        let b = LocalStorageBinding::build(&meta).await.unwrap();

        // A JSON string is unquoted; base64 text is decoded.
        let r = b
            .invoke(req("create", Some("a/b.txt"), br#""hello""#))
            .await
            .unwrap();
        assert_eq!(r.data.unwrap().as_ref(), br#"{"fileName":"a/b.txt"}"#);
        let got = b.invoke(req("get", Some("a/b.txt"), b"")).await.unwrap();
        assert_eq!(got.data.unwrap().as_ref(), b"hello");
        b.invoke(req("create", Some("bin"), br#""AAEC""#))
            .await
            .unwrap();
        let got = b.invoke(req("get", Some("bin"), b"")).await.unwrap();
        assert_eq!(got.data.unwrap().as_ref(), &[0, 1, 2]);

        // No name: a UUID.
        let r = b.invoke(req("create", None, br#"{"x":1}"#)).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.data.unwrap()).unwrap();
        assert_eq!(v["fileName"].as_str().unwrap().len(), 36);

        // `..` cannot leave the root.
        b.invoke(req("create", Some("../../escape"), b"1"))
            .await
            .unwrap();
        assert!(!dir.path().join("escape").exists());
        assert!(dir.path().join("root/escape").exists());

        let list = b.invoke(req("list", None, b"")).await.unwrap();
        let files: Vec<String> = serde_json::from_slice(&list.data.unwrap()).unwrap();
        assert_eq!(files.len(), 4, "{files:?}");

        b.invoke(req("delete", Some("a/b.txt"), b"")).await.unwrap();
        let err = b
            .invoke(req("get", Some("a/b.txt"), b""))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("file not found"), "{err}");
    }

    #[tokio::test]
    async fn disallowed_roots() {
        for root in ["/", "/etc/x", "/proc"] {
            let mut meta = Metadata::new("files", "app");
            meta.insert("rootPath", root);
            assert!(LocalStorageBinding::build(&meta).await.is_err(), "{root}");
        }
        let meta = Metadata::new("files", "app");
        assert!(LocalStorageBinding::build(&meta).await.is_err());
    }

    #[test]
    fn base64() {
        assert_eq!(decode_standard(b"aGk=").unwrap(), b"hi");
        assert_eq!(decode_standard(b"aGVsbG8=").unwrap(), b"hello");
        assert!(decode_standard(b"hello").is_none());
        assert!(decode_standard(b"a=bc").is_none());
    }
}
