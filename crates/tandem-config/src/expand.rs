//! `$VAR` / `${VAR}` expansion with the rules of Go's `os.Expand`, which daprd applies to
//! `--config` files before parsing them.

/// Expands `$NAME`, `${NAME}` and the shell specials (`$1`, `$$`, …) in `text`; a variable that
/// `lookup` does not know expands to "". Malformed `${` forms are dropped, as in Go.
pub fn expand_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut j = 0;
    while j < bytes.len() {
        if bytes[j] == b'$' && j + 1 < bytes.len() {
            out.push_str(&text[copied..j]);
            let (name, width) = shell_name(&text[j + 1..]);
            match (name, width) {
                ("", w) if w > 0 => {} // bad syntax: the characters are eaten
                ("", _) => out.push('$'),
                (name, _) => out.push_str(&lookup(name).unwrap_or_default()),
            }
            j += width;
            copied = j + 1;
        }
        j += 1;
    }
    out.push_str(&text[copied.min(text.len())..]);
    out
}

fn is_special(c: u8) -> bool {
    matches!(
        c,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

fn is_name_char(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// The variable name after a `$` and how many bytes it spans (Go's `getShellName`).
fn shell_name(s: &str) -> (&str, usize) {
    let b = s.as_bytes();
    if b[0] == b'{' {
        if b.len() > 2 && is_special(b[1]) && b[2] == b'}' {
            return (&s[1..2], 3);
        }
        for (i, &c) in b.iter().enumerate().skip(1) {
            if c == b'}' {
                if i == 1 {
                    return ("", 2); // "${}"
                }
                return (&s[1..i], i + 1);
            }
        }
        return ("", 1); // "${" without a closing brace
    }
    if is_special(b[0]) {
        return (&s[0..1], 1);
    }
    let len = b.iter().take_while(|&&c| is_name_char(c)).count();
    (&s[..len], len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("zipkin".into()),
            "PORT" => Some("9411".into()),
            "1" => Some("one".into()),
            _ => None,
        }
    }

    #[test]
    fn go_expand_rules() {
        assert_eq!(
            expand_env("http://$HOST:${PORT}/x", &env),
            "http://zipkin:9411/x"
        );
        assert_eq!(expand_env("a $MISSING b", &env), "a  b");
        assert_eq!(expand_env("cost: 5$", &env), "cost: 5$");
        assert_eq!(expand_env("a $ b", &env), "a $ b");
        assert_eq!(expand_env("x${}y", &env), "xy");
        assert_eq!(expand_env("x${HOST", &env), "xHOST");
        assert_eq!(expand_env("$1st", &env), "onest");
        assert_eq!(expand_env("${1}", &env), "one");
        assert_eq!(expand_env("é$HOST€", &env), "ézipkin€");
        assert_eq!(expand_env("plain", &env), "plain");
    }
}
