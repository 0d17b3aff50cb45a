//! Start-up errors as one line: `nbdd: what: why`, each context once, and
//! without Rust's " (os error N)" suffixes.

/// Formats `e` and its causes as one line (without the `nbdd: ` prefix).
#[must_use]
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = strip_os_error(&cause.to_string());
        // anyhow's context often repeats the inner message verbatim.
        if !parts.last().is_some_and(|p| p.ends_with(&s)) {
            parts.push(s);
        }
    }
    let line = parts.join(": ").replace('\n', " ");
    strip_prefixes(&line).to_owned()
}

/// Removes every " (os error N)".
fn strip_os_error(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(" (os error ") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + " (os error ".len()..];
        match tail.find(')') {
            Some(j) if tail[..j].chars().all(|c| c.is_ascii_digit()) => rest = &tail[j + 1..],
            _ => {
                out.push_str(" (os error ");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A message that already starts with `nbdd: ` or `error: ` would stutter
/// after main's own prefix.
fn strip_prefixes(mut s: &str) -> &str {
    while let Some(r) = s
        .strip_prefix("nbdd: ")
        .or_else(|| s.strip_prefix("error: "))
    {
        s = r;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_without_noise() {
        let io = std::io::Error::from_raw_os_error(libc::EACCES);
        let e = anyhow::Error::new(io).context("cannot listen");
        assert_eq!(one_line(&e), "cannot listen: Permission denied");
        let e = anyhow::anyhow!("error: error: x (os error 2)");
        assert_eq!(one_line(&e), "x");
        assert_eq!(strip_os_error("a (os error x) b"), "a (os error x) b");
    }
}
