//! The one line a foreground server prints once it serves, so a user who
//! typed `nbdd -f memory 1G` sees where to point a client.

use nbd_backends::ExportSet;

use crate::listen::Listener;

/// `nbdd: serving ... on ...; URI` (without a newline).
#[must_use]
pub fn line(exports: &ExportSet, listeners: &[Listener], uri: &str) -> String {
    let what = match exports.len() {
        1 => {
            let e = exports.list().next().map(|e| {
                let d = e.description.as_deref().unwrap_or("");
                if d.is_empty() {
                    format!("export '{}'", e.name)
                } else {
                    format!("export '{}' ({d})", e.name)
                }
            });
            e.unwrap_or_default()
        }
        n => {
            let default = exports
                .default_export()
                .map(|e| format!(", default '{}'", e.name))
                .unwrap_or_default();
            format!("{n} exports{default}")
        }
    };
    let on: Vec<String> = listeners.iter().map(Listener::describe).collect();
    let on = if on.is_empty() {
        "stdin".to_owned()
    } else {
        on.join(" and ")
    };
    format!("nbdd: serving {what} on {on}: {uri}")
}
