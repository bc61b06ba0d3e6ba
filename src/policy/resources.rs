//! Resource scope: all of an owner's resources, or names and glob patterns.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::wildcard;
use crate::policy::PolicyError;

const GLOB_CHARS: &[char] = &['*', '?', '[', ']', '{', '}', '\\', '!', ','];

/// Which resources (packages) a key covers, as stored.
///
/// Entries are exact names (`AzureRM.Profile`) or glob patterns
/// (`AzureRM.DataFactory*`, where `*` is any run of characters and `?` one
/// character). A pattern also covers resources created after the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceScope {
    /// Every resource of the key's owner, now and later.
    All,
    /// These names and patterns.
    Only(Vec<String>),
}

impl ResourceScope {
    /// A selection of names and patterns.
    ///
    /// ```
    /// use keyward::policy::ResourceScope;
    /// let scope = ResourceScope::only(["AzureRM.DataFactory*", "AzureRM.Profile"]);
    /// assert!(matches!(scope, ResourceScope::Only(ref v) if v.len() == 2));
    /// ```
    pub fn only<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Only(entries.into_iter().map(Into::into).collect())
    }
}

/// A resource a request acts on: its owner and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceRef<'a> {
    /// The owner of the resource (a publisher, an organization).
    pub owner: &'a str,
    /// The resource's name (a package id).
    pub name: &'a str,
}

impl<'a> ResourceRef<'a> {
    /// A resource named `name` owned by `owner`.
    pub fn new(owner: &'a str, name: &'a str) -> Self {
        Self { owner, name }
    }
}

/// The application's rule for resource names, which patterns must follow too.
///
/// By default names are 1 to 128 characters of ASCII letters, digits and
/// `.`, `-`, `_`, and matching is case-insensitive (as package galleries do).
/// Patterns may additionally hold `*` and `?`.
///
/// ```
/// use keyward::{policy::ResourceRule, policy::ResourceScope};
/// let rule = ResourceRule::default();
/// let scope = rule.compile(&ResourceScope::only(["AzureRM.DataFactory*"])).unwrap();
/// assert!(scope.matches("AzureRm.DataFactoryV2.Netcore")); // case-insensitive, future names
/// assert!(!scope.matches("AzureRM.Profile"));
/// assert!(rule.compile(&ResourceScope::only(["bad/name*"])).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRule {
    max_len: usize,
    extra_chars: Vec<char>,
    /// The allowed ASCII characters (letters, digits and the ASCII extra
    /// characters) as a table of every byte (none above 127): one read per
    /// byte in [`ResourceRule::check_name`], with no early exit and no scan
    /// of `extra_chars` (issue 14: 350 → about 170 instructions for a
    /// 29-byte name, under callgrind).
    allowed_bytes: AllowedBytes,
    case_insensitive: bool,
    max_entries: usize,
}

/// A set of bytes as a table: 1 for a member, 0 otherwise.
#[derive(Clone, PartialEq, Eq)]
struct AllowedBytes([u8; 256]);

impl AllowedBytes {
    /// ASCII letters and digits plus the ASCII characters of `extra`.
    fn of(extra: &[char]) -> Self {
        let mut table = [0u8; 256];
        for (b, slot) in (0u8..128).zip(table.iter_mut()) {
            *slot = u8::from(b.is_ascii_alphanumeric() || extra.contains(&char::from(b)));
        }
        Self(table)
    }

    /// Whether `b` is in the set.
    #[inline]
    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b)] != 0
    }

    /// Whether every byte of `bytes` is in the set.
    #[inline]
    fn all(&self, bytes: &[u8]) -> bool {
        bytes
            .iter()
            .fold(0u8, |missing, &b| missing | (self.0[usize::from(b)] ^ 1))
            == 0
    }
}

impl fmt::Debug for AllowedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members: String = (0u8..128)
            .filter(|&b| self.0[usize::from(b)] != 0)
            .map(char::from)
            .collect();
        f.debug_tuple("AllowedBytes").field(&members).finish()
    }
}

impl Default for ResourceRule {
    fn default() -> Self {
        let extra_chars = vec!['.', '-', '_'];
        Self {
            max_len: 128,
            allowed_bytes: AllowedBytes::of(&extra_chars),
            extra_chars,
            case_insensitive: true,
            max_entries: 100,
        }
    }
}

impl ResourceRule {
    /// Characters allowed besides ASCII letters and digits. Glob
    /// metacharacters (`* ? [ ] { } \ ! ,`) are refused.
    pub fn extra_chars(mut self, chars: &str) -> Result<Self, PolicyError> {
        if let Some(ch) = chars.chars().find(|c| GLOB_CHARS.contains(c)) {
            return Err(PolicyError::GlobCharInRule { ch });
        }
        self.extra_chars = chars.chars().collect();
        self.allowed_bytes = AllowedBytes::of(&self.extra_chars);
        Ok(self)
    }

    /// Longest name or pattern, in characters.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Whether matching ignores ASCII case (default `true`).
    pub fn case_insensitive(mut self, yes: bool) -> Self {
        self.case_insensitive = yes;
        self
    }

    /// Most entries in one key's selection (default 100).
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max;
        self
    }

    fn allowed(&self, c: char) -> bool {
        match u8::try_from(c) {
            Ok(b) if b < 128 => self.allowed_bytes.contains(b),
            _ => self.extra_chars.contains(&c),
        }
    }

    /// Checks every entry and compiles the selection into one matcher.
    pub fn compile(&self, scope: &ResourceScope) -> Result<CompiledScope, PolicyError> {
        let entries = match scope {
            ResourceScope::All => {
                return Ok(CompiledScope {
                    data: None,
                    case_insensitive: self.case_insensitive,
                });
            }
            ResourceScope::Only(entries) => entries,
        };
        if entries.is_empty() {
            return Err(PolicyError::EmptySelection);
        }
        if entries.len() > self.max_entries {
            return Err(PolicyError::TooManyResources {
                count: entries.len(),
                max: self.max_entries,
            });
        }
        let (mut program, mut texts) = (Vec::new(), Vec::new());
        for (index, entry) in entries.iter().enumerate() {
            if entry.is_empty() {
                return Err(PolicyError::EmptyPattern { index });
            }
            let len = entry.chars().count();
            if len > self.max_len {
                return Err(PolicyError::PatternTooLong {
                    pattern: entry.chars().take(self.max_len).collect(),
                    len,
                    max: self.max_len,
                });
            }
            if let Some(ch) = entry
                .chars()
                .find(|c| !(self.allowed(*c) || *c == '*' || *c == '?'))
            {
                return Err(PolicyError::PatternBadCharacter {
                    pattern: entry.clone(),
                    ch,
                });
            }
            wildcard::compile_into(entry, self.case_insensitive, &mut program, &mut texts);
        }
        wildcard::end_program(&mut program, &texts);
        Ok(CompiledScope {
            data: Some(program.into_boxed_slice()),
            case_insensitive: self.case_insensitive,
        })
    }

    /// Checks a resource name (not a pattern) against the rule: not empty,
    /// at most `max_len` characters, only allowed characters.
    ///
    /// `CompiledKey::check` checks the requested name with this before
    /// matching it, which also bounds the matching work a request can cause.
    pub fn check_name(&self, name: &str) -> Result<(), PolicyError> {
        if name.is_empty() {
            return Err(PolicyError::EmptyPattern { index: 0 });
        }
        // The usual name: ASCII, allowed, short enough (one table read per
        // byte; none above 127 is in the table).
        if name.len() <= self.max_len && self.allowed_bytes.all(name.as_bytes()) {
            return Ok(());
        }
        if name.len() > self.max_len {
            let len = name.chars().count();
            if len > self.max_len {
                return Err(PolicyError::PatternTooLong {
                    pattern: name.chars().take(self.max_len).collect(),
                    len,
                    max: self.max_len,
                });
            }
        }
        if let Some(ch) = name.chars().find(|c| !self.allowed(*c)) {
            return Err(PolicyError::PatternBadCharacter {
                pattern: name.to_owned(),
                ch,
            });
        }
        Ok(())
    }
}

/// A resource selection compiled once per key.
///
/// All of a key's patterns live in one allocation, a few bytes more than
/// their text (which it also gives back, [`CompiledScope::patterns`]): `*`
/// and `?` compiled for exactly that language (no regular expression, no
/// automaton per pattern). Matching allocates nothing and gives the answers
/// the `globset` crate gives for the same patterns (case-insensitive as the
/// rule says, `*` across `.` and `/`, anchored at both ends, `?` one byte).
#[derive(Clone, PartialEq, Eq)]
pub struct CompiledScope {
    /// `None`: every resource. Else the program (`policy/wildcard.rs`).
    data: Option<Box<[u8]>>,
    case_insensitive: bool,
}

impl std::fmt::Debug for CompiledScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.data {
            None => f.write_str("CompiledScope::All"),
            Some(_) => f
                .debug_struct("CompiledScope")
                .field("patterns", &self.patterns().collect::<Vec<_>>())
                .field("case_insensitive", &self.case_insensitive)
                .finish(),
        }
    }
}

impl CompiledScope {
    /// Whether the scope covers a resource with this name (of the key's owner).
    ///
    /// At most n × m steps per pattern for a name of n bytes and a pattern
    /// of m (linear for patterns with at most one `*`); check untrusted
    /// names with [`ResourceRule::check_name`] first, which bounds n.
    #[inline]
    pub fn matches(&self, name: &str) -> bool {
        match &self.data {
            None => true,
            Some(data) => wildcard::matches_any(data, self.case_insensitive, name.as_bytes()),
        }
    }

    /// Whether the scope covers every resource of the owner.
    pub fn is_all(&self) -> bool {
        self.data.is_none()
    }

    /// The names and patterns as granted, in order (none for all resources).
    ///
    /// ```
    /// use keyward::policy::{ResourceRule, ResourceScope};
    /// let scope = ResourceScope::only(["AzureRM.DataFactory*", "AzureRM.Profile"]);
    /// let compiled = ResourceRule::default().compile(&scope).unwrap();
    /// assert!(compiled.patterns().eq(["AzureRM.DataFactory*", "AzureRM.Profile"]));
    /// assert_eq!(compiled.to_scope(), scope);
    /// ```
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.data
            .as_deref()
            .into_iter()
            .flat_map(wildcard::patterns)
    }

    /// The selection as granted.
    pub fn to_scope(&self) -> ResourceScope {
        if self.is_all() {
            ResourceScope::All
        } else {
            ResourceScope::Only(self.patterns().map(str::to_owned).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte table holds exactly the ASCII letters, digits and extra
    /// characters, for the default rule and one with other extra
    /// characters (non-ASCII ones stay out of it); a name passes
    /// `check_name` exactly when each of its bytes does.
    #[test]
    fn the_byte_table_is_the_rules_character_test() {
        let custom = ResourceRule::default().extra_chars("+@~é").unwrap();
        for (rule, extra) in [(ResourceRule::default(), ".-_"), (custom, "+@~é")] {
            for b in 0..=u8::MAX {
                let member =
                    b < 128 && (b.is_ascii_alphanumeric() || extra.contains(char::from(b)));
                assert_eq!(
                    rule.allowed(char::from(b)),
                    member || extra.contains(char::from(b))
                );
                assert_eq!(rule.allowed_bytes.all(&[b]), member, "{b}");
                let name = [b'a', b, b'z'];
                if let Ok(name) = std::str::from_utf8(&name) {
                    assert_eq!(rule.check_name(name).is_ok(), member, "{name:?}");
                }
            }
        }
        let rule = ResourceRule::default().extra_chars("é").unwrap();
        assert!(
            rule.check_name("café").is_ok(),
            "non-ASCII extra characters take the slow path"
        );
        assert!(rule.check_name("cafè").is_err());
        assert!(format!("{rule:?}").contains("AllowedBytes(\"0123456789"));
    }
}
