//! Edit rules: what may change after a key is created.

/// What an edit may change. The name and the resource selection may always
/// change. Permissions, expiry and IP allowlist may be narrowed (fewer
/// permissions, an earlier expiry, a smaller IP allowlist) unless frozen,
/// and widened only where this policy says so.
///
/// The default forbids every widening and freezes nothing.
///
/// A key's usage controls (rate limits and credits) are outside these
/// flags: narrowing them (a lower limit, a longer window, a limit added, a
/// smaller or no refill) is always allowed; widening them (a higher limit,
/// a shorter window, a limit removed, metering turned on or off, a more
/// generous refill) and changing a balance need the
/// [`ManagementPolicy`](crate::policy::ManagementPolicy)'s permission for
/// [`ManagementAction::Usage`](crate::policy::ManagementAction::Usage):
/// the application itself only, by default, since a marketplace sells
/// usage.
///
/// ```
/// use keyward::policy::EditPolicy;
/// let strict = EditPolicy::default();
/// assert!(!strict.widen_permissions && !strict.freeze_permissions);
/// let open = EditPolicy { widen_permissions: true, ..EditPolicy::default() };
/// assert!(open.widen_permissions && !open.extend_expiry);
/// ```
///
/// A package gallery, whose permissions and expiry "cannot be changed once
/// the key is created" while its packages (names and glob patterns) can:
///
/// ```
/// use keyward::{policy::EditPolicy, PermissionRegistry, Policy};
/// let registry = PermissionRegistry::builder().permission("package:push").build().unwrap();
/// let gallery = Policy::new(registry).with_edits(EditPolicy::frozen());
/// assert!(gallery.edits().freeze_permissions && gallery.edits().freeze_expiry);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EditPolicy {
    /// Whether permissions may be added after creation.
    pub widen_permissions: bool,
    /// Whether the expiry may be moved later (or to never) after creation.
    pub extend_expiry: bool,
    /// Whether IP ranges may be added (or the allowlist emptied) after creation.
    pub widen_ip_allowlist: bool,
    /// Whether the permissions are fixed at creation: an edit giving other
    /// permissions (narrower too) is
    /// [`PolicyError::Frozen`](crate::policy::PolicyError::Frozen); giving
    /// the same grant again is no change and passes. Wins over
    /// `widen_permissions`.
    pub freeze_permissions: bool,
    /// Whether the expiry is fixed at creation: any expiry edit (earlier
    /// too) is [`PolicyError::Frozen`](crate::policy::PolicyError::Frozen).
    /// Wins over `extend_expiry`.
    pub freeze_expiry: bool,
    /// Whether the IP allowlist is fixed at creation: an edit giving another
    /// allowlist (smaller too) is
    /// [`PolicyError::Frozen`](crate::policy::PolicyError::Frozen). Wins over
    /// `widen_ip_allowlist`.
    pub freeze_ip_allowlist: bool,
}

impl EditPolicy {
    /// Allows every widening.
    pub fn permissive() -> Self {
        Self {
            widen_permissions: true,
            extend_expiry: true,
            widen_ip_allowlist: true,
            ..Self::default()
        }
    }

    /// Fixes permissions, expiry and IP allowlist at creation; only the
    /// name and the resource selection may change afterwards (a package
    /// gallery: "These settings cannot be changed once the key is
    /// created", "To change the packages controlled by a key, you can
    /// choose individual packages from the list or change the glob
    /// pattern").
    pub fn frozen() -> Self {
        Self {
            freeze_permissions: true,
            freeze_expiry: true,
            freeze_ip_allowlist: true,
            ..Self::default()
        }
    }
}
