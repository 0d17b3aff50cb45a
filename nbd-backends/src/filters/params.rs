//! A filter's view of the command-line parameters: it takes its own keys
//! and reports bad values with one prefix naming the filter
//! (`cow filter: cow-block-size=3k: not a power of two`).

use std::time::Duration;

use crate::parse_size;
use crate::registry::Params;

/// The parameters, seen by the filter `filter`.
pub(crate) struct FilterParams<'p, 'a> {
    filter: &'static str,
    params: &'p mut Params<'a>,
    /// Every key looked up, for the test that all are documented.
    pub(crate) asked: Vec<String>,
}

impl<'p, 'a> FilterParams<'p, 'a> {
    pub(crate) fn new(filter: &'static str, params: &'p mut Params<'a>) -> Self {
        Self {
            filter,
            params,
            asked: Vec::new(),
        }
    }

    /// The filter's name.
    pub(crate) fn filter(&self) -> &'static str {
        self.filter
    }

    /// The message for a bad value: `NAME filter: key=value: why`.
    pub(crate) fn bad(&self, key: &str, value: &str, why: impl std::fmt::Display) -> String {
        format!("{} filter: {key}={value}: {why}", self.filter)
    }

    /// A message about the filter as a whole: `NAME filter: why`.
    pub(crate) fn error(&self, why: impl std::fmt::Display) -> String {
        format!("{} filter: {why}", self.filter)
    }

    /// Log one warning line naming the filter.
    pub(crate) fn warn(&self, why: impl std::fmt::Display) {
        log::warn!("{} filter: {why}", self.filter);
    }

    /// The value of `key`, if given.
    pub(crate) fn take(&mut self, key: &str) -> Option<&'a str> {
        self.asked.push(key.to_owned());
        self.params.take(key)
    }

    /// Every value of a key that may be repeated (`protect=`).
    pub(crate) fn take_all(&mut self, key: &str) -> Vec<&'a str> {
        self.asked.push(key.to_owned());
        self.params.take_all(key)
    }

    /// `key` parsed by `parse`, whose error becomes the reason.
    pub(crate) fn take_with<T, E: std::fmt::Display>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).map_err(|e| self.bad(key, v, e)),
        }
    }

    /// `key` as a size (`64k`, `1G`).
    pub(crate) fn take_size(&mut self, key: &str) -> Result<Option<u64>, String> {
        self.take_with(key, |v| {
            parse_size(v).map_err(|e| {
                // parse_size names the string itself; the prefix already does.
                e.split_once(": ")
                    .map_or(e.clone(), |(_, why)| why.to_owned())
            })
        })
    }

    /// `key` as nbdkit's boolean (`true/false`, `yes/no`, `on/off`, `1/0`).
    pub(crate) fn take_bool(&mut self, key: &str) -> Result<Option<bool>, String> {
        self.take_with(key, parse_bool)
    }

    /// `key` as a delay (`10ms`, `2s`, `1.5`).
    pub(crate) fn take_delay(&mut self, key: &str) -> Result<Option<Duration>, String> {
        self.take_with(key, |v| {
            super::parse_delay(v).map_err(|_| "expected a delay such as 10ms, 2s or 0.5")
        })
    }

    /// `key` as an unsigned number.
    pub(crate) fn take_number<T: std::str::FromStr>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, String> {
        self.take_with(key, |v| v.parse::<T>().map_err(|_| "expected a number"))
    }

    /// `key` as one of `choices`.
    pub(crate) fn take_choice(
        &mut self,
        key: &str,
        choices: &[&'static str],
    ) -> Result<Option<&'static str>, String> {
        self.take_with(key, |v| {
            choices
                .iter()
                .copied()
                .find(|c| c.eq_ignore_ascii_case(v))
                .ok_or_else(|| format!("expected one of {}", choices.join(", ")))
        })
    }
}

/// nbdkit's booleans, case-insensitive.
///
/// # Errors
///
/// A reason naming the accepted spellings.
pub fn parse_bool(v: &str) -> Result<bool, &'static str> {
    crate::util::parse_bool(v).ok_or("expected a boolean (true/false, yes/no, on/off, 1/0)")
}

/// `true`, `false`, or an absolute path whose existence switches the
/// behaviour on (nbdkit's `cache-on-read=/PATH`, `cow-on-read=/PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// Always on (true) or off.
    Always(bool),
    /// On while this file exists.
    WhileExists(std::path::PathBuf),
}

impl Switch {
    /// Parse `true|false|/PATH`.
    ///
    /// # Errors
    ///
    /// A reason naming the accepted forms.
    pub fn parse(v: &str) -> Result<Self, &'static str> {
        if v.starts_with('/') {
            return Ok(Self::WhileExists(v.into()));
        }
        parse_bool(v)
            .map(Self::Always)
            .map_err(|_| "expected true, false or an absolute /PATH")
    }

    /// Is it on now?
    pub fn on(&self) -> bool {
        match self {
            Self::Always(b) => *b,
            Self::WhileExists(p) => p.exists(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_switches() {
        for (v, want) in [("TRUE", true), ("on", true), ("1", true), ("No", false)] {
            assert_eq!(parse_bool(v), Ok(want));
        }
        assert!(parse_bool("maybe").is_err());
        assert_eq!(Switch::parse("yes"), Ok(Switch::Always(true)));
        let s = Switch::parse("/nonexistent/nbdd-switch").unwrap();
        assert!(!s.on());
        assert!(Switch::parse("relative/path").is_err());
    }
}
