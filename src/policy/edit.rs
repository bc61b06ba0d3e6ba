//! Edit rules: what may change after a key is created.

/// What an edit may change. The name and the resource selection may always
/// change; narrowing (fewer permissions, an earlier expiry, a smaller IP
/// allowlist) is always allowed; widening only where this policy says so.
///
/// The default forbids every widening (as package galleries do).
///
/// ```
/// use keyward::policy::EditPolicy;
/// let strict = EditPolicy::default();
/// assert!(!strict.widen_permissions);
/// let open = EditPolicy { widen_permissions: true, ..EditPolicy::default() };
/// assert!(open.widen_permissions && !open.extend_expiry);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EditPolicy {
    /// Whether permissions may be added after creation.
    pub widen_permissions: bool,
    /// Whether the expiry may be moved later (or to never) after creation.
    pub extend_expiry: bool,
    /// Whether IP ranges may be added (or the allowlist emptied) after creation.
    pub widen_ip_allowlist: bool,
}

impl EditPolicy {
    /// Allows every widening.
    pub fn permissive() -> Self {
        Self {
            widen_permissions: true,
            extend_expiry: true,
            widen_ip_allowlist: true,
        }
    }
}
