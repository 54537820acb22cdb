//! The one error type of the crate: where (file, document, resource, field) and what.
//!
//! Messages never carry metadata values, which may be secrets: serde's "invalid type" messages
//! are stripped of the offending value before they get here.

use std::fmt;
use std::path::{Path, PathBuf};

/// A resource or configuration file that could not be loaded.
///
/// Its `Display` names the file, the document (1-based, with kind and name when known), the
/// field path and the problem, e.g.
/// `/tmp/res/state.yaml: document 2 (Component "statestore"): spec.initTimeout: invalid duration 'soon': …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(Box<Inner>);

/// Boxed so that `Result<_, ConfigError>` stays small.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inner {
    file: PathBuf,
    position: Position,
    field: Option<String>,
    message: String,
}

/// Where in the file the error is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    /// The file (or folder) as a whole.
    Whole,
    /// A YAML syntax error at a 1-based line and column.
    Line { line: usize, column: usize },
    /// A document (1-based), with its kind and name when known.
    Document {
        index: usize,
        kind: Option<String>,
        name: Option<String>,
    },
}

impl ConfigError {
    /// An error about a whole file or folder (missing, unreadable, not a directory).
    pub(crate) fn file(file: &Path, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            file: file.to_path_buf(),
            position: Position::Whole,
            field: None,
            message: message.into(),
        }))
    }

    /// A YAML syntax error; the line is taken from the parser when it knows it.
    pub(crate) fn yaml(file: &Path, document: usize, error: &serde_norway::Error) -> Self {
        let position = match error.location() {
            Some(location) => Position::Line {
                line: location.line(),
                column: location.column(),
            },
            None => Position::Document {
                index: document,
                kind: None,
                name: None,
            },
        };
        Self(Box::new(Inner {
            file: file.to_path_buf(),
            position,
            field: None,
            message: format!("invalid YAML: {}", strip_location(&error.to_string())),
        }))
    }

    /// An error inside a document.
    pub(crate) fn document(
        file: &Path,
        index: usize,
        kind: Option<&str>,
        name: Option<&str>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Self(Box::new(Inner {
            file: file.to_path_buf(),
            position: Position::Document {
                index,
                kind: kind.map(str::to_owned),
                name: name.map(str::to_owned),
            },
            field,
            message: message.into(),
        }))
    }

    /// The file (or folder) the error is about.
    pub fn path(&self) -> &Path {
        &self.0.file
    }

    /// The 1-based document index, when the error is inside a document.
    pub fn document_index(&self) -> Option<usize> {
        match self.0.position {
            Position::Document { index, .. } => Some(index),
            _ => None,
        }
    }

    /// The 1-based line of a YAML syntax error.
    pub fn line(&self) -> Option<usize> {
        match self.0.position {
            Position::Line { line, .. } => Some(line),
            _ => None,
        }
    }

    /// The field path (`spec.metadata[2].value`), when the error is about one field.
    pub fn field(&self) -> Option<&str> {
        self.0.field.as_deref()
    }

    /// The problem itself, without the location.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.0;
        write!(f, "{}", inner.file.display())?;
        match &inner.position {
            Position::Whole => {}
            Position::Line { line, column } => write!(f, ": line {line} column {column}")?,
            Position::Document { index, kind, name } => {
                write!(f, ": document {index}")?;
                match (kind, name) {
                    (Some(kind), Some(name)) => write!(f, " ({kind} \"{name}\")")?,
                    (Some(kind), None) => write!(f, " ({kind})")?,
                    (None, Some(name)) => write!(f, " (\"{name}\")")?,
                    (None, None) => {}
                }
            }
        }
        if let Some(field) = &inner.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", inner.message)
    }
}

/// An error inside one document, before the loader adds the file and document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// The field path; `None` for the document as a whole.
    pub(crate) field: Option<String>,
    /// What is wrong, without any metadata value.
    pub(crate) message: String,
}

impl FieldError {
    /// An error about `field`.
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A required field that is missing or empty.
    pub(crate) fn required(field: impl Into<String>) -> Self {
        Self::new(field, "required field is missing or empty")
    }
}

impl From<serde_path_to_error::Error<serde_norway::Error>> for FieldError {
    fn from(error: serde_path_to_error::Error<serde_norway::Error>) -> Self {
        let path = error.path().to_string();
        Self {
            field: (path != "." && !path.is_empty()).then_some(path),
            message: sanitize(&strip_location(&error.inner().to_string())),
        }
    }
}

/// serde_norway writes " at line L column C" into its messages; the loader reports the position
/// itself, so this avoids saying it twice.
fn strip_location(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + " at line ".len()..];
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let line_len = digits(tail);
        match tail[line_len..].strip_prefix(" column ") {
            Some(col) if line_len > 0 && digits(col) > 0 => rest = &col[digits(col)..],
            _ => {
                out.push_str(" at line ");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Removes the offending value from serde's "invalid type: string \"hunter2\", expected …"
/// messages: the value may be a secret. Only its kind ("string", "integer", …) stays.
pub(crate) fn sanitize(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some(split) = rest.find(", expected ")
        {
            let unexpected = &rest[..split];
            let kind = unexpected
                .split(['`', '"', '\''])
                .next()
                .unwrap_or("")
                .trim();
            let expected = &rest[split + ", expected ".len()..];
            // Internal decoding types ("struct RawSecretKeyRef") mean nothing to the reader.
            let expected = if expected.starts_with("struct ") {
                "a mapping"
            } else {
                expected
            };
            return format!("{prefix}{kind}, expected {expected}");
        }
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_drops_values() {
        assert_eq!(
            sanitize("invalid type: string \"hunter2\", expected u32"),
            "invalid type: string, expected u32"
        );
        assert_eq!(
            sanitize("invalid value: integer `-1`, expected u32"),
            "invalid value: integer, expected u32"
        );
        assert_eq!(
            sanitize("invalid type: floating point `1.5`, expected i64"),
            "invalid type: floating point, expected i64"
        );
        assert_eq!(
            sanitize("invalid type: string \"x\", expected struct RawSecretKeyRef"),
            "invalid type: string, expected a mapping"
        );
        assert_eq!(sanitize("missing field `x`"), "missing field `x`");
    }

    #[test]
    fn yaml_positions_are_not_repeated() {
        assert_eq!(
            strip_location(
                "did not find expected ',' or ']' at line 18 column 1, while parsing a flow sequence at line 17 column 6"
            ),
            "did not find expected ',' or ']', while parsing a flow sequence"
        );
        assert_eq!(strip_location("at line one"), "at line one");
    }

    #[test]
    fn display_names_everything() {
        let e = ConfigError::document(
            Path::new("/tmp/a.yaml"),
            2,
            Some("Component"),
            Some("statestore"),
            Some("spec.initTimeout".into()),
            "invalid duration",
        );
        assert_eq!(
            e.to_string(),
            "/tmp/a.yaml: document 2 (Component \"statestore\"): spec.initTimeout: invalid duration"
        );
        let e = ConfigError::file(Path::new("/nope"), "resources path does not exist");
        assert_eq!(e.to_string(), "/nope: resources path does not exist");
    }
}
