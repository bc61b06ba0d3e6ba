//! Permissions: named by the application, registered once, checked as bits.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::InvalidValue;
use crate::policy::PolicyError;

/// The most permissions one registry can hold (one bit each in a `u64`).
pub(crate) const MAX_PERMISSIONS: usize = 64;
const MAX_PERMISSION_NAME_LEN: usize = 64;

/// A registered permission: a bit, plus whether only a session may use it.
/// Get one from [`PermissionRegistry::get`] once, at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permission {
    bit: u8,
    session_only: bool,
}

impl Permission {
    /// Whether the permission can only be used by an interactive session, so
    /// no key can ever grant it.
    pub fn is_session_only(&self) -> bool {
        self.session_only
    }
}

/// A set of permissions as bits; checking one is a single AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct PermissionSet(u64);

impl PermissionSet {
    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// Whether `permission` is in the set.
    #[inline]
    pub fn contains(&self, permission: Permission) -> bool {
        self.0 & (1u64 << permission.bit) != 0
    }

    /// Whether every permission of `other` is in `self`.
    pub fn is_superset(&self, other: PermissionSet) -> bool {
        other.0 & !self.0 == 0
    }

    /// The permissions of `self` that are not in `other`.
    pub fn without(&self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 & !other.0)
    }

    /// The raw bits (bit *n* is the *n*-th registered permission).
    pub fn bits(&self) -> u64 {
        self.0
    }
}

/// What a key is granted, as stored: every grantable permission, or a list of names.
///
/// `All` covers permissions registered later too (but never session-only ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermissionGrant {
    /// Every grantable permission, now and later.
    All,
    /// These permissions (and what they imply).
    Only(BTreeSet<String>),
}

impl PermissionGrant {
    /// A grant of these names.
    ///
    /// ```
    /// use keyward::policy::PermissionGrant;
    /// let g = PermissionGrant::only(["package:push", "analytics:read"]);
    /// assert!(matches!(g, PermissionGrant::Only(ref s) if s.len() == 2));
    /// ```
    pub fn only<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Only(names.into_iter().map(Into::into).collect())
    }
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    implies: Vec<String>,
    session_only: bool,
}

/// Builds a [`PermissionRegistry`].
#[derive(Debug, Default, Clone)]
pub struct PermissionRegistryBuilder {
    entries: Vec<Entry>,
}

impl PermissionRegistryBuilder {
    /// Registers a permission that keys may be granted.
    pub fn permission(self, name: &str) -> Self {
        self.permission_implying(name, &[])
    }

    /// Registers a grantable permission that implies others (for example
    /// `package:push` implies `package:push-new`). The implied permissions may
    /// be registered before or after; implication is transitive.
    pub fn permission_implying(mut self, name: &str, implies: &[&str]) -> Self {
        self.entries.push(Entry {
            name: name.to_owned(),
            implies: implies.iter().map(|s| (*s).to_owned()).collect(),
            session_only: false,
        });
        self
    }

    /// Registers an operation that only an interactive session may perform
    /// (for example deleting a package). No key can be granted it; a key that
    /// asks for it is denied with [`DenialReason::SessionOnly`](crate::DenialReason::SessionOnly).
    pub fn session_only(mut self, name: &str) -> Self {
        self.entries.push(Entry {
            name: name.to_owned(),
            implies: Vec::new(),
            session_only: true,
        });
        self
    }

    /// Checks names and implications and computes the transitive closure.
    pub fn build(self) -> Result<PermissionRegistry, PolicyError> {
        if self.entries.len() > MAX_PERMISSIONS {
            return Err(PolicyError::TooManyPermissions {
                max: MAX_PERMISSIONS,
            });
        }
        for (i, e) in self.entries.iter().enumerate() {
            validate_name(&e.name)?;
            if self.entries[..i].iter().any(|o| o.name == e.name) {
                return Err(PolicyError::DuplicatePermission {
                    name: e.name.clone(),
                });
            }
        }
        let index = |name: &str| self.entries.iter().position(|e| e.name == name);
        // closure[i] = bits of i and everything it implies, transitively.
        let mut closure: Vec<u64> = (0..self.entries.len()).map(|i| 1u64 << i).collect();
        for (i, e) in self.entries.iter().enumerate() {
            for implied in &e.implies {
                let j = index(implied).ok_or_else(|| PolicyError::UnknownPermission {
                    name: implied.clone(),
                })?;
                if self.entries[j].session_only {
                    return Err(PolicyError::ImpliesSessionOnly {
                        name: e.name.clone(),
                        implied: implied.clone(),
                    });
                }
                closure[i] |= 1u64 << j;
            }
        }
        loop {
            let mut changed = false;
            for i in 0..closure.len() {
                let mut c = closure[i];
                for (j, cj) in closure.iter().enumerate() {
                    if c & (1u64 << j) != 0 {
                        c |= cj;
                    }
                }
                if c != closure[i] {
                    closure[i] = c;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let grantable = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.session_only)
            .fold(0u64, |acc, (i, _)| acc | (1u64 << i));
        Ok(PermissionRegistry {
            entries: self.entries,
            closure,
            grantable,
        })
    }
}

fn validate_name(name: &str) -> Result<(), PolicyError> {
    if name.is_empty() {
        return Err(InvalidValue::Empty {
            field: "permission name",
        }
        .into());
    }
    if name.len() > MAX_PERMISSION_NAME_LEN {
        return Err(InvalidValue::TooLong {
            field: "permission name",
            len: name.chars().count(),
            max: MAX_PERMISSION_NAME_LEN,
        }
        .into());
    }
    if let Some(ch) = name.chars().find(|c| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, ':' | '-' | '_' | '.'))
    }) {
        return Err(InvalidValue::BadCharacter {
            field: "permission name",
            ch,
            allowed: "lowercase ASCII letters, digits and : - _ .",
        }
        .into());
    }
    Ok(())
}

/// The application's permissions, built once at startup.
///
/// ```
/// use keyward::{policy::PermissionGrant, PermissionRegistry};
/// let registry = PermissionRegistry::builder()
///     .permission("package:push-new")
///     .permission_implying("package:push", &["package:push-new"])
///     .permission("package:unlist")
///     .permission("analytics:read")
///     .session_only("package:delete")
///     .build()
///     .unwrap();
///
/// let granted = registry.resolve(&PermissionGrant::only(["package:push"])).unwrap();
/// assert!(granted.contains(registry.get("package:push-new").unwrap())); // implied
/// assert!(!granted.contains(registry.get("package:unlist").unwrap()));
///
/// // Session-only operations can never be granted to a key.
/// assert!(registry.resolve(&PermissionGrant::only(["package:delete"])).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct PermissionRegistry {
    entries: Vec<Entry>,
    closure: Vec<u64>,
    grantable: u64,
}

impl PermissionRegistry {
    /// Most permissions one registry may hold (the bits of its set).
    pub const MAX_PERMISSIONS: usize = MAX_PERMISSIONS;

    /// Starts a registry.
    pub fn builder() -> PermissionRegistryBuilder {
        PermissionRegistryBuilder::default()
    }

    /// The permission with this name.
    pub fn get(&self, name: &str) -> Option<Permission> {
        self.entries
            .iter()
            .position(|e| e.name == name)
            .map(|i| Permission {
                bit: i as u8,
                session_only: self.entries[i].session_only,
            })
    }

    /// The name of a permission of this registry.
    pub fn name(&self, permission: Permission) -> &str {
        self.entries
            .get(permission.bit as usize)
            .map(|e| e.name.as_str())
            .unwrap_or("")
    }

    /// Every grantable permission.
    pub fn all_grantable(&self) -> PermissionSet {
        PermissionSet(self.grantable)
    }

    /// The effective permissions of a grant, for creating or editing a key:
    /// unknown and session-only names are errors.
    pub fn resolve(&self, grant: &PermissionGrant) -> Result<PermissionSet, PolicyError> {
        match grant {
            PermissionGrant::All => Ok(self.all_grantable()),
            PermissionGrant::Only(names) => {
                if names.is_empty() {
                    return Err(PolicyError::NoPermissions);
                }
                let mut bits = 0u64;
                for name in names {
                    let i = self
                        .entries
                        .iter()
                        .position(|e| &e.name == name)
                        .ok_or_else(|| PolicyError::UnknownPermission { name: name.clone() })?;
                    if self.entries[i].session_only {
                        return Err(PolicyError::SessionOnlyPermission { name: name.clone() });
                    }
                    bits |= self.closure[i];
                }
                Ok(PermissionSet(bits))
            }
        }
    }

    /// The effective permissions of a stored grant. Names the registry no
    /// longer knows (or now marks session-only) grant nothing: removing a
    /// permission from the registry takes it away from every key.
    pub fn resolve_stored(&self, grant: &PermissionGrant) -> PermissionSet {
        match grant {
            PermissionGrant::All => self.all_grantable(),
            PermissionGrant::Only(names) => PermissionSet(
                names
                    .iter()
                    .filter_map(|n| self.entries.iter().position(|e| &e.name == n))
                    .filter(|i| !self.entries[*i].session_only)
                    .fold(0u64, |acc, i| acc | self.closure[i])
                    & self.grantable,
            ),
        }
    }

    /// The names of the permissions in a set, in registration order.
    pub fn names(&self, set: PermissionSet) -> Vec<&str> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, _)| set.0 & (1u64 << i) != 0)
            .map(|(_, e)| e.name.as_str())
            .collect()
    }
}
