//! What differs between two snapshots, object by object: added, removed or changed, with the
//! definitions before and after. A table's columns are compared by name; the same columns in
//! another order are a note, not a difference.

use std::fmt;

use serde_json::json;

use super::{Key, Kind, Object, Snapshot};

/// One object that differs. "Expected" is the snapshot `diff` was called on, "actual" the
/// one it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Only in the actual snapshot.
    Added { key: Key, after: String },
    /// Only in the expected snapshot.
    Removed { key: Key, before: String },
    /// In both, defined differently.
    Changed {
        key: Key,
        before: String,
        after: String,
    },
}

impl Change {
    pub fn key(&self) -> &Key {
        match self {
            Change::Added { key, .. }
            | Change::Removed { key, .. }
            | Change::Changed { key, .. } => key,
        }
    }

    /// `added`, `removed` or `changed`.
    pub fn verb(&self) -> &'static str {
        match self {
            Change::Added { .. } => "added",
            Change::Removed { .. } => "removed",
            Change::Changed { .. } => "changed",
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (before, after) = match self {
            Change::Added { after, .. } => (None, Some(after)),
            Change::Removed { before, .. } => (Some(before), None),
            Change::Changed { before, after, .. } => (Some(before), Some(after)),
        };
        let key = self.key();
        json!({
            "change": self.verb(),
            "kind": key.kind.as_str(),
            "object": key.to_string(),
            "before": before,
            "after": after,
        })
    }
}

/// One line, `+`, `-` or `~` first; a definition over several lines (a function's, a view's)
/// is shown whole on the lines after it, indented.
impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one = |text: &str| !text.trim_end().contains('\n');
        match self {
            Change::Added { key, after } if one(after) => write!(f, "+ {key}: {}", after.trim()),
            Change::Removed { key, before } if one(before) => {
                write!(f, "- {key}: {}", before.trim())
            }
            Change::Changed { key, before, after } if one(before) && one(after) => {
                write!(f, "~ {key}: {} -> {}", before.trim(), after.trim())
            }
            Change::Added { key, after } => write!(f, "+ {key}:\n{}", indent(after)),
            Change::Removed { key, before } => write!(f, "- {key}:\n{}", indent(before)),
            Change::Changed { key, before, after } => write!(
                f,
                "~ {key}:\n    before:\n{}\n    after:\n{}",
                indent(before),
                indent(after)
            ),
        }
    }
}

fn indent(text: &str) -> String {
    let lines: Vec<String> = text
        .trim_end()
        .lines()
        .map(|l| format!("      {l}"))
        .collect();
    lines.join("\n")
}

/// What differs between two snapshots, in the snapshots' order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub changes: Vec<Change>,
    /// Differences that are not changes: a table's columns in another order.
    pub notes: Vec<String>,
}

impl Diff {
    /// No object differs (notes aside).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let changes: Vec<_> = self.changes.iter().map(Change::to_json).collect();
        json!({ "changes": changes, "notes": self.notes })
    }
}

/// Every change, one per line (a long definition on the lines after it), then the notes.
impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines: Vec<String> = self.changes.iter().map(Change::to_string).collect();
        lines.extend(self.notes.iter().map(|note| format!("note: {note}")));
        write!(f, "{}", lines.join("\n"))
    }
}

pub(super) fn compare(expected: &Snapshot, actual: &Snapshot) -> Diff {
    let mut diff = Diff::default();
    // The usual answer, found in one pass.
    if expected.objects == actual.objects {
        return diff;
    }
    for (key, before) in &expected.objects {
        match actual.objects.get(key) {
            None => diff.changes.push(Change::Removed {
                key: key.clone(),
                before: before.definition.clone(),
            }),
            Some(after) if after.definition != before.definition => {
                diff.changes.push(Change::Changed {
                    key: key.clone(),
                    before: before.definition.clone(),
                    after: after.definition.clone(),
                })
            }
            Some(_) => {}
        }
    }
    for (key, after) in &actual.objects {
        if !expected.objects.contains_key(key) {
            diff.changes.push(Change::Added {
                key: key.clone(),
                after: after.definition.clone(),
            });
        }
    }
    // Keys sort by kind first, so the changes read extensions, schemas, types, tables, ...
    diff.changes.sort_by(|a, b| a.key().cmp(b.key()));
    for (key, _) in expected.of(Kind::Table) {
        if let Some(note) = column_order(expected, actual, &key.name) {
            diff.notes.push(note);
        }
    }
    diff
}

/// A note when the columns `table` has in both snapshots come in another order.
fn column_order(expected: &Snapshot, actual: &Snapshot, table: &str) -> Option<String> {
    let names = |snapshot: &Snapshot| -> Vec<String> {
        let columns: Vec<(&Key, &Object)> = snapshot.children(table, Kind::Column);
        columns
            .into_iter()
            .map(|(key, _)| key.name.clone())
            .collect()
    };
    let (before, after) = (names(expected), names(actual));
    let common = |from: &[String], other: &[String]| -> Vec<String> {
        from.iter().filter(|n| other.contains(n)).cloned().collect()
    };
    let (before, after) = (common(&before, &after), common(&after, &before));
    (before != after).then(|| {
        format!(
            "the columns of table {table} are in another order: ({}) and ({})",
            before.join(", "),
            after.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(objects: &[(Kind, &str, &str, i32, &str)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (kind, table, name, position, definition) in objects {
            let key = Key {
                kind: *kind,
                table: table.to_string(),
                name: name.to_string(),
            };
            let object = Object {
                position: *position,
                definition: definition.to_string(),
            };
            snapshot.objects.insert(key, object);
        }
        snapshot
    }

    #[test]
    fn added_removed_and_changed_objects_are_named_with_both_definitions() {
        let t = "public.video_requests";
        let before = snapshot(&[
            (Kind::Table, "", t, 0, ""),
            (Kind::Column, t, "id", 1, "bigint NOT NULL"),
            (Kind::Column, t, "status", 2, "text DEFAULT 'queued'::text"),
            (
                Kind::Index,
                t,
                "public.idx_status",
                0,
                "CREATE INDEX idx_status ON public.video_requests USING btree (status)",
            ),
        ]);
        let after = snapshot(&[
            (Kind::Table, "", t, 0, ""),
            (Kind::Column, t, "id", 1, "bigint NOT NULL"),
            (Kind::Column, t, "status", 2, "text DEFAULT 'pending'::text"),
            (Kind::Column, t, "priority", 3, "integer"),
        ]);
        let diff = before.diff(&after);
        let lines: Vec<String> = diff.changes.iter().map(Change::to_string).collect();
        assert_eq!(
            lines,
            [
                "+ column public.video_requests.priority: integer",
                "~ column public.video_requests.status: text DEFAULT 'queued'::text -> text DEFAULT 'pending'::text",
                "- index public.idx_status on public.video_requests: CREATE INDEX idx_status ON public.video_requests USING btree (status)",
            ]
        );
        assert!(diff.notes.is_empty());
        assert!(before.diff(&before).is_empty());
    }

    #[test]
    fn the_same_columns_in_another_order_are_a_note_not_a_change() {
        let t = "public.t";
        let before = snapshot(&[
            (Kind::Table, "", t, 0, ""),
            (Kind::Column, t, "a", 1, "integer"),
            (Kind::Column, t, "b", 2, "text"),
        ]);
        let after = snapshot(&[
            (Kind::Table, "", t, 0, ""),
            (Kind::Column, t, "b", 1, "text"),
            (Kind::Column, t, "a", 2, "integer"),
        ]);
        let diff = before.diff(&after);
        assert!(diff.is_empty(), "{diff}");
        assert_eq!(
            diff.notes,
            ["the columns of table public.t are in another order: (a, b) and (b, a)"]
        );
    }

    #[test]
    fn a_changed_function_shows_both_bodies_indented() {
        let before = snapshot(&[(
            Kind::Function,
            "",
            "public.f()",
            0,
            "CREATE FUNCTION f()\n AS $$ SELECT 1 $$",
        )]);
        let after = snapshot(&[(
            Kind::Function,
            "",
            "public.f()",
            0,
            "CREATE FUNCTION f()\n AS $$ SELECT 2 $$",
        )]);
        let text = before.diff(&after).to_string();
        assert!(
            text.starts_with("~ function public.f():\n    before:\n      CREATE FUNCTION f()"),
            "{text}"
        );
        assert!(
            text.contains("after:\n      CREATE FUNCTION f()\n       AS $$ SELECT 2 $$"),
            "{text}"
        );
    }
}
