//! What an invocation targets, and the method path it carries.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// Characters escaped when a cleaned method goes back on the wire (`/` stays a separator).
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'%');

/// A method after Dapr's normalisation (`NormalizeMethod`): percent-decoded, checked and
/// cleaned (`.`/`..`/empty segments resolved, leading `../` and trailing `/` dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Method {
    /// The request path sent to the target: `/` + the method, escaped again where needed.
    pub path: String,
    /// The name, when it is not the path without its `/` (something was escaped or moved).
    decoded: Option<String>,
}

impl Method {
    /// Normalises `raw`, the method as it appeared in the request path (still escaped).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut owned = String::with_capacity(raw.len() + 1);
        owned.push_str(raw);
        Self::parse_owned(owned)
    }

    /// [`Method::parse`] of a method the caller owns: when nothing needs escaping or
    /// cleaning (the usual case), the path is made in its buffer (no copy when it has room
    /// for one more byte).
    pub fn parse_owned(mut raw: String) -> Result<Self, String> {
        Ok(match Self::changed(&raw)? {
            Some(method) => method,
            None => {
                raw.insert(0, '/');
                Self {
                    path: raw,
                    decoded: None,
                }
            }
        })
    }

    /// Checks `raw`; `None` when it is already a clean, unescaped path (the method is `raw`
    /// itself), else the method it normalises to.
    fn changed(raw: &str) -> Result<Option<Self>, String> {
        let decoded = percent_decode_str(raw).decode_utf8_lossy();
        if let Some(c) = decoded.chars().find(|c| matches!(c, '#' | '?' | '\0')) {
            return Err(format!("method contains forbidden character: {c:?}"));
        }
        if let Some(pos) = decoded.bytes().position(|b| b < 0x20 || b == 0x7f) {
            return Err(format!(
                "method contains control character at position {pos}"
            ));
        }
        let cleaned = clean(&decoded);
        Ok(match (&decoded, &cleaned) {
            // Nothing was escaped and nothing moved: the raw text is already a valid path.
            (Cow::Borrowed(_), Cow::Borrowed(_)) => None,
            _ => Some(Self {
                path: format!("/{}", utf8_percent_encode(&cleaned, PATH)),
                decoded: Some(cleaned.into_owned()),
            }),
        })
    }

    /// The decoded, cleaned method without a leading `/` (`orders/1`): what access control
    /// and resiliency policies match and what error messages show.
    pub fn name(&self) -> &str {
        self.decoded.as_deref().unwrap_or(&self.path[1..])
    }
}

/// Go's `path.Clean` for a rootless path, then leading `..` segments dropped and `.` → empty.
fn clean(p: &str) -> Cow<'_, str> {
    let trimmed = p.trim_start_matches('/');
    let needs_work = trimmed.len() != p.len()
        || trimmed.ends_with('/')
        || trimmed
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if !needs_work || trimmed.is_empty() {
        return if trimmed.len() == p.len() {
            Cow::Borrowed(p)
        } else {
            Cow::Owned(trimmed.to_owned())
        };
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in trimmed.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    Cow::Owned(out.join("/"))
}

/// Where an invocation goes, decided from its target string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// A full `http://` / `https://` base URL: called directly.
    Url(&'a str),
    /// An app-id, in the caller's namespace unless given as `appid.namespace`.
    App {
        /// The app-id.
        id: &'a str,
        /// The namespace, when the target named one.
        namespace: Option<&'a str>,
    },
}

impl<'a> Target<'a> {
    /// Parses a target (HTTPEndpoint names are looked up before this).
    pub fn parse(target: &'a str) -> Result<Self, String> {
        if target.starts_with("http://") || target.starts_with("https://") {
            return Ok(Self::Url(target));
        }
        let mut parts = target.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), None, _) if !id.is_empty() => Ok(Self::App {
                id,
                namespace: None,
            }),
            (Some(id), Some(ns), None) if !id.is_empty() && !ns.is_empty() => Ok(Self::App {
                id,
                namespace: Some(ns),
            }),
            _ => Err(format!("invalid app id {target}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(raw: &str) -> (String, String) {
        let m = Method::parse(raw).unwrap();
        let owned = Method::parse_owned(raw.to_owned()).unwrap();
        assert_eq!(owned, m, "{raw}");
        (m.name().to_owned(), m.path)
    }

    #[test]
    fn methods_are_cleaned_like_daprd() {
        assert_eq!(m("orders/1"), ("orders/1".into(), "/orders/1".into()));
        assert_eq!(m(""), ("".into(), "/".into()));
        assert_eq!(m("."), ("".into(), "/".into()));
        assert_eq!(m("a//b/./c/"), ("a/b/c".into(), "/a/b/c".into()));
        assert_eq!(m("a/../../b"), ("b".into(), "/b".into()));
        assert_eq!(
            m("../../etc/passwd"),
            ("etc/passwd".into(), "/etc/passwd".into())
        );
        assert_eq!(m("a%2Fb"), ("a/b".into(), "/a/b".into()));
        assert_eq!(m("a%20b/%C3%A9"), ("a b/é".into(), "/a%20b/%C3%A9".into()));
        assert_eq!(m("caf%25e"), ("caf%e".into(), "/caf%25e".into()));
        assert!(Method::parse("a%3Fb").is_err());
        assert!(Method::parse("a%23b").is_err());
        assert!(Method::parse("a%00b").is_err());
        assert!(Method::parse("a%0Ab").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("orders").unwrap(),
            Target::App {
                id: "orders",
                namespace: None
            }
        );
        assert_eq!(
            Target::parse("orders.prod").unwrap(),
            Target::App {
                id: "orders",
                namespace: Some("prod")
            }
        );
        assert_eq!(
            Target::parse("http://h:1").unwrap(),
            Target::Url("http://h:1")
        );
        assert!(Target::parse("a.b.c").is_err());
        assert!(Target::parse(".b").is_err());
        assert!(Target::parse("").is_err());
    }
}
