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
            // A table is its name: its columns and constraints are changes of their own.
            Change::Added { key, after } if after.trim().is_empty() => write!(f, "+ {key}"),
            Change::Removed { key, before } if before.trim().is_empty() => write!(f, "- {key}"),
            Change::Added { key, after } if one(after) => write!(f, "+ {key}: {}", after.trim()),
            Change::Removed { key, before } if one(before) => {
                write!(f, "- {key}: {}", before.trim())
            }
            Change::Changed { key, before, after } if one(before) && one(after) => {
                // An empty side: nothing of what the definition lists (a logged table with no
                // options, comment or partitioning, a user mapping without options).
                let side = |text: &str| match text.trim() {
                    "" => "(none)".to_string(),
                    text => text.to_string(),
                };
                write!(f, "~ {key}: {} -> {}", side(before), side(after))
            }
            Change::Added { key, after } => write!(f, "+ {key}:\n{}", indent(after)),
            Change::Removed { key, before } => write!(f, "- {key}:\n{}", indent(before)),
            // A function's body re-indented reads as the same text twice: said at the top.
            Change::Changed { key, before, after } => write!(
                f,
                "~ {key}{}:\n    before:\n{}\n    after:\n{}",
                match same_lines(before, after) {
                    true => " (in white space only)",
                    false => "",
                },
                indent(before),
                indent(after)
            ),
        }
    }
}

/// The same lines, each without the white space around it, blank ones left out: a body
/// indented again. Not the same: a space inside a line, or two lines joined.
fn same_lines(a: &str, b: &str) -> bool {
    fn lines(text: &str) -> impl Iterator<Item = &str> {
        (text.lines().map(str::trim)).filter(|l| !l.is_empty())
    }
    lines(a).eq(lines(b))
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

impl Diff {
    /// Takes out each enum type changed only by values added to it, where `why` explains
    /// those values (given the type and them, each as its quoted literal), and notes it
    /// instead. PostgreSQL cannot drop an enum value: a rollback of a migration that added
    /// one leaves it, and only recreating the type (a rewrite of every table that uses it)
    /// takes it out, which most projects rightly do not do.
    pub fn enum_values_left(&mut self, why: impl Fn(&Key, &[&str]) -> Option<String>) {
        let mut notes = Vec::new();
        self.changes.retain(|change| {
            let Change::Changed { key, before, after } = change else {
                return true;
            };
            if key.kind != Kind::Type {
                return true;
            }
            let (Some(was), Some(now)) = (enum_values(before), enum_values(after)) else {
                return true;
            };
            // The values there before, in their order, with others among them.
            let mut kept = was.iter().peekable();
            let mut added = Vec::new();
            for value in &now {
                match kept.peek() {
                    Some(next) if *next == value => {
                        kept.next();
                    }
                    _ => added.push(*value),
                }
            }
            if kept.peek().is_some() || added.is_empty() {
                return true;
            }
            match why(key, &added) {
                Some(reason) => {
                    notes.push(format!("{key} keeps {}: {reason}", added.join(", ")));
                    false
                }
                None => true,
            }
        });
        self.notes.extend(notes);
    }
}

/// A literal as `quote_literal` writes it (`'it''s'`, `E'a\\b'`), read back.
pub fn literal_value(literal: &str) -> String {
    let (escaped, inner) = match literal.strip_prefix('E') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let inner = inner.strip_prefix('\'').and_then(|i| i.strip_suffix('\''));
    let inner = inner.unwrap_or(literal).replace("''", "'");
    match escaped {
        true => inner.replace("\\\\", "\\"),
        false => inner,
    }
}

/// `schema.name` as the catalog query writes a key's name (each part quoted where it must
/// be), as the two names.
pub fn split_name(qualified: &str) -> (String, String) {
    let unquote = |part: &str| match part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => part.to_string(),
    };
    // The last dot outside quotes.
    let mut quoted = false;
    let mut at = None;
    for (i, c) in qualified.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => at = Some(i),
            _ => {}
        }
    }
    match at {
        Some(i) => (unquote(&qualified[..i]), unquote(&qualified[i + 1..])),
        None => (String::new(), unquote(qualified)),
    }
}

/// The values of an enum type's definition (`AS ENUM ('a', 'b')`), each as its literal.
pub fn enum_values(definition: &str) -> Option<Vec<&str>> {
    let list = definition.strip_prefix("AS ENUM (")?.strip_suffix(')')?;
    let b = list.as_bytes();
    let (mut values, mut i) = (Vec::new(), 0);
    while i < b.len() {
        let start = i;
        if b[i] == b'E' {
            i += 1;
        }
        if b.get(i) != Some(&b'\'') {
            return None;
        }
        i = after_quoted(b, i);
        values.push(&list[start..i]);
        match list[i..].strip_prefix(", ") {
            Some(_) => i += 2,
            None if i == b.len() => {}
            None => return None,
        }
    }
    Some(values)
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
            Some(after) if !same_definition(&before.definition, &after.definition) => {
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

/// Whether two definitions say the same, where they may differ only in where the server put
/// an array's cast. `v IN ('a', 'b')` on a `varchar` column is stored as
/// `v::text = ANY (ARRAY['a'::character varying, 'b'::character varying]::text[])`; that text,
/// as pg_dump writes it and a restore parses it again, becomes a cast of each element
/// (`ARRAY['a'::character varying::text, 'b'::character varying::text]`): the same check,
/// which a database restored from a dump would otherwise show as changed.
fn same_definition(a: &str, b: &str) -> bool {
    a == b || (a.contains("ARRAY[") && b.contains("ARRAY[") && elements_cast(a) == elements_cast(b))
}

/// `text` with each cast of an array of literals (`ARRAY['a'::t, 'b'::t]::u[]`, or as the
/// deparser writes it without its pretty flag, `(ARRAY['a'::t, 'b'::t])::u[]`) moved onto
/// the elements, as a restore leaves it (`ARRAY['a'::t::u, 'b'::t::u]`, or
/// `ARRAY[('a'::t)::u, ('b'::t)::u]`). Anything else stays as it is.
fn elements_cast(text: &str) -> String {
    let b = text.as_bytes();
    let (mut out, mut copied, mut i) = (String::with_capacity(text.len()), 0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                i = after_quoted(b, i);
                continue;
            }
            b'A' if b[i..].starts_with(b"ARRAY[")
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                if let Some((start, end, moved)) = array_cast(text, i) {
                    out.push_str(&text[copied..start]);
                    out.push_str(&moved);
                    (copied, i) = (end, end);
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// The index just past the quoted text (a literal or an identifier) starting at `at`.
fn after_quoted(b: &[u8], at: usize) -> usize {
    let quote = b[at];
    let mut j = at + 1;
    while j < b.len() {
        if b[j] == quote {
            if b.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// For the `ARRAY[` at `at`: (start, end, text) of the array and its cast rewritten with the
/// cast on each element, when the elements are all casts of literals and a cast to an
/// array type follows.
fn array_cast(text: &str, at: usize) -> Option<(usize, usize, String)> {
    let b = text.as_bytes();
    let open = at + "ARRAY".len();
    let (mut depth, mut j, mut from) = (0usize, open + 1, open + 1);
    let mut elements = Vec::new();
    let close = loop {
        match *b.get(j)? {
            b'\'' | b'"' => {
                j = after_quoted(b, j);
                continue;
            }
            b'[' | b'(' => depth += 1,
            b']' if depth == 0 => break j,
            b']' | b')' => depth = depth.checked_sub(1)?,
            b',' if depth == 0 => {
                elements.push(text[from..j].trim());
                from = j + 1;
            }
            _ => {}
        }
        j += 1;
    };
    elements.push(text[from..close].trim());
    let literal = |e: &str| {
        e.starts_with('\'') && {
            let rest = &e[after_quoted(e.as_bytes(), 0)..];
            rest.starts_with("::") && !rest.contains(['\'', '"'])
        }
    };
    if !elements.iter().all(|e| literal(e)) {
        return None;
    }
    let wrapped = at > 0 && b[at - 1] == b'(' && b[close + 1..].starts_with(b")::");
    let start_of_type = match wrapped {
        true => close + 4,
        false if b[close + 1..].starts_with(b"::") => close + 3,
        false => return None,
    };
    // The type runs to its `[]`; a typmod's parentheses may come before it.
    let (mut depth, mut k) = (0usize, start_of_type);
    let end_of_type = loop {
        match *b.get(k)? {
            b'[' if depth == 0 && b.get(k + 1) == Some(&b']') => break k,
            b'(' => depth += 1,
            b')' => depth = depth.checked_sub(1)?,
            b',' | b'\'' | b'[' | b']' if depth == 0 => return None,
            _ => {}
        }
        k += 1;
    };
    let element_type = &text[start_of_type..end_of_type];
    if element_type.trim().is_empty() {
        return None;
    }
    let cast: Vec<String> = (elements.iter())
        .map(|e| match wrapped {
            true => format!("({e})::{element_type}"),
            false => format!("{e}::{element_type}"),
        })
        .collect();
    let start = if wrapped { at - 1 } else { at };
    Some((
        start,
        end_of_type + 2,
        format!("ARRAY[{}]", cast.join(", ")),
    ))
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
    fn literals_and_qualified_names_are_read_back() {
        assert_eq!(literal_value("'it''s'"), "it's");
        assert_eq!(literal_value("E'a\\\\b'"), "a\\b");
        assert_eq!(
            split_name("public.\"My.Type\"\"\""),
            ("public".into(), "My.Type\"".into())
        );
        assert_eq!(split_name("app.kind"), ("app".into(), "kind".into()));
    }

    #[test]
    fn a_table_made_logged_again_shows_what_it_is_now() {
        let table = |definition: &str| snapshot(&[(Kind::Table, "", "public.t", 0, definition)]);
        let diff = table("UNLOGGED").diff(&table(""));
        assert_eq!(
            diff.to_string().trim_end(),
            "~ table public.t: UNLOGGED -> (none)"
        );
    }

    #[test]
    fn a_definition_changed_in_white_space_only_says_so() {
        let function = |body: &str| snapshot(&[(Kind::Function, "", "public.f()", 0, body)]);
        let before = function("CREATE FUNCTION f()\nBEGIN\n  RETURN 1;\nEND\n");
        let diff = before.diff(&function(
            "CREATE FUNCTION f()\nBEGIN\n      RETURN 1;\nEND\n",
        ));
        assert!(
            diff.to_string()
                .starts_with("~ function public.f() (in white space only):\n")
        );
        for other in [
            "CREATE FUNCTION f()\nBEGIN\n  RETURN 2;\nEND\n",
            "CREATE FUNCTION f()\nBEGIN  RETURN 1;\nEND\n",
            "CREATE FUNCTION f()\nBEGIN\n  RETURN  1;\nEND\n",
        ] {
            let diff = before.diff(&function(other));
            assert!(
                diff.to_string().starts_with("~ function public.f():\n"),
                "{diff}"
            );
        }
    }

    #[test]
    fn enum_values_added_and_left_are_a_note_when_explained() {
        let ty = |values: &str| snapshot(&[(Kind::Type, "", "public.kind", 0, values)]);
        let before = ty("AS ENUM ('a', 'b')");
        let explained = |_: &Key, added: &[&str]| Some(format!("{} explained", added.len()));
        // Values added before, between and after the old ones, one with a quote in it.
        let mut diff = before.diff(&ty("AS ENUM ('z', 'a', 'it''s', 'b', E'c\\\\d')"));
        diff.enum_values_left(explained);
        assert!(diff.is_empty(), "{diff}");
        assert_eq!(
            diff.notes,
            ["type public.kind keeps 'z', 'it''s', E'c\\\\d': 3 explained"]
        );
        // A value gone, or the old ones in another order, is a change still.
        for after in ["AS ENUM ('a')", "AS ENUM ('b', 'a', 'c')"] {
            let mut diff = before.diff(&ty(after));
            diff.enum_values_left(explained);
            assert_eq!(diff.changes.len(), 1, "{after}");
        }
        // As is one left unexplained.
        let mut diff = before.diff(&ty("AS ENUM ('a', 'b', 'c')"));
        diff.enum_values_left(|_, _| None);
        assert_eq!(diff.changes.len(), 1);
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
    fn an_array_cast_onto_its_elements_by_a_restore_is_the_same_definition() {
        // As the server deparses a constraint (pretty) and an index (not), built from the
        // migration and after pg_dump and a restore.
        let pairs = [
            (
                "CHECK (s::text = ANY (ARRAY['a'::character varying, 'b'::character varying]::text[]))",
                "CHECK (s::text = ANY (ARRAY['a'::character varying::text, 'b'::character varying::text]))",
            ),
            (
                "CREATE INDEX i ON public.t USING btree (v) WHERE ((v)::text = ANY ((ARRAY['a'::character varying, 'it''s'::character varying(10)])::text[]))",
                "CREATE INDEX i ON public.t USING btree (v) WHERE ((v)::text = ANY (ARRAY[('a'::character varying)::text, ('it''s'::character varying(10))::text]))",
            ),
        ];
        for (built, restored) in pairs {
            assert!(same_definition(built, restored), "{built}");
            assert!(same_definition(restored, built), "{built}");
            assert_eq!(elements_cast(restored), restored);
        }
        // Other values, or what is not a cast of literals, still differ.
        let differ = [
            (
                "CHECK (s::text = ANY (ARRAY['a'::character varying, 'b'::character varying]::text[]))",
                "CHECK (s::text = ANY (ARRAY['a'::character varying::text, 'c'::character varying::text]))",
            ),
            (
                "CHECK (s::text = ANY (ARRAY[lower('A'::text), 'b'::text]::text[]))",
                "CHECK (s::text = ANY (ARRAY[lower('A'::text)::text, 'b'::text::text]))",
            ),
            (
                "CHECK (s <> 'ARRAY[''a''::t]::u[]'::text)",
                "CHECK (s <> 'ARRAY[''a''::t::u]'::text)",
            ),
        ];
        for (a, b) in differ {
            assert!(!same_definition(a, b), "{a}");
        }
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
