//! A snapshot as SQL-like text for review: one statement per object, in a fixed order (kind,
//! then name), a table followed by its constraints, indexes, triggers and policies. It reads
//! like a dump but is not one: owners and grants (unless asked for) and data are left out, and a
//! definition is what the server's deparser gives, so the text changes only when the schema does.

use super::{Kind, Snapshot};

/// The first line of every rendering; the second when owners and grants were asked for.
const HEADER: &str = "-- Schema as db-migrate reads it from the catalogs (`db-migrate schema`); \
the history table, owners and grants are left out.";
const HEADER_PRIVILEGES: &str = "-- Schema as db-migrate reads it from the catalogs \
(`db-migrate schema --privileges`); the history table is left out.";

pub(super) fn render(snapshot: &Snapshot) -> String {
    let mut blocks: Vec<String> = Vec::new();
    for (key, object) in snapshot.of(Kind::Extension) {
        // Every database has PL/pgSQL, as it has the public schema.
        if key.name == "plpgsql" {
            continue;
        }
        blocks.push(format!(
            "CREATE EXTENSION IF NOT EXISTS {} {};",
            key.name, object.definition
        ));
    }
    for (key, _) in snapshot.of(Kind::Schema) {
        // Every database has it; saying so would only be noise.
        if key.name != "public" {
            blocks.push(format!("CREATE SCHEMA {};", key.name));
        }
    }
    for (key, object) in snapshot.of(Kind::Collation) {
        blocks.push(format!(
            "CREATE COLLATION {} ({});",
            key.name, object.definition
        ));
    }
    for (key, object) in snapshot.of(Kind::Type) {
        blocks.push(match object.definition.strip_prefix("DOMAIN ") {
            Some(domain) => format!("CREATE DOMAIN {} {domain};", key.name),
            None => format!("CREATE TYPE {} {};", key.name, object.definition),
        });
    }
    for (key, object) in snapshot.of(Kind::Sequence) {
        blocks.push(format!(
            "CREATE SEQUENCE {} {};",
            key.name, object.definition
        ));
    }
    for (key, object) in snapshot.of(Kind::Table) {
        blocks.push(table(snapshot, &key.name, &object.definition));
    }
    for kind in [Kind::View, Kind::MaterializedView] {
        for (key, object) in snapshot.of(kind) {
            let definition = object.definition.trim_end().trim_end_matches(';');
            blocks.push(format!(
                "CREATE {} {} AS\n{definition};",
                kind.as_str().to_uppercase(),
                key.name
            ));
            blocks.extend(children(snapshot, &key.name));
        }
    }
    for kind in [Kind::Function, Kind::Procedure] {
        for (key, object) in snapshot.of(kind) {
            blocks.push(match object.definition.strip_prefix("AGGREGATE ") {
                Some(parts) => format!("-- aggregate {}: {parts}", key.name),
                None => format!("{};", object.definition.trim_end()),
            });
        }
    }
    for (key, object) in snapshot.of(Kind::EventTrigger) {
        let sql = format!("CREATE EVENT TRIGGER {} {}", key.name, object.definition);
        blocks.push(statement(&sql));
    }
    for (key, object) in snapshot.of(Kind::Publication) {
        blocks.push(format!(
            "-- publication {}: {}",
            key.name, object.definition
        ));
    }
    for (key, object) in snapshot.of(Kind::Cast) {
        blocks.push(format!("CREATE CAST {} {};", key.name, object.definition));
    }
    let others = [
        Kind::Operator,
        Kind::TextSearchDictionary,
        Kind::TextSearchConfiguration,
        Kind::ForeignDataWrapper,
        Kind::ForeignServer,
        Kind::UserMapping,
    ];
    for kind in others {
        for (key, object) in snapshot.of(kind) {
            let definition = match object.definition.is_empty() {
                true => String::new(),
                false => format!(": {}", object.definition),
            };
            blocks.push(format!("-- {key}{definition}"));
        }
    }
    let comments: Vec<String> = (snapshot.of(Kind::Comment))
        .map(|(key, object)| format!("-- comment on {}: {}", key.name, object.definition))
        .collect();
    if !comments.is_empty() {
        blocks.push(comments.join("\n"));
    }
    let privileges: Vec<String> = (snapshot.of(Kind::Privileges))
        .map(|(key, object)| format!("-- privileges on {}: {}", key.name, object.definition))
        .collect();
    let header = match privileges.is_empty() {
        true => HEADER,
        false => HEADER_PRIVILEGES,
    };
    if !privileges.is_empty() {
        blocks.push(privileges.join("\n"));
    }
    let mut text = String::from(header);
    for block in blocks {
        text.push_str("\n\n");
        text.push_str(&block);
    }
    text.push('\n');
    text
}

/// `CREATE TABLE` with its columns in the table's order, then what belongs to it.
fn table(snapshot: &Snapshot, name: &str, options: &str) -> String {
    let columns: Vec<String> = snapshot
        .children(name, Kind::Column)
        .into_iter()
        .map(|(key, object)| format!("    {} {}", key.name, object.definition))
        .collect();
    let options = match options {
        "" => String::new(),
        options => format!(" {options}"),
    };
    let mut lines = vec![format!(
        "CREATE TABLE {name} (\n{}\n){options};",
        columns.join(",\n")
    )];
    lines.extend(children(snapshot, name));
    lines.join("\n")
}

/// A table's (or view's) constraints, indexes, triggers, policies, extended statistics and
/// rules.
fn children(snapshot: &Snapshot, table: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for (key, object) in snapshot.children(table, Kind::Constraint) {
        lines.push(format!(
            "ALTER TABLE {table} ADD CONSTRAINT {} {};",
            key.name, object.definition
        ));
    }
    for kind in [Kind::Index, Kind::Trigger] {
        for (_, object) in snapshot.children(table, kind) {
            lines.push(statement(&object.definition));
        }
    }
    for (key, object) in snapshot.children(table, Kind::Policy) {
        lines.push(format!(
            "CREATE POLICY {} ON {table} {};",
            key.name, object.definition
        ));
    }
    for kind in [Kind::Statistics, Kind::Rule] {
        for (_, object) in snapshot.children(table, kind) {
            lines.push(statement(&object.definition));
        }
    }
    lines
}

/// A definition as a statement: `;` before a trailing `-- INVALID` or `-- DISABLED`.
fn statement(definition: &str) -> String {
    match definition.split_once(" -- ") {
        Some((sql, note)) => format!("{sql}; -- {note}"),
        None => format!("{definition};"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Key, Object};
    use super::*;

    fn add(
        snapshot: &mut Snapshot,
        kind: Kind,
        table: &str,
        name: &str,
        position: i32,
        definition: &str,
    ) {
        let key = Key {
            kind,
            table: table.into(),
            name: name.into(),
        };
        let object = Object {
            position,
            definition: definition.into(),
        };
        snapshot.objects.insert(key, object);
    }

    #[test]
    fn every_kind_prints_as_a_statement_in_a_fixed_order() {
        let mut s = Snapshot::default();
        let t = "public.video_requests";
        add(
            &mut s,
            Kind::Function,
            "",
            "public.touch()",
            0,
            "CREATE OR REPLACE FUNCTION public.touch()\n RETURNS trigger\n LANGUAGE plpgsql\nAS $function$BEGIN RETURN NEW; END$function$\n",
        );
        add(
            &mut s,
            Kind::View,
            "",
            "public.recent",
            0,
            " SELECT id\n   FROM video_requests;",
        );
        add(
            &mut s,
            Kind::Policy,
            t,
            "own_rows",
            0,
            "AS PERMISSIVE FOR SELECT TO PUBLIC USING ((user_id = 'x'::text))",
        );
        add(
            &mut s,
            Kind::Trigger,
            t,
            "touch",
            0,
            "CREATE TRIGGER touch BEFORE UPDATE ON public.video_requests FOR EACH ROW EXECUTE FUNCTION touch()",
        );
        add(
            &mut s,
            Kind::Index,
            t,
            "public.idx_status",
            0,
            "CREATE INDEX idx_status ON public.video_requests USING btree (status) -- INVALID",
        );
        add(
            &mut s,
            Kind::Constraint,
            t,
            "video_requests_pkey",
            0,
            "PRIMARY KEY (id)",
        );
        add(
            &mut s,
            Kind::Column,
            t,
            "status",
            2,
            "request_status NOT NULL DEFAULT 'queued'::request_status",
        );
        add(
            &mut s,
            Kind::Column,
            t,
            "id",
            1,
            "bigint NOT NULL GENERATED ALWAYS AS IDENTITY",
        );
        add(&mut s, Kind::Table, "", t, 0, "ROW LEVEL SECURITY");
        add(
            &mut s,
            Kind::Sequence,
            "",
            "public.tickets",
            0,
            "AS bigint START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1",
        );
        add(
            &mut s,
            Kind::Type,
            "",
            "public.request_status",
            0,
            "AS ENUM ('queued', 'done')",
        );
        add(
            &mut s,
            Kind::Type,
            "",
            "public.url",
            0,
            "DOMAIN AS text CONSTRAINT url_check CHECK (VALUE ~~ 'https://%'::text)",
        );
        add(&mut s, Kind::Schema, "", "public", 0, "");
        add(&mut s, Kind::Schema, "", "app", 0, "");
        add(
            &mut s,
            Kind::Extension,
            "",
            "pgcrypto",
            0,
            "WITH SCHEMA public VERSION '1.3'",
        );
        let expected = format!(
            "{HEADER}

CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public VERSION '1.3';

CREATE SCHEMA app;

CREATE TYPE public.request_status AS ENUM ('queued', 'done');

CREATE DOMAIN public.url AS text CONSTRAINT url_check CHECK (VALUE ~~ 'https://%'::text);

CREATE SEQUENCE public.tickets AS bigint START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1;

CREATE TABLE public.video_requests (
    id bigint NOT NULL GENERATED ALWAYS AS IDENTITY,
    status request_status NOT NULL DEFAULT 'queued'::request_status
) ROW LEVEL SECURITY;
ALTER TABLE public.video_requests ADD CONSTRAINT video_requests_pkey PRIMARY KEY (id);
CREATE INDEX idx_status ON public.video_requests USING btree (status); -- INVALID
CREATE TRIGGER touch BEFORE UPDATE ON public.video_requests FOR EACH ROW EXECUTE FUNCTION touch();
CREATE POLICY own_rows ON public.video_requests AS PERMISSIVE FOR SELECT TO PUBLIC USING ((user_id = 'x'::text));

CREATE VIEW public.recent AS
 SELECT id
   FROM video_requests;

CREATE OR REPLACE FUNCTION public.touch()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$BEGIN RETURN NEW; END$function$;
"
        );
        assert_eq!(s.text(), expected);
        assert_eq!(s.text(), s.clone().text());
    }
}
