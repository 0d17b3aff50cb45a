//! What a server offers: named [`Export`]s in an [`ExportSet`], and the
//! per-export policy that is not the backend's business (description,
//! RESIZE permission, TLS requirement).
//!
//! Export-name policy (nbdkit's): a server built from one backend that
//! yields one export serves it whatever name a client asks for, as nbdkit
//! does; a set of several exports (`file dir=`, `--config`, `--add-export`)
//! only serves the names it lists, and `""` means its default export.

mod fixed_size;

use std::sync::Arc;

use crate::{Backend, Caps};

pub use fixed_size::FixedSize;

/// One export served by the server.
pub struct Export {
    /// The export name clients ask for (NBD_OPT_GO / EXPORT_NAME).
    pub name: String,
    /// Human description for NBD_INFO_DESCRIPTION and NBD_OPT_LIST.
    pub description: Option<String>,
    /// The store behind it, shared by every connection.
    pub backend: Arc<dyn Backend>,
    /// Only a client that has negotiated TLS may select (INFO/GO) this
    /// export. With `--tls=require` every export is TLS-only anyway; this
    /// makes single exports TLS-only under `--tls=on`. The driver enforces
    /// it during negotiation (`NBD_REP_ERR_TLS_REQD`).
    pub tls_required: bool,
}

impl Export {
    /// An export with the default policy: no TLS requirement, the
    /// backend's own description.
    pub fn new(name: String, description: Option<String>, backend: Arc<dyn Backend>) -> Self {
        Self {
            name,
            description,
            backend,
            tls_required: false,
        }
    }

    /// Apply `policy`. RESIZE is masked unless the policy allows it (issue
    /// 15: any client could otherwise shrink a shared export to nothing);
    /// a read-only export never advertises it whatever the policy says.
    #[must_use]
    pub fn with_policy(mut self, policy: &ExportPolicy) -> Self {
        if let Some(d) = &policy.description {
            self.description = Some(d.clone());
        }
        let caps = self.backend.caps();
        if caps.contains(Caps::RESIZE) && (!policy.allow_resize || caps.contains(Caps::READ_ONLY)) {
            self.backend = Arc::new(FixedSize::new(self.backend));
        }
        self.tls_required |= policy.tls_required;
        self
    }
}

/// Per-export settings chosen by the user rather than the backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportPolicy {
    /// Replaces the backend's description.
    pub description: Option<String>,
    /// Let clients change the size (NBD_CMD_RESIZE). Off by default.
    pub allow_resize: bool,
    /// Serve the export only over TLS.
    pub tls_required: bool,
}

/// The set of exports a server offers, in a fixed order (NBD_OPT_LIST's).
pub struct ExportSet {
    exports: Vec<Export>,
    /// Index of the export `""` selects (when none is named `""`).
    default: Option<usize>,
    /// Serve the only export under any name (nbdkit's single-export policy).
    any_name: bool,
}

impl ExportSet {
    /// A set holding one export, served under any name.
    pub fn single(name: String, backend: Arc<dyn Backend>) -> Self {
        let description = backend.description();
        Self::from_exports(vec![Export::new(name, description, backend)]).serve_any_name()
    }

    /// A set from a list of exports; the first is the default and only
    /// listed names are served.
    pub fn from_exports(exports: Vec<Export>) -> Self {
        let default = (!exports.is_empty()).then_some(0);
        Self {
            exports,
            default,
            any_name: false,
        }
    }

    /// Make the export called `name` the default one.
    ///
    /// # Errors
    ///
    /// If there is no such export (the message lists the names).
    pub fn with_default(mut self, name: &str) -> Result<Self, String> {
        match self.exports.iter().position(|e| e.name == name) {
            Some(i) => {
                self.default = Some(i);
                Ok(self)
            }
            None => Err(format!(
                "default export '{name}' is not one of the exports ({})",
                self.names().join(", ")
            )),
        }
    }

    /// nbdkit's policy for a server with one export: serve it whatever
    /// name the client asks for. No effect on a set of several exports.
    #[must_use]
    pub fn serve_any_name(mut self) -> Self {
        self.any_name = self.exports.len() == 1;
        self
    }

    /// True when the only export is served under any name.
    pub fn serves_any_name(&self) -> bool {
        self.any_name
    }

    /// Find an export by name; "" means the default export unless an
    /// export is really named "" (checklist 21).
    pub fn get(&self, name: &str) -> Option<&Export> {
        if let Some(e) = self.exports.iter().find(|e| e.name == name) {
            return Some(e);
        }
        if name.is_empty() {
            self.default_export()
        } else if self.any_name {
            self.exports.first()
        } else {
            None
        }
    }

    /// Every export, in order (for NBD_OPT_LIST).
    pub fn list(&self) -> impl Iterator<Item = &Export> {
        self.exports.iter()
    }

    /// The export served for an empty name.
    pub fn default_export(&self) -> Option<&Export> {
        self.default.and_then(|i| self.exports.get(i))
    }

    /// Number of exports.
    pub fn len(&self) -> usize {
        self.exports.len()
    }

    /// True when there is no export at all (e.g. an empty `dir=`).
    pub fn is_empty(&self) -> bool {
        self.exports.is_empty()
    }

    /// Take the exports out (to combine several sets into one).
    pub fn into_exports(self) -> Vec<Export> {
        self.exports
    }

    fn names(&self) -> Vec<String> {
        self.exports
            .iter()
            .map(|e| format!("'{}'", e.name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    fn mem(name: &str) -> Export {
        Export::new(
            name.into(),
            None,
            Arc::new(MemoryBackend::new(4096).unwrap()),
        )
    }

    #[test]
    fn single_export_answers_any_name_several_do_not() {
        let one = ExportSet::single("a".into(), Arc::new(MemoryBackend::new(1).unwrap()));
        assert!(one.serves_any_name());
        assert_eq!(one.get("other").unwrap().name, "a");
        assert_eq!(one.get("").unwrap().name, "a");
        let two = ExportSet::from_exports(vec![mem("a"), mem("b")]).serve_any_name();
        assert!(two.get("other").is_none());
        assert_eq!(two.get("").unwrap().name, "a");
        let two = two.with_default("b").unwrap();
        assert_eq!(two.get("").unwrap().name, "b");
        let e = ExportSet::from_exports(vec![mem("a")])
            .with_default("zz")
            .err()
            .unwrap();
        assert!(e.contains("'zz'") && e.contains("'a'"), "{e}");
    }

    #[test]
    fn resize_is_masked_unless_allowed_and_writable() {
        let caps = |p: &ExportPolicy| mem("m").with_policy(p).backend.caps();
        assert!(!caps(&ExportPolicy::default()).contains(Caps::RESIZE));
        let allow = ExportPolicy {
            allow_resize: true,
            ..ExportPolicy::default()
        };
        assert!(caps(&allow).contains(Caps::RESIZE));
        let masked = mem("m").with_policy(&ExportPolicy::default());
        let err = masked.backend.resize(1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert_eq!(masked.backend.size(), 4096);
        let ro = Export::new(
            "r".into(),
            None,
            Arc::new(crate::filters::ReadOnly::new(Arc::new(
                MemoryBackend::new(1).unwrap(),
            ))),
        )
        .with_policy(&allow);
        assert!(!ro.backend.caps().contains(Caps::RESIZE));
    }

    #[test]
    fn policy_sets_description_and_tls() {
        let p = ExportPolicy {
            description: Some("scratch".into()),
            tls_required: true,
            ..ExportPolicy::default()
        };
        let e = mem("m").with_policy(&p);
        assert_eq!(e.description.as_deref(), Some("scratch"));
        assert!(e.tls_required);
    }
}
