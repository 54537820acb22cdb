//! Request metadata of outgoing messages, shared by `bindings.rabbitmq` and
//! `pubsub.rabbitmq`.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::ShortString;
use tandem_components::state::RequestMetadata;
use tandem_components::{Error, Result};

use crate::metadata::parse_ttl;

/// A request metadata value by key: exact first, then case-insensitive; empty counts as unset.
pub(crate) fn lookup<'a>(md: &'a RequestMetadata, key: &str) -> Option<&'a str> {
    md.get(key)
        .or_else(|| {
            md.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// An AMQP short string, cut to its 255-byte limit on a character boundary.
pub(crate) fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].into()
}

/// Adds to `props` what the request metadata `md` asks for: the expiration (`ttl`, else
/// `ttlInSeconds`, else `default_ttl`), `priority`, `messageID`, `correlationID` and `type`.
pub(crate) fn with_request_properties(
    mut props: BasicProperties,
    md: &RequestMetadata,
    default_ttl: Option<Duration>,
) -> Result<BasicProperties> {
    let ttl = match lookup(md, "ttl")
        .map(|v| ("ttl", v))
        .or_else(|| lookup(md, "ttlInSeconds").map(|v| ("ttlInSeconds", v)))
    {
        Some((key, v)) => {
            Some(parse_ttl(v).map_err(|why| Error::InvalidRequest(format!("{key}: {why}")))?)
        }
        None => default_ttl,
    };
    if let Some(ttl) = ttl {
        props = props.with_expiration(ttl.as_millis().to_string().into());
    }
    if let Some(p) = lookup(md, "priority") {
        let p: i64 = p.trim().parse().map_err(|_| {
            Error::InvalidRequest("priority: expected an integer from 0 to 255".into())
        })?;
        props = props.with_priority(p.clamp(0, 255) as u8);
    }
    if let Some(id) = lookup(md, "messageID") {
        props = props.with_message_id(short(id));
    }
    if let Some(id) = lookup(md, "correlationID") {
        props = props.with_correlation_id(short(id));
    }
    if let Some(kind) = lookup(md, "type") {
        props = props.with_type(short(kind));
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_cut_on_char_boundaries() {
        let long = "é".repeat(200);
        let s = short(&long);
        assert!(s.as_str().len() <= 255);
        assert!(long.starts_with(s.as_str()));
    }
}
