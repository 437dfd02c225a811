//! What a statement does to existing tables, read from PostgreSQL's own parse tree
//! (libpg_query, through the `pg_query` crate): the grammar the server itself uses, so quoting,
//! comments and dollar-quoted bodies can never mislead it.

use pg_query::NodeEnum;
use pg_query::protobuf::{
    AlterTableType, ConstrType, DropBehavior, Node, ObjectType, RangeVar, ReindexObjectType,
    RoleSpecType, VariableSetKind,
};

/// A table (or other relation) as the statement names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name {
    pub schema: Option<String>,
    pub name: String,
}

impl Name {
    fn of(range: &RangeVar) -> Name {
        Name {
            schema: Some(range.schemaname.clone()).filter(|s| !s.is_empty()),
            name: range.relname.clone(),
        }
    }

    /// An unqualified name (a schema's own).
    pub fn bare(name: &str) -> Name {
        Name {
            schema: None,
            name: name.to_string(),
        }
    }

    /// From a dotted list of string nodes (`DROP TABLE a.b`).
    fn of_list(items: &[Node]) -> Option<Name> {
        let parts: Vec<String> = items.iter().filter_map(string).collect();
        match parts.as_slice() {
            [name] => Some(Name {
                schema: None,
                name: name.clone(),
            }),
            [.., schema, name] => Some(Name {
                schema: Some(schema.clone()),
                name: name.clone(),
            }),
            [] => None,
        }
    }

    /// The name as SQL would write it, quoted where needed, for `to_regclass`.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&self.name)),
            None => quote(&self.name),
        }
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.sql())
    }
}

/// An identifier quoted unless it is plain lower case and no keyword that would read as one
/// there: a table named `order` or `user` is `"order"` in SQL (and to `to_regclass`), and a
/// type named `char` is not `character`. Unreserved keywords read as names everywhere.
fn quote(identifier: &str) -> String {
    let plain = identifier
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_lowercase() || (i > 0 && c.is_ascii_digit()));
    match plain && !identifier.is_empty() && !keyword(identifier) {
        true => identifier.to_string(),
        false => format!("\"{}\"", identifier.replace('"', "\"\"")),
    }
}

/// Whether `word` is a keyword other than an unreserved one, as PostgreSQL's own scanner
/// classifies it. Keywords are letters and `_`, none longer than `current_timestamp`: other
/// words are answered without asking the scanner.
fn keyword(word: &str) -> bool {
    if word.len() > 17 || word.bytes().any(|b| b.is_ascii_digit()) {
        return false;
    }
    let unreserved = pg_query::protobuf::KeywordKind::UnreservedKeyword as i32;
    pg_query::scan_tokens(word)
        .is_ok_and(|tokens| tokens.first().is_some_and(|t| t.keyword_kind > unreserved))
}

/// What a statement does, for the statements whose finding has a fix of its own
/// (`Rule::fix_for`).
/// `ALTER COLUMN ... SET NOT NULL`, whose fix is a validated CHECK first.
pub const SET_NOT_NULL: &str = "SET NOT NULL";

pub const CLUSTER: &str = "CLUSTER";
pub const VACUUM_FULL: &str = "VACUUM FULL";
pub const REFRESH_VIEW: &str = "REFRESH MATERIALIZED VIEW without CONCURRENTLY";
pub const REINDEX_TABLE: &str = "REINDEX TABLE";
pub const REINDEX_INDEX: &str = "REINDEX INDEX";
pub const INDEX_ON_PARTITIONED: &str = "CREATE INDEX on a partitioned table";
pub const FOREIGN_KEY_ON_PARTITIONED: &str =
    "ADD CONSTRAINT ... FOREIGN KEY on a partitioned table";
/// What a statement does that reads as [`INDEX_ON_PARTITIONED`] or
/// [`FOREIGN_KEY_ON_PARTITIONED`] when its table is partitioned.
pub const CREATE_INDEX: &str = "CREATE INDEX";
/// On a partitioned table it builds nothing: an invalid index that partitions' are attached to.
pub const CREATE_INDEX_ON_ONLY: &str = "CREATE INDEX ... ON ONLY";
pub const ADD_FOREIGN_KEY: &str = "ADD CONSTRAINT ... FOREIGN KEY without NOT VALID";
pub const ADD_KEY: &str = "a PRIMARY KEY, UNIQUE or EXCLUDE constraint without USING INDEX";
pub const KEY_ON_PARTITIONED: &str = "a PRIMARY KEY or UNIQUE constraint on a partitioned table";
/// A `DELETE FROM pg_enum` of labels that rows still hold: the server then cannot read those
/// rows (`invalid internal value for enum`), so the table is unreadable, not just smaller.
pub const DELETE_ENUM_LABEL: &str = "DELETE FROM pg_enum of a label that rows hold";
/// A `DELETE FROM pg_enum` whose labels, or the rows holding them, could not be told (its
/// clauses did not run as a query, or the counts ran out of time): refused all the same.
pub const DELETE_ENUM_UNTOLD: &str =
    "DELETE FROM pg_enum whose labels, or the rows holding them, could not be told";

/// One thing a statement does that the rules weigh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Creates a table (or an index under its own name): later statements on it touch
    /// nothing that existed before. With IF NOT EXISTS it creates nothing when the relation
    /// is already there, and they touch the old one.
    Creates {
        relation: Name,
        if_not_exists: bool,
    },
    /// Builds an index on `table`: without CONCURRENTLY it blocks the table's writes while
    /// it builds (`CREATE INDEX`, a new PRIMARY KEY or UNIQUE constraint).
    BuildsIndex {
        table: Name,
        concurrently: bool,
        what: &'static str,
    },
    /// Rewrites the whole table under ACCESS EXCLUSIVE (no reads, no writes meanwhile).
    Rewrites {
        table: Name,
        what: &'static str,
    },
    /// ALTER COLUMN ... TYPE: rewrites the table, unless the column's type only widens
    /// (`varchar(n)` to a longer one or `text`, a `numeric` with more digits): `to` is the new
    /// type's name and modifiers when the statement gives no USING, collation or array.
    Retypes {
        table: Name,
        column: String,
        to: Option<(String, Vec<i32>)>,
    },
    /// Reads the whole table to validate it, under a lock that blocks its writes; `not_null`
    /// is the column of a `SET NOT NULL`, which a validated `CHECK (column IS NOT NULL)`
    /// spares the read.
    Validates {
        table: Name,
        what: &'static str,
        not_null: Option<String>,
    },
    DropsTable {
        table: Name,
    },
    DropsColumn {
        table: Name,
        column: String,
    },
    Truncates {
        table: Name,
    },
    /// A DROP ... CASCADE (or TRUNCATE ... CASCADE) whose reach the statement does not name:
    /// the tables and columns that depend on `object` go with it, found in the catalog.
    DropsDependents {
        object: Dropped,
        what: &'static str,
    },
    /// DELETE or UPDATE without WHERE; an UPDATE's `columns` are those its SET writes (none
    /// for a DELETE).
    ChangesAllRows {
        table: Name,
        what: &'static str,
        columns: Vec<String>,
    },
    /// ADD COLUMN: after it the column is a new one, holding its default or NULL in every
    /// row, so filling it in (a backfill) loses nothing. `not_null`: added `NOT NULL` (or as
    /// the primary key), so a later `SET NOT NULL` has nothing to read. With IF NOT EXISTS it
    /// is new only where the table does not have it yet (Harbor's `ADD COLUMN IF NOT EXISTS
    /// revision` then `UPDATE schedule SET revision = 0`).
    AddsColumn {
        table: Name,
        column: String,
        not_null: bool,
        if_not_exists: bool,
        /// How many of the effects after this one are the new column's (its rewrite, its
        /// constraints' scans and index builds): none of them happens when IF NOT EXISTS
        /// finds the column there.
        then: usize,
    },
    /// ADD COLUMN whose rewrite only the catalog can tell: of a type that may be a domain
    /// with constraints (PostgreSQL writes every row to check them), or with a default that
    /// calls functions the rules do not know, any of which may be volatile. `of_type` is the
    /// type as SQL writes it; `calls` each called function's schema (when named) and name;
    /// `own_default` whether the column has a default of its own (a domain's default, which
    /// may be volatile too, applies only when it has not); `path` the schemas of the
    /// migration's own `SET search_path` before it, where its unqualified names resolve
    /// (empty: the run's).
    MayRewrite {
        table: Name,
        of_type: Option<String>,
        calls: Vec<(Option<String>, String)>,
        own_default: bool,
        path: Vec<String>,
    },
    /// ADD CONSTRAINT ... NOT VALID of a named CHECK or FOREIGN KEY: the lock it takes is
    /// held to the end of its transaction.
    AddsNotValid {
        table: Name,
        constraint: String,
    },
    /// VALIDATE CONSTRAINT: reads the whole table, under a lock that blocks no writes unless
    /// its transaction added the constraint and still holds that statement's lock.
    ValidatesConstraint {
        table: Name,
        constraint: String,
    },
    /// REINDEX INDEX without CONCURRENTLY: blocks the writes of the index's table (and the
    /// reads that would use the index) while it builds; the table is found in the catalog,
    /// where the effect becomes a [`BuildsIndex`](Effect::BuildsIndex) on it.
    ReindexesIndex {
        index: Name,
    },
    /// RENAME of a table or column the running bot still uses by its old name, or a table
    /// moved to another schema (`SET SCHEMA`), where the bot's unqualified name no longer
    /// finds it. `to` is the new name; its schema is set only by a move (a renamed table
    /// stays in its schema, which is resolved later, through the file's search path).
    Renames {
        table: Name,
        column: Option<String>,
        to: Name,
    },
    /// Fails when run twice (CREATE without IF NOT EXISTS, DROP without IF EXISTS).
    NotIdempotent {
        what: &'static str,
    },
    /// `DELETE FROM pg_enum`, the way to take a label out of an enum type that PostgreSQL
    /// has no statement for (Hyperswitch's rollbacks of `ADD VALUE`): which labels go, and
    /// which columns hold them, only the catalog and the tables can tell. `reference`: how
    /// the statement's own clauses name `pg_enum` (its alias, or the table's name), as SQL.
    DeletesEnumLabels {
        reference: String,
    },
}

/// An object a DROP or TRUNCATE ... CASCADE takes other objects with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// A table, view, materialized view, sequence or foreign table.
    Relation(Name),
    Schema(String),
    /// A type or a domain.
    Type(Name),
    Extension(String),
    /// A function, aggregate or routine, with its argument types as SQL writes them (`None`
    /// when the statement names none: then the name alone must find it). What computes with
    /// it goes with it: a generated column, a materialized view.
    Function {
        name: Name,
        args: Option<Vec<String>>,
    },
    /// Everything a role owns in the database, as DROP OWNED drops it: its tables, and (with
    /// CASCADE) what depends on what it owns.
    Owned(Role),
    /// A table emptied by TRUNCATE ... CASCADE: the tables whose foreign keys reference it
    /// are emptied too.
    Referenced(Name),
}

/// A role as a statement names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Named(String),
    /// `CURRENT_USER` or `CURRENT_ROLE`.
    Current,
    /// `SESSION_USER`.
    Session,
}

/// What each `ALTER TYPE ... ADD VALUE IF NOT EXISTS` of `sql` adds: the type's schema (when
/// named), its name and the value. `verify --schema` takes a value left on the target for a
/// rollback's leftover only where a pending migration adds it so, and will again.
pub fn enum_values_added(sql: &str) -> Vec<(Option<String>, String, String)> {
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        return Vec::new();
    };
    (parsed.protobuf.stmts.iter())
        .filter_map(|raw| match raw.stmt.as_ref()?.node.as_ref()? {
            NodeEnum::AlterEnumStmt(alter)
                if alter.skip_if_new_val_exists && alter.old_val.is_empty() =>
            {
                let parts: Vec<String> = alter.type_name.iter().filter_map(string).collect();
                match parts.as_slice() {
                    [name] => Some((None, name.clone(), alter.new_val.clone())),
                    [.., schema, name] => {
                        Some((Some(schema.clone()), name.clone(), alter.new_val.clone()))
                    }
                    [] => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// The schemas `sql` creates (`CREATE SCHEMA name`, or `CREATE SCHEMA AUTHORIZATION role`,
/// named after the role); `None` when that cannot be told: it does not parse, names the
/// schema after `CURRENT_USER`, or may make or rename one out of sight (a `DO` block's
/// `EXECUTE`, a `CALL`, `ALTER SCHEMA ... RENAME`).
pub fn schemas_created(sql: &str) -> Option<Vec<String>> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).ok()?;
    let mut names = Vec::new();
    for raw in &parsed.protobuf.stmts {
        match raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
            Some(NodeEnum::CreateSchemaStmt(create)) => {
                let name = match (create.schemaname.as_str(), &create.authrole) {
                    ("", Some(role)) if !role.rolename.is_empty() => role.rolename.clone(),
                    ("", _) => return None,
                    (name, _) => name.to_string(),
                };
                names.push(name);
            }
            Some(NodeEnum::DoStmt(_) | NodeEnum::CallStmt(_)) => return None,
            Some(NodeEnum::RenameStmt(rename))
                if rename.rename_type == ObjectType::ObjectSchema as i32 =>
            {
                return None;
            }
            _ => {}
        }
    }
    Some(names)
}

/// The `what` of a `CREATE INDEX` without a name, which IF NOT EXISTS cannot be given.
pub const UNNAMED_INDEX: &str = "CREATE INDEX without a name";

/// What a `SET search_path` statement sets: `Some(Some(schemas))` for a list, `Some(None)`
/// for a return to the session's default (`RESET`, `DEFAULT`), `None` for any other
/// statement.
pub fn search_path(statement: &str) -> Option<Option<Vec<String>>> {
    let parsed = pg_query::parse(statement, pg_query::ParserOptions::DEFAULT).ok()?;
    let raw = parsed.protobuf.stmts.first()?;
    let set = match raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
        Some(NodeEnum::VariableSetStmt(set)) => set,
        Some(NodeEnum::SelectStmt(select)) => return set_config(select).map(Some),
        _ => return None,
    };
    let all = set.kind == VariableSetKind::VarResetAll as i32;
    if !all && !set.name.eq_ignore_ascii_case("search_path") {
        return None;
    }
    if set.kind != VariableSetKind::VarSetValue as i32 {
        return Some(None);
    }
    let schemas = set
        .args
        .iter()
        .filter_map(|arg| match &arg.node {
            Some(NodeEnum::AConst(constant)) => match &constant.val {
                Some(pg_query::protobuf::a_const::Val::Sval(s)) => Some(s.sval.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    Some(Some(schemas))
}

/// The schemas of `SELECT [pg_catalog.]set_config('search_path', 'a, "B"', is_local)`, the
/// form `pg_dump` writes and files copied from it keep: the list as the server reads it.
fn set_config(select: &pg_query::protobuf::SelectStmt) -> Option<Vec<String>> {
    let [target] = select.target_list.as_slice() else {
        return None;
    };
    let Some(NodeEnum::ResTarget(target)) = &target.node else {
        return None;
    };
    let Some(NodeEnum::FuncCall(call)) = target.val.as_ref().and_then(|v| v.node.as_ref()) else {
        return None;
    };
    let name: Vec<String> = call.funcname.iter().filter_map(string).collect();
    if !matches!(name.as_slice(), [f] | [_, f] if f == "set_config")
        || name
            .first()
            .is_some_and(|s| name.len() == 2 && s != "pg_catalog")
    {
        return None;
    }
    let text = |node: &Node| match &node.node {
        Some(NodeEnum::AConst(constant)) => match &constant.val {
            Some(pg_query::protobuf::a_const::Val::Sval(s)) => Some(s.sval.clone()),
            _ => None,
        },
        _ => None,
    };
    let [setting, value, _] = call.args.as_slice() else {
        return None;
    };
    if !text(setting)?.eq_ignore_ascii_case("search_path") {
        return None;
    }
    Some(schema_list(&text(value)?))
}

/// A `search_path` value as the server splits it (`SplitIdentifierString`): commas between
/// names, a double-quoted name kept as written (`""` for a quote), another with A-Z folded to
/// lower case, each cut to 63 bytes.
fn schema_list(value: &str) -> Vec<String> {
    let space = |c: &char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c' | '\x0b');
    let mut schemas = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.next_if(space).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    '"' => break,
                    c => name.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                name.push(c);
            }
            name = name.trim_end_matches(|c| space(&c)).to_ascii_lowercase();
        }
        while chars.next_if(|c| *c != ',').is_some() {}
        while name.len() > 63 {
            name.pop();
        }
        if !name.is_empty() {
            schemas.push(name);
        }
        if chars.next().is_none() {
            return schemas;
        }
    }
}

impl Effect {
    /// What kind of object [`table_mut`](Self::table_mut) names, as a search path finds it:
    /// `t` a type (or domain), `f` a function, `r` a relation.
    pub fn named_kind(&self) -> &'static str {
        match self {
            Effect::DropsDependents {
                object: Dropped::Type(_),
                ..
            } => "t",
            Effect::DropsDependents {
                object: Dropped::Function { .. },
                ..
            } => "f",
            _ => "r",
        }
    }

    /// The table (or relation) the effect concerns, to qualify by a search path.
    pub fn table_mut(&mut self) -> Option<&mut Name> {
        match self {
            Effect::Creates { relation, .. } => Some(relation),
            Effect::BuildsIndex { table, .. }
            | Effect::Rewrites { table, .. }
            | Effect::Retypes { table, .. }
            | Effect::Validates { table, .. }
            | Effect::DropsTable { table }
            | Effect::DropsColumn { table, .. }
            | Effect::Truncates { table }
            | Effect::ChangesAllRows { table, .. }
            | Effect::AddsColumn { table, .. }
            | Effect::MayRewrite { table, .. }
            | Effect::AddsNotValid { table, .. }
            | Effect::ValidatesConstraint { table, .. }
            | Effect::ReindexesIndex { index: table }
            | Effect::Renames { table, .. } => Some(table),
            Effect::DropsDependents {
                object:
                    Dropped::Relation(table)
                    | Dropped::Type(table)
                    | Dropped::Referenced(table)
                    | Dropped::Function { name: table, .. },
                ..
            } => Some(table),
            Effect::DropsDependents { .. }
            | Effect::NotIdempotent { .. }
            | Effect::DeletesEnumLabels { .. } => None,
        }
    }
}

/// PostgreSQL's table lock modes by their number (`LOCKMODE`, 0 for none), as `pg_locks`
/// names them.
pub const LOCK_MODES: [&str; 9] = [
    "",
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

/// The lock that blocks the bot's queries (SHARE or stronger) which a statement takes on each
/// table it names, by PostgreSQL's lock levels, for the statements migrations take such locks
/// with (`ALTER TABLE` by its strongest subcommand, `CREATE INDEX`, `CREATE TRIGGER`,
/// `TRUNCATE`, `DROP TABLE`, renames, `SET SCHEMA`, `LOCK`, `REFRESH MATERIALIZED VIEW`,
/// `CLUSTER`, `REINDEX`, `DROP INDEX`, a new table's foreign keys and a new partition's
/// parent, policies, rules, and dropping or renaming a trigger, policy or rule; an index is
/// named for its table). What a `DO` block runs is not read. `plan` sees locks in `pg_locks`; this is for the one lock it cannot see there:
/// one its transaction already holds, from an earlier migration of the plan, taken again
/// (no new row). A mode guessed wrong is one the transaction does not hold, and is not shown.
pub fn strong_locks(statement: &str) -> Vec<(Name, &'static str)> {
    let Ok(parsed) = pg_query::parse(statement, pg_query::ParserOptions::DEFAULT) else {
        return Vec::new();
    };
    let mut out: Vec<(Name, usize)> = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        let ranges = |nodes: &[Node]| -> Vec<Name> {
            (nodes.iter())
                .filter_map(|n| match &n.node {
                    Some(NodeEnum::RangeVar(range)) => Some(Name::of(range)),
                    _ => None,
                })
                .collect()
        };
        match node {
            NodeEnum::AlterTableStmt(alter) if alter.objtype == ObjectType::ObjectTable as i32 => {
                let level = (alter.cmds.iter())
                    .filter_map(|cmd| match &cmd.node {
                        Some(NodeEnum::AlterTableCmd(cmd)) => Some(alter_level(cmd)),
                        _ => None,
                    })
                    .max();
                if let (Some(relation), Some(level)) = (&alter.relation, level) {
                    out.push((Name::of(relation), level));
                }
                // A foreign key takes SHARE ROW EXCLUSIVE on the table it references too, as a
                // constraint of its own or of a new column.
                for cmd in &alter.cmds {
                    let Some(NodeEnum::AlterTableCmd(cmd)) = &cmd.node else {
                        continue;
                    };
                    let Some(def) = cmd.def.as_deref() else {
                        continue;
                    };
                    let constraints = match &def.node {
                        Some(NodeEnum::ColumnDef(column)) => column.constraints.as_slice(),
                        _ => std::slice::from_ref(def),
                    };
                    out.extend(foreign_keys(constraints).map(|name| (name, 6)));
                }
            }
            NodeEnum::IndexStmt(index) if !index.concurrent => {
                out.extend(index.relation.as_ref().map(|r| (Name::of(r), 5)));
            }
            NodeEnum::CreateTrigStmt(trigger) => {
                out.extend(trigger.relation.as_ref().map(|r| (Name::of(r), 6)));
            }
            NodeEnum::TruncateStmt(truncate) => {
                out.extend(ranges(&truncate.relations).into_iter().map(|n| (n, 8)));
            }
            NodeEnum::LockStmt(lock) => {
                let mode = usize::try_from(lock.mode).unwrap_or_default();
                out.extend(ranges(&lock.relations).into_iter().map(|n| (n, mode)));
            }
            // A table or an index (named for its table, see `ReindexStmt`) is the whole name;
            // `DROP TRIGGER t ON tbl` (a policy, a rule) names [schema,] table, trigger.
            NodeEnum::DropStmt(drop) => {
                let on_table = match ObjectType::try_from(drop.remove_type) {
                    Ok(ObjectType::ObjectTable) => false,
                    Ok(ObjectType::ObjectIndex) if !drop.concurrent => false,
                    Ok(
                        ObjectType::ObjectTrigger
                        | ObjectType::ObjectPolicy
                        | ObjectType::ObjectRule,
                    ) => true,
                    _ => continue,
                };
                for object in &drop.objects {
                    if let Some(NodeEnum::List(list)) = &object.node {
                        let items = match on_table {
                            true => list.items.split_last().map_or(&[][..], |(_, table)| table),
                            false => &list.items[..],
                        };
                        out.extend(Name::of_list(items).map(|name| (name, 8)));
                    }
                }
            }
            // A table's rename names it in rename_type; a column's or constraint's in
            // relation_type.
            NodeEnum::RenameStmt(rename)
                if rename.rename_type == ObjectType::ObjectTable as i32
                    || rename.relation_type == ObjectType::ObjectTable as i32 =>
            {
                out.extend(rename.relation.as_ref().map(|r| (Name::of(r), 8)));
            }
            NodeEnum::AlterObjectSchemaStmt(moved)
                if moved.object_type == ObjectType::ObjectTable as i32 =>
            {
                out.extend(moved.relation.as_ref().map(|r| (Name::of(r), 8)));
            }
            NodeEnum::RefreshMatViewStmt(refresh) => {
                let mode = if refresh.concurrent { 7 } else { 8 };
                out.extend(refresh.relation.as_ref().map(|r| (Name::of(r), mode)));
            }
            NodeEnum::ClusterStmt(cluster) => {
                out.extend(cluster.relation.as_ref().map(|r| (Name::of(r), 8)));
            }
            // A new table's foreign keys take SHARE ROW EXCLUSIVE on the tables they
            // reference, and a new partition ACCESS EXCLUSIVE on its parent.
            NodeEnum::CreateStmt(create) => {
                let columns = (create.table_elts.iter()).flat_map(|element| match &element.node {
                    Some(NodeEnum::ColumnDef(column)) => column.constraints.as_slice(),
                    _ => &[],
                });
                let constraints = (create.table_elts.iter()).chain(&create.constraints);
                out.extend(foreign_keys(constraints.chain(columns)).map(|name| (name, 6)));
                if create.partbound.is_some() {
                    out.extend(ranges(&create.inh_relations).into_iter().map(|n| (n, 8)));
                }
            }
            // An index's name stands for its table here (`trace::earlier_locks`).
            NodeEnum::ReindexStmt(reindex)
                if (reindex.kind == ReindexObjectType::ReindexObjectTable as i32
                    || reindex.kind == ReindexObjectType::ReindexObjectIndex as i32)
                    && !option(&reindex.params, "concurrently") =>
            {
                out.extend(reindex.relation.as_ref().map(|r| (Name::of(r), 5)));
            }
            NodeEnum::CreatePolicyStmt(policy) => {
                out.extend(policy.table.as_ref().map(|r| (Name::of(r), 8)));
            }
            NodeEnum::AlterPolicyStmt(policy) => {
                out.extend(policy.table.as_ref().map(|r| (Name::of(r), 8)));
            }
            NodeEnum::RuleStmt(rule) => {
                out.extend(rule.relation.as_ref().map(|r| (Name::of(r), 8)));
            }
            NodeEnum::RenameStmt(rename)
                if [
                    ObjectType::ObjectTrigger,
                    ObjectType::ObjectPolicy,
                    ObjectType::ObjectRule,
                ]
                .iter()
                .any(|kind| rename.rename_type == *kind as i32) =>
            {
                out.extend(rename.relation.as_ref().map(|r| (Name::of(r), 8)));
            }
            _ => {}
        }
    }
    (out.into_iter())
        .filter(|(_, mode)| (5..LOCK_MODES.len()).contains(mode))
        .map(|(name, mode)| (name, LOCK_MODES[mode]))
        .collect()
}

/// The tables the foreign keys among `constraints` reference.
fn foreign_keys<'a>(constraints: impl IntoIterator<Item = &'a Node>) -> impl Iterator<Item = Name> {
    constraints.into_iter().filter_map(|node| match &node.node {
        Some(NodeEnum::Constraint(constraint))
            if constraint.contype == ConstrType::ConstrForeign as i32 =>
        {
            constraint.pktable.as_ref().map(Name::of)
        }
        _ => None,
    })
}

/// The lock mode (`LOCK_MODES`' number) an `ALTER TABLE` subcommand takes, as PostgreSQL's
/// `AlterTableGetLockLevel` gives it; ACCESS EXCLUSIVE for all it does not list lower.
fn alter_level(cmd: &pg_query::protobuf::AlterTableCmd) -> usize {
    use AlterTableType as At;
    let kind = At::try_from(cmd.subtype).unwrap_or(At::Undefined);
    match kind {
        // Most relation options (fillfactor, autovacuum_*, parallel_workers) are SHARE UPDATE
        // EXCLUSIVE; a guess too low only misses a lock, one too high would be a false finding.
        At::AtSetStatistics
        | At::AtSetRelOptions
        | At::AtResetRelOptions
        | At::AtClusterOn
        | At::AtDropCluster
        | At::AtSetOptions
        | At::AtResetOptions
        | At::AtValidateConstraint
        | At::AtAttachPartition
        | At::AtDetachPartitionFinalize => 4,
        At::AtDetachPartition => match &cmd.def.as_ref().and_then(|d| d.node.as_ref()) {
            Some(NodeEnum::PartitionCmd(partition)) if partition.concurrent => 4,
            _ => 8,
        },
        At::AtEnableTrig
        | At::AtEnableAlwaysTrig
        | At::AtEnableReplicaTrig
        | At::AtEnableTrigAll
        | At::AtEnableTrigUser
        | At::AtDisableTrig
        | At::AtDisableTrigAll
        | At::AtDisableTrigUser => 6,
        At::AtAddConstraint => match &cmd.def.as_ref().and_then(|d| d.node.as_ref()) {
            Some(NodeEnum::Constraint(constraint))
                if constraint.contype == ConstrType::ConstrForeign as i32 =>
            {
                6
            }
            _ => 8,
        },
        _ => 8,
    }
}

/// The effects of one statement; none when the parser does not accept it (the server will
/// say why when it runs).
pub fn effects(statement: &str) -> Vec<Effect> {
    let Ok(parsed) = pg_query::parse(statement, pg_query::ParserOptions::DEFAULT) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for raw in &parsed.protobuf.stmts {
        if let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
            statement_effects(node, &mut out);
        }
    }
    out
}

fn statement_effects(node: &NodeEnum, out: &mut Vec<Effect>) {
    match node {
        NodeEnum::CreateStmt(create) => {
            if let Some(relation) = &create.relation {
                out.push(Effect::Creates {
                    relation: Name::of(relation),
                    if_not_exists: create.if_not_exists,
                });
            }
            if !create.if_not_exists {
                out.push(Effect::NotIdempotent {
                    what: "CREATE TABLE without IF NOT EXISTS",
                });
            }
        }
        NodeEnum::IndexStmt(index) => {
            if let Some(relation) = &index.relation {
                let table = Name::of(relation);
                if !index.idxname.is_empty() {
                    out.push(Effect::Creates {
                        relation: Name {
                            schema: table.schema.clone(),
                            name: index.idxname.clone(),
                        },
                        if_not_exists: index.if_not_exists,
                    });
                }
                out.push(Effect::BuildsIndex {
                    table,
                    concurrently: index.concurrent,
                    what: match relation.inh {
                        true => CREATE_INDEX,
                        false => CREATE_INDEX_ON_ONLY,
                    },
                });
            }
            if !index.if_not_exists {
                // IF NOT EXISTS needs a name: without one, each run builds another index.
                out.push(Effect::NotIdempotent {
                    what: match index.idxname.is_empty() {
                        true => UNNAMED_INDEX,
                        false => "CREATE INDEX without IF NOT EXISTS",
                    },
                });
            }
        }
        NodeEnum::AlterTableStmt(alter) if alter.objtype == ObjectType::ObjectTable as i32 => {
            let Some(relation) = &alter.relation else {
                return;
            };
            let table = Name::of(relation);
            // PostgreSQL 12 decides once for the whole statement whether a new column's
            // foreign key is checked (13 and later, per subcommand): only a lone ADD COLUMN
            // is sure to skip it.
            let alone = alter.cmds.len() == 1;
            for cmd in &alter.cmds {
                if let Some(NodeEnum::AlterTableCmd(cmd)) = &cmd.node {
                    alter_effects(&table, cmd, alone, out);
                }
            }
        }
        NodeEnum::DropStmt(drop) => {
            let kind = ObjectType::try_from(drop.remove_type).unwrap_or(ObjectType::Undefined);
            if kind == ObjectType::ObjectTable {
                for object in &drop.objects {
                    if let Some(NodeEnum::List(list)) = &object.node
                        && let Some(table) = Name::of_list(&list.items)
                    {
                        out.push(Effect::DropsTable { table });
                    }
                }
            }
            if drop.behavior == DropBehavior::DropCascade as i32 {
                drop_cascade_effects(kind, &drop.objects, out);
            }
            if !drop.missing_ok {
                out.push(Effect::NotIdempotent {
                    what: "DROP without IF EXISTS",
                });
            }
        }
        // Drops every object the role owns in this database, its tables with their rows,
        // whatever the statement's behaviour (CASCADE only adds others' objects that depend
        // on them).
        NodeEnum::DropOwnedStmt(drop) => {
            for role in &drop.roles {
                let Some(NodeEnum::RoleSpec(spec)) = &role.node else {
                    continue;
                };
                let role = match RoleSpecType::try_from(spec.roletype) {
                    Ok(RoleSpecType::RolespecCstring) => Role::Named(spec.rolename.clone()),
                    Ok(RoleSpecType::RolespecCurrentUser | RoleSpecType::RolespecCurrentRole) => {
                        Role::Current
                    }
                    Ok(RoleSpecType::RolespecSessionUser) => Role::Session,
                    _ => continue,
                };
                out.push(Effect::DropsDependents {
                    object: Dropped::Owned(role),
                    what: "DROP OWNED",
                });
            }
        }
        NodeEnum::TruncateStmt(truncate) => {
            let cascade = truncate.behavior == DropBehavior::DropCascade as i32;
            for relation in &truncate.relations {
                if let Some(NodeEnum::RangeVar(range)) = &relation.node {
                    out.push(Effect::Truncates {
                        table: Name::of(range),
                    });
                    if cascade {
                        out.push(Effect::DropsDependents {
                            object: Dropped::Referenced(Name::of(range)),
                            what: "TRUNCATE ... CASCADE",
                        });
                    }
                }
            }
        }
        NodeEnum::DeleteStmt(delete)
            if delete.relation.as_ref().is_some_and(|r| {
                r.relname == "pg_enum" && ["", "pg_catalog"].contains(&r.schemaname.as_str())
            }) =>
        {
            if let Some(relation) = &delete.relation {
                let reference = match &relation.alias {
                    Some(alias) => &alias.aliasname,
                    None => &relation.relname,
                };
                out.push(Effect::DeletesEnumLabels {
                    reference: Name::bare(reference).sql(),
                });
            }
        }
        NodeEnum::DeleteStmt(delete) if delete.where_clause.is_none() => {
            if let Some(relation) = &delete.relation {
                out.push(Effect::ChangesAllRows {
                    table: Name::of(relation),
                    what: "DELETE without WHERE",
                    columns: Vec::new(),
                });
            }
        }
        NodeEnum::UpdateStmt(update) if update.where_clause.is_none() => {
            if let Some(relation) = &update.relation {
                let columns = (update.target_list.iter())
                    .filter_map(|target| match &target.node {
                        Some(NodeEnum::ResTarget(target)) => Some(target.name.clone()),
                        _ => None,
                    })
                    .collect();
                out.push(Effect::ChangesAllRows {
                    table: Name::of(relation),
                    what: "UPDATE without WHERE",
                    columns,
                });
            }
        }
        NodeEnum::ClusterStmt(cluster) => {
            if let Some(relation) = &cluster.relation {
                out.push(Effect::Rewrites {
                    table: Name::of(relation),
                    what: CLUSTER,
                });
            }
        }
        NodeEnum::VacuumStmt(vacuum) if vacuum.is_vacuumcmd && option(&vacuum.options, "full") => {
            for relation in &vacuum.rels {
                if let Some(NodeEnum::VacuumRelation(v)) = &relation.node
                    && let Some(range) = &v.relation
                {
                    out.push(Effect::Rewrites {
                        table: Name::of(range),
                        what: VACUUM_FULL,
                    });
                }
            }
        }
        NodeEnum::RefreshMatViewStmt(refresh) if !refresh.concurrent => {
            if let Some(relation) = &refresh.relation {
                out.push(Effect::Rewrites {
                    table: Name::of(relation),
                    what: REFRESH_VIEW,
                });
            }
        }
        NodeEnum::ReindexStmt(reindex)
            if reindex.kind == ReindexObjectType::ReindexObjectTable as i32
                && !option(&reindex.params, "concurrently") =>
        {
            if let Some(relation) = &reindex.relation {
                out.push(Effect::BuildsIndex {
                    table: Name::of(relation),
                    concurrently: false,
                    what: REINDEX_TABLE,
                });
            }
        }
        NodeEnum::ReindexStmt(reindex)
            if reindex.kind == ReindexObjectType::ReindexObjectIndex as i32
                && !option(&reindex.params, "concurrently") =>
        {
            if let Some(relation) = &reindex.relation {
                out.push(Effect::ReindexesIndex {
                    index: Name::of(relation),
                });
            }
        }
        NodeEnum::RenameStmt(rename) => {
            let Some(relation) = &rename.relation else {
                return;
            };
            let column = match rename.rename_type {
                t if t == ObjectType::ObjectTable as i32 => None,
                t if t == ObjectType::ObjectColumn as i32 => Some(rename.subname.clone()),
                _ => return,
            };
            out.push(Effect::Renames {
                table: Name::of(relation),
                column,
                to: Name::bare(&rename.newname),
            });
        }
        NodeEnum::AlterObjectSchemaStmt(moved)
            if moved.object_type == ObjectType::ObjectTable as i32 =>
        {
            let Some(relation) = &moved.relation else {
                return;
            };
            let to = Name {
                schema: Some(moved.newschema.clone()),
                name: relation.relname.clone(),
            };
            let table = Name::of(relation);
            out.push(Effect::Renames {
                table,
                column: None,
                to,
            });
        }
        _ => {}
    }
}

/// What a DROP ... CASCADE of `objects` of `kind` takes with it, which the statement does not
/// name: the tables of a schema, the columns of a type, the tables and columns that depend on
/// a table, view, extension or function (a generated column, a materialized view). Kinds
/// whose dependents hold no data of their own (procedures, operators, ...) are left out.
fn drop_cascade_effects(kind: ObjectType, objects: &[Node], out: &mut Vec<Effect>) {
    let what = match kind {
        ObjectType::ObjectTable => "DROP TABLE ... CASCADE",
        ObjectType::ObjectView => "DROP VIEW ... CASCADE",
        ObjectType::ObjectMatview => "DROP MATERIALIZED VIEW ... CASCADE",
        ObjectType::ObjectSequence => "DROP SEQUENCE ... CASCADE",
        ObjectType::ObjectForeignTable => "DROP FOREIGN TABLE ... CASCADE",
        ObjectType::ObjectSchema => "DROP SCHEMA ... CASCADE",
        ObjectType::ObjectType => "DROP TYPE ... CASCADE",
        ObjectType::ObjectDomain => "DROP DOMAIN ... CASCADE",
        ObjectType::ObjectExtension => "DROP EXTENSION ... CASCADE",
        ObjectType::ObjectFunction => "DROP FUNCTION ... CASCADE",
        ObjectType::ObjectAggregate => "DROP AGGREGATE ... CASCADE",
        ObjectType::ObjectRoutine => "DROP ROUTINE ... CASCADE",
        _ => return,
    };
    for object in objects {
        let dropped = match (&object.node, kind) {
            (Some(NodeEnum::String(name)), ObjectType::ObjectSchema) => {
                Dropped::Schema(name.sval.clone())
            }
            (Some(NodeEnum::String(name)), ObjectType::ObjectExtension) => {
                Dropped::Extension(name.sval.clone())
            }
            (Some(NodeEnum::TypeName(name)), _) => match Name::of_list(&name.names) {
                Some(name) => Dropped::Type(name),
                None => continue,
            },
            (Some(NodeEnum::List(list)), _) => match Name::of_list(&list.items) {
                Some(name) => Dropped::Relation(name),
                None => continue,
            },
            (Some(NodeEnum::ObjectWithArgs(function)), _) => {
                let Some(name) = Name::of_list(&function.objname) else {
                    continue;
                };
                let args = match function.args_unspecified {
                    true => None,
                    false => {
                        let types: Option<Vec<String>> =
                            function.objargs.iter().map(type_sql).collect();
                        // A `%TYPE` argument is resolved by the server alone: not looked up.
                        let Some(types) = types else { continue };
                        Some(types)
                    }
                };
                Dropped::Function { name, args }
            }
            _ => continue,
        };
        out.push(Effect::DropsDependents {
            object: dropped,
            what,
        });
    }
}

fn alter_effects(
    table: &Name,
    cmd: &pg_query::protobuf::AlterTableCmd,
    alone: bool,
    out: &mut Vec<Effect>,
) {
    let table = || table.clone();
    let def = cmd.def.as_ref().and_then(|d| d.node.as_ref());
    match AlterTableType::try_from(cmd.subtype).unwrap_or(AlterTableType::Undefined) {
        AlterTableType::AtAddColumn => {
            if !cmd.missing_ok {
                out.push(Effect::NotIdempotent {
                    what: "ADD COLUMN without IF NOT EXISTS",
                });
            }
            if let Some(NodeEnum::ColumnDef(column)) = def {
                let not_null = column.is_not_null
                    || column.constraints.iter().any(|c| {
                        matches!(&c.node, Some(NodeEnum::Constraint(c))
                            if matches!(ConstrType::try_from(c.contype),
                                Ok(ConstrType::ConstrNotnull | ConstrType::ConstrPrimary)))
                    });
                let at = out.len();
                out.push(Effect::AddsColumn {
                    table: table(),
                    column: column.colname.clone(),
                    not_null,
                    if_not_exists: cmd.missing_ok,
                    then: 0,
                });
                new_column_effects(&table(), column, alone, out);
                let count = out.len() - at - 1;
                if let Some(Effect::AddsColumn { then, .. }) = out.get_mut(at) {
                    *then = count;
                }
            }
        }
        AlterTableType::AtAlterColumnType => {
            let to = match def {
                Some(NodeEnum::ColumnDef(column)) => new_type(column),
                _ => None,
            };
            out.push(Effect::Retypes {
                table: table(),
                column: cmd.name.clone(),
                to,
            })
        }
        AlterTableType::AtSetTableSpace => out.push(Effect::Rewrites {
            table: table(),
            what: "SET TABLESPACE",
        }),
        AlterTableType::AtSetAccessMethod => out.push(Effect::Rewrites {
            table: table(),
            what: "SET ACCESS METHOD",
        }),
        AlterTableType::AtSetLogged | AlterTableType::AtSetUnLogged => out.push(Effect::Rewrites {
            table: table(),
            what: "SET LOGGED or SET UNLOGGED",
        }),
        AlterTableType::AtSetNotNull => out.push(Effect::Validates {
            table: table(),
            what: SET_NOT_NULL,
            not_null: Some(cmd.name.clone()),
        }),
        AlterTableType::AtAddConstraint => {
            if let Some(NodeEnum::Constraint(constraint)) = def {
                constraint_effects(&table(), constraint, out);
                let checks = matches!(
                    ConstrType::try_from(constraint.contype),
                    Ok(ConstrType::ConstrCheck | ConstrType::ConstrForeign)
                );
                if checks && constraint.skip_validation && !constraint.conname.is_empty() {
                    out.push(Effect::AddsNotValid {
                        table: table(),
                        constraint: constraint.conname.clone(),
                    });
                }
            }
        }
        AlterTableType::AtValidateConstraint => out.push(Effect::ValidatesConstraint {
            table: table(),
            constraint: cmd.name.clone(),
        }),
        AlterTableType::AtDropColumn => {
            out.push(Effect::DropsColumn {
                table: table(),
                column: cmd.name.clone(),
            });
            if !cmd.missing_ok {
                out.push(Effect::NotIdempotent {
                    what: "DROP COLUMN without IF EXISTS",
                });
            }
        }
        AlterTableType::AtDropConstraint if !cmd.missing_ok => out.push(Effect::NotIdempotent {
            what: "DROP CONSTRAINT without IF EXISTS",
        }),
        _ => {}
    }
}

/// The type an ALTER COLUMN ... TYPE gives, as (name, modifiers): a built-in's name without
/// `pg_catalog` (`character varying(20)` is `varchar` with 20); none with USING, COLLATE, an
/// array, or a modifier that is not a plain number.
fn new_type(column: &pg_query::protobuf::ColumnDef) -> Option<(String, Vec<i32>)> {
    let type_name = column.type_name.as_ref()?;
    if column.raw_default.is_some()
        || column.coll_clause.is_some()
        || !type_name.array_bounds.is_empty()
    {
        return None;
    }
    let names: Vec<String> = type_name.names.iter().filter_map(string).collect();
    let name = match names.as_slice() {
        [name] => name.clone(),
        [schema, name] if schema == "pg_catalog" => name.clone(),
        _ => return None,
    };
    let mut modifiers = Vec::new();
    for node in &type_name.typmods {
        match &node.node {
            Some(NodeEnum::AConst(constant)) => match &constant.val {
                Some(pg_query::protobuf::a_const::Val::Ival(i)) => modifiers.push(i.ival),
                _ => return None,
            },
            _ => return None,
        }
    }
    Some((name, modifiers))
}

/// A column added to an existing table: a volatile default, an identity or a stored
/// generated column fills every row (a rewrite); a CHECK or a key of its own validates or
/// indexes the table.
/// Whether a column definition gives a default, as a DEFAULT clause or otherwise.
fn has_default(column: &pg_query::protobuf::ColumnDef) -> bool {
    column.raw_default.is_some()
        || column.cooked_default.is_some()
        || column.constraints.iter().any(|c| {
            matches!(&c.node, Some(NodeEnum::Constraint(c))
                if ConstrType::try_from(c.contype) == Ok(ConstrType::ConstrDefault))
        })
}

fn new_column_effects(
    table: &Name,
    column: &pg_query::protobuf::ColumnDef,
    alone: bool,
    out: &mut Vec<Effect>,
) {
    let volatile_default = column.raw_default.as_deref().is_some_and(is_volatile);
    // A serial column's default is nextval() of its new sequence, a value per row.
    let serial = (column.type_name.as_ref())
        .and_then(|t| t.names.last())
        .and_then(string)
        .is_some_and(|name| SERIAL.contains(&name.as_str()));
    let mut rewrites =
        volatile_default || serial || !column.identity.is_empty() || column.generated == "s";
    for constraint in &column.constraints {
        if let Some(NodeEnum::Constraint(c)) = &constraint.node {
            match ConstrType::try_from(c.contype).unwrap_or(ConstrType::Undefined) {
                ConstrType::ConstrDefault => {
                    rewrites |= c.raw_expr.as_deref().is_some_and(is_volatile);
                }
                ConstrType::ConstrIdentity => rewrites = true,
                ConstrType::ConstrGenerated => rewrites = true,
                // A new column is NOT NULL through its default (metadata only since
                // PostgreSQL 11) or fails at once on a table with rows: no scan either way.
                ConstrType::ConstrNotnull => {}
                // A new column without a default is NULL in every row: PostgreSQL marks its
                // foreign key valid without reading the table (2,000,000 rows: 3.8 ms; with
                // a default, even DEFAULT NULL, 173-510 ms), when it is the statement's only
                // subcommand (see `alone`).
                ConstrType::ConstrForeign if alone && !has_default(column) => {}
                _ => constraint_effects(table, c, out),
            }
        }
    }
    if rewrites {
        out.push(Effect::Rewrites {
            table: table.clone(),
            what: "ADD COLUMN with a volatile default, identity or stored generated value",
        });
        return;
    }
    // The types the parser qualifies itself (`int` is `pg_catalog.int4`) and the common ones
    // it leaves as written are no domains (pg_catalog comes first in any search path that
    // does not name it); an array of a domain checks nothing.
    let of_type = (column.type_name.as_ref())
        .filter(|t| t.array_bounds.is_empty())
        .filter(|t| match t.names.as_slice() {
            [name] => string(name).is_none_or(|n| !BASE_TYPES.contains(&n.as_str())),
            [schema, ..] => string(schema).is_none_or(|s| s != "pg_catalog"),
            [] => false,
        })
        .and_then(|t| {
            type_sql(&Node {
                node: Some(NodeEnum::TypeName(t.clone())),
            })
        });
    let mut calls = Vec::new();
    let mut own_default = false;
    let defaults = (column.raw_default.iter().map(|d| &**d)).chain(
        (column.constraints.iter()).filter_map(|c| match &c.node {
            Some(NodeEnum::Constraint(c))
                if ConstrType::try_from(c.contype) == Ok(ConstrType::ConstrDefault) =>
            {
                c.raw_expr.as_deref()
            }
            _ => None,
        }),
    );
    for default in defaults {
        own_default = true;
        calls.extend(unknown_calls(default));
    }
    if of_type.is_some() || !calls.is_empty() {
        out.push(Effect::MayRewrite {
            table: table.clone(),
            of_type,
            calls,
            own_default,
            path: Vec::new(),
        });
    }
}

/// A function called: its schema (when named) and name.
pub(super) type Call = (Option<String>, String);

/// The functions `node` calls that may be volatile: all but the common stable ones.
fn unknown_calls(node: &Node) -> Vec<Call> {
    (called(node).into_iter())
        .filter(|(schema, name)| schema.is_some() || !STABLE_CALLS.contains(&name.as_str()))
        .collect()
}

/// What a default expression the catalog holds as text (a domain's `typdefault`) calls:
/// whether a function known to be volatile, and the others that may be; `None` when it does
/// not parse.
pub(super) fn default_calls(default: &str) -> Option<(bool, Vec<Call>)> {
    let text = format!("SELECT {default}");
    let parsed = pg_query::parse(&text, pg_query::ParserOptions::DEFAULT).ok()?;
    let statement = parsed.protobuf.stmts.first()?.stmt.as_ref()?;
    let Some(NodeEnum::SelectStmt(select)) = &statement.node else {
        return None;
    };
    let Some(NodeEnum::ResTarget(target)) = &select.target_list.first()?.node else {
        return None;
    };
    let expression = target.val.as_deref()?;
    Some((is_volatile(expression), unknown_calls(expression)))
}

/// The functions `node` calls, each as its schema (when named) and name.
fn called(node: &Node) -> Vec<(Option<String>, String)> {
    let Some(node) = &node.node else {
        return Vec::new();
    };
    (node.nodes().into_iter())
        .filter_map(|(n, ..)| match n {
            pg_query::NodeRef::FuncCall(call) => {
                let parts: Vec<String> = call.funcname.iter().filter_map(string).collect();
                match parts.as_slice() {
                    [name] => Some((None, name.clone())),
                    [.., schema, name] => Some((Some(schema.clone()), name.clone())),
                    [] => None,
                }
            }
            _ => None,
        })
        .collect()
}

fn constraint_effects(
    table: &Name,
    constraint: &pg_query::protobuf::Constraint,
    out: &mut Vec<Effect>,
) {
    let table = table.clone();
    match ConstrType::try_from(constraint.contype).unwrap_or(ConstrType::Undefined) {
        ConstrType::ConstrCheck if !constraint.skip_validation => out.push(Effect::Validates {
            table,
            what: "ADD CONSTRAINT ... CHECK without NOT VALID",
            not_null: None,
        }),
        ConstrType::ConstrForeign if !constraint.skip_validation => out.push(Effect::Validates {
            table,
            what: ADD_FOREIGN_KEY,
            not_null: None,
        }),
        ConstrType::ConstrPrimary | ConstrType::ConstrUnique | ConstrType::ConstrExclusion
            if constraint.indexname.is_empty() =>
        {
            out.push(Effect::BuildsIndex {
                table,
                concurrently: false,
                what: ADD_KEY,
            })
        }
        ConstrType::ConstrNotnull => out.push(Effect::Validates {
            table,
            what: "ADD CONSTRAINT ... NOT NULL",
            not_null: None,
        }),
        _ => {}
    }
}

/// A default that differs row by row, so PostgreSQL must write it into every existing row:
/// a call of a function known to be volatile anywhere in the expression.
fn is_volatile(node: &Node) -> bool {
    // PostgreSQL's own, and those of the extensions a default most often calls (uuid-ossp,
    // pgcrypto, pg_uuidv7).
    const VOLATILE: [&str; 12] = [
        "random",
        "random_normal",
        "gen_random_uuid",
        "uuid_generate_v1",
        "uuid_generate_v1mc",
        "uuid_generate_v4",
        "uuid_generate_v7",
        "uuidv7",
        "gen_random_bytes",
        "clock_timestamp",
        "timeofday",
        "nextval",
    ];
    let Some(node) = &node.node else {
        return false;
    };
    node.nodes().into_iter().any(|(n, ..)| match n {
        pg_query::NodeRef::FuncCall(call) => call
            .funcname
            .last()
            .and_then(string)
            .is_some_and(|name| VOLATILE.contains(&name.as_str())),
        _ => false,
    })
}

/// PostgreSQL's own types that the parser leaves as written, unqualified.
const BASE_TYPES: [&str; 10] = [
    "text",
    "uuid",
    "jsonb",
    "json",
    "bytea",
    "date",
    "timestamptz",
    "timetz",
    "inet",
    "cidr",
];

/// PostgreSQL's own functions a default most often calls that are not volatile.
const STABLE_CALLS: [&str; 6] = [
    "now",
    "statement_timestamp",
    "transaction_timestamp",
    "current_setting",
    "jsonb_build_object",
    "json_build_object",
];

/// The type names PostgreSQL expands into an integer column with a sequence's default.
const SERIAL: [&str; 6] = [
    "serial",
    "bigserial",
    "smallserial",
    "serial4",
    "serial8",
    "serial2",
];

/// Whether a statement's option list (`VACUUM (FULL)`, `REINDEX (CONCURRENTLY)`) turns on
/// `name`: given bare, or with a value other than false, off or 0.
fn option(options: &[Node], name: &str) -> bool {
    options.iter().any(|node| match &node.node {
        Some(NodeEnum::DefElem(def)) if def.defname == name => match def.arg.as_deref() {
            None => true,
            Some(arg) => !matches!(
                &arg.node,
                Some(NodeEnum::String(s)) if matches!(s.sval.to_ascii_lowercase().as_str(), "false" | "off" | "0")
            ) && !matches!(
                &arg.node,
                Some(NodeEnum::Boolean(b)) if !b.boolval
            ) && !matches!(
                &arg.node,
                Some(NodeEnum::Integer(i)) if i.ival == 0
            ),
        },
        _ => false,
    })
}

/// A type as an argument list writes it, for `to_regprocedure`: its dotted name quoted, `[]`
/// when it is an array. The parser has already turned `int` into `pg_catalog.int4`; modifiers
/// do not take part in a function's signature. `None` for `%TYPE` and `SETOF`.
fn type_sql(node: &Node) -> Option<String> {
    let Some(NodeEnum::TypeName(name)) = &node.node else {
        return None;
    };
    if name.pct_type || name.setof {
        return None;
    }
    let parts: Vec<String> = name
        .names
        .iter()
        .filter_map(string)
        .map(|p| quote(&p))
        .collect();
    if parts.is_empty() {
        return None;
    }
    let array = match name.array_bounds.is_empty() {
        true => "",
        false => "[]",
    };
    Some(format!("{}{array}", parts.join(".")))
}

fn string(node: &Node) -> Option<String> {
    match &node.node {
        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schemas_a_migration_creates_are_told() {
        let sql = "CREATE SCHEMA IF NOT EXISTS app;\nCREATE SCHEMA \"Mixed\";\n\
                   CREATE SCHEMA AUTHORIZATION bot;\nCREATE TABLE app.t (i int);";
        assert_eq!(
            schemas_created(sql),
            Some(vec![
                "app".to_string(),
                "Mixed".to_string(),
                "bot".to_string()
            ])
        );
        assert_eq!(
            schemas_created("CREATE SCHEMA AUTHORIZATION CURRENT_USER;"),
            None
        );
        for hidden in [
            "DO $$ BEGIN EXECUTE format('CREATE SCHEMA %I', 'app'); END $$;",
            "CALL make_schemas();",
            "ALTER SCHEMA old RENAME TO app;",
        ] {
            assert_eq!(schemas_created(hidden), None, "{hidden}");
        }
        assert_eq!(schemas_created("CREATE TABLE t (i int);"), Some(Vec::new()));
        assert_eq!(schemas_created("CREATE SCHEMA ("), None);
    }

    fn table(name: &str) -> Name {
        Name {
            schema: None,
            name: name.into(),
        }
    }

    #[test]
    fn the_enum_values_a_file_adds_if_not_there_are_read() {
        let added = enum_values_added(
            "ALTER TYPE app.kind ADD VALUE IF NOT EXISTS 'it''s';\n\
             -- ADD VALUE 'c'\nALTER TYPE kind ADD VALUE 'd';\n\
             ALTER TYPE \"Kind\" ADD VALUE IF NOT EXISTS 'e' BEFORE 'a';",
        );
        assert_eq!(
            added,
            [
                (Some("app".into()), "kind".into(), "it's".into()),
                (None, "Kind".into(), "e".into())
            ]
        );
    }

    #[test]
    fn an_index_without_a_name_is_told_to_take_one() {
        let not_idempotent = |sql: &str| -> Vec<&'static str> {
            (effects(sql).into_iter())
                .filter_map(|e| match e {
                    Effect::NotIdempotent { what } => Some(what),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            not_idempotent("CREATE UNIQUE INDEX ON t (a)"),
            [UNNAMED_INDEX]
        );
        assert_eq!(
            not_idempotent("CREATE INDEX t_a ON t (a)"),
            ["CREATE INDEX without IF NOT EXISTS"]
        );
        assert!(not_idempotent("CREATE INDEX IF NOT EXISTS t_a ON t (a)").is_empty());
        let fix = super::super::Rule::NotIdempotent.fix_for(UNNAMED_INDEX);
        assert!(fix.starts_with("name the index"), "{fix}");
    }

    #[test]
    fn a_search_path_is_read_from_set_and_from_set_config() {
        let path = |sql: &str| search_path(sql).flatten();
        let list = |names: &[&str]| Some(names.iter().map(|n| n.to_string()).collect());
        assert_eq!(
            path("SET search_path TO app, public"),
            list(&["app", "public"])
        );
        assert_eq!(
            path(
                "SELECT pg_catalog.set_config('search_path', 'App, \"My \"\"s\"\" \" ,public', false)"
            ),
            list(&["app", "My \"s\" ", "public"])
        );
        assert_eq!(
            path("select set_config('search_path', 'upchieve', true)"),
            list(&["upchieve"])
        );
        // Only A-Z fold, as the server folds an unquoted name.
        assert_eq!(
            path("SELECT set_config('search_path', 'ÄRger', false)"),
            list(&["Ärger"])
        );
        let long = format!(
            "SELECT set_config('search_path', '{}', false)",
            "s".repeat(70)
        );
        assert_eq!(path(&long), Some(vec!["s".repeat(63)]));
        assert_eq!(
            path("SELECT set_config('search_path', '', false)"),
            list(&[])
        );
        assert_eq!(path("SELECT set_config('work_mem', '1GB', false)"), None);
        assert_eq!(
            path("SELECT other.set_config('search_path', 'x', false)"),
            None
        );
        assert_eq!(
            path("SELECT set_config('search_path', 'x', false), 1"),
            None
        );
    }

    #[test]
    fn the_strong_lock_a_statement_takes_again_is_read_from_its_kind() {
        let locks = |sql: &str| -> Vec<(String, &str)> {
            (strong_locks(sql).into_iter())
                .map(|(name, mode)| (name.to_string(), mode))
                .collect()
        };
        let t = |mode| vec![("t".to_string(), mode)];
        assert_eq!(
            locks("ALTER TABLE t ADD COLUMN b int"),
            t("AccessExclusiveLock")
        );
        assert_eq!(
            locks("ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (b) REFERENCES u"),
            vec![
                ("t".to_string(), "ShareRowExclusiveLock"),
                ("u".to_string(), "ShareRowExclusiveLock")
            ]
        );
        assert_eq!(
            locks("ALTER TABLE t VALIDATE CONSTRAINT f, ADD COLUMN c int"),
            t("AccessExclusiveLock")
        );
        assert!(locks("ALTER TABLE t VALIDATE CONSTRAINT f").is_empty());
        assert!(locks("ALTER TABLE t SET (autovacuum_vacuum_scale_factor = 0.01)").is_empty());
        assert_eq!(locks("CREATE INDEX i ON t (b)"), t("ShareLock"));
        assert!(locks("CREATE INDEX CONCURRENTLY i ON t (b)").is_empty());
        assert_eq!(locks("LOCK TABLE t IN EXCLUSIVE MODE"), t("ExclusiveLock"));
        assert!(locks("LOCK TABLE t IN ROW EXCLUSIVE MODE").is_empty());
        assert_eq!(
            locks("TRUNCATE a.t, u"),
            vec![
                ("a.t".to_string(), "AccessExclusiveLock"),
                ("u".to_string(), "AccessExclusiveLock")
            ]
        );
        assert_eq!(locks("ALTER TABLE t RENAME TO u"), t("AccessExclusiveLock"));
        assert_eq!(
            locks("ALTER TABLE t RENAME b TO c"),
            t("AccessExclusiveLock")
        );
        assert!(locks("UPDATE t SET b = 1").is_empty());
        let u = |mode| vec![("u".to_string(), mode)];
        for create in [
            "CREATE TABLE n (b int REFERENCES u)",
            "CREATE TABLE n (b int, FOREIGN KEY (b) REFERENCES u (id))",
            "CREATE TABLE n (b int, CONSTRAINT f FOREIGN KEY (b) REFERENCES u)",
        ] {
            assert_eq!(locks(create), u("ShareRowExclusiveLock"), "{create}");
        }
        assert!(locks("CREATE TABLE n (b int)").is_empty());
        assert_eq!(
            locks("ALTER TABLE t ADD COLUMN b int REFERENCES u"),
            vec![
                ("t".to_string(), "AccessExclusiveLock"),
                ("u".to_string(), "ShareRowExclusiveLock")
            ]
        );
        assert!(locks("CREATE TABLE n () INHERITS (u)").is_empty());
        assert_eq!(
            locks("CREATE TABLE n PARTITION OF u FOR VALUES FROM (1) TO (2)"),
            u("AccessExclusiveLock")
        );
        assert_eq!(locks("REINDEX TABLE t"), t("ShareLock"));
        assert!(locks("REINDEX TABLE CONCURRENTLY t").is_empty());
        // An index's name, which the trace looks up as its table.
        let i = |mode| vec![("i".to_string(), mode)];
        assert_eq!(locks("REINDEX INDEX i"), i("ShareLock"));
        assert!(locks("REINDEX INDEX CONCURRENTLY i").is_empty());
        assert_eq!(locks("DROP INDEX IF EXISTS i"), i("AccessExclusiveLock"));
        assert!(locks("DROP INDEX CONCURRENTLY i").is_empty());
        assert_eq!(
            locks("DROP TABLE IF EXISTS a.t"),
            vec![("a.t".to_string(), "AccessExclusiveLock")]
        );
        assert!(locks("DROP VIEW t").is_empty());
        for statement in [
            "CREATE POLICY p ON t USING (true)",
            "ALTER POLICY p ON t USING (false)",
            "CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY x",
            "DROP TRIGGER g ON t",
            "DROP POLICY IF EXISTS p ON t",
            "DROP RULE r ON t",
            "ALTER TRIGGER g ON t RENAME TO h",
            "ALTER RULE r ON t RENAME TO s",
        ] {
            assert_eq!(locks(statement), t("AccessExclusiveLock"), "{statement}");
        }
        assert_eq!(
            locks("DROP TRIGGER g ON a.t"),
            vec![("a.t".to_string(), "AccessExclusiveLock")]
        );
    }

    #[test]
    fn the_seed_rollback_drops_a_table() {
        assert_eq!(
            effects("DROP TABLE IF EXISTS video_requests"),
            [Effect::DropsTable {
                table: table("video_requests")
            }]
        );
        assert_eq!(
            effects("drop table public.\"Weird\", b CASCADE"),
            [
                Effect::DropsTable {
                    table: Name {
                        schema: Some("public".into()),
                        name: "Weird".into()
                    }
                },
                Effect::DropsTable { table: table("b") },
                Effect::DropsDependents {
                    object: Dropped::Relation(Name {
                        schema: Some("public".into()),
                        name: "Weird".into()
                    }),
                    what: "DROP TABLE ... CASCADE"
                },
                Effect::DropsDependents {
                    object: Dropped::Relation(table("b")),
                    what: "DROP TABLE ... CASCADE"
                },
                Effect::NotIdempotent {
                    what: "DROP without IF EXISTS"
                },
            ]
        );
    }

    #[test]
    fn a_cascade_reaches_what_the_statement_does_not_name() {
        let dependents = |sql: &str| -> Vec<(Dropped, &'static str)> {
            effects(sql)
                .into_iter()
                .filter_map(|e| match e {
                    Effect::DropsDependents { object, what } => Some((object, what)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            dependents("DROP SCHEMA IF EXISTS app, \"Other\" CASCADE"),
            [
                (Dropped::Schema("app".into()), "DROP SCHEMA ... CASCADE"),
                (Dropped::Schema("Other".into()), "DROP SCHEMA ... CASCADE"),
            ]
        );
        assert_eq!(
            dependents("drop type if exists app.prio cascade"),
            [(
                Dropped::Type(Name {
                    schema: Some("app".into()),
                    name: "prio".into()
                }),
                "DROP TYPE ... CASCADE"
            )]
        );
        assert_eq!(
            dependents("DROP DOMAIN d CASCADE; DROP EXTENSION postgis CASCADE"),
            [
                (Dropped::Type(table("d")), "DROP DOMAIN ... CASCADE"),
                (
                    Dropped::Extension("postgis".into()),
                    "DROP EXTENSION ... CASCADE"
                ),
            ]
        );
        assert_eq!(
            dependents("TRUNCATE accounts CASCADE"),
            [(
                Dropped::Referenced(table("accounts")),
                "TRUNCATE ... CASCADE"
            )]
        );
        let function =
            |schema: Option<&str>, name: &str, args: Option<&[&str]>| Dropped::Function {
                name: Name {
                    schema: schema.map(str::to_string),
                    name: name.into(),
                },
                args: args.map(|a| a.iter().map(|t| t.to_string()).collect()),
            };
        assert_eq!(
            dependents(
                "DROP FUNCTION app.f(int, text[], \"My Type\", double precision) CASCADE; \
                 DROP FUNCTION g CASCADE; DROP AGGREGATE total(numeric) CASCADE; \
                 DROP ROUTINE h() CASCADE"
            ),
            [
                (
                    function(
                        Some("app"),
                        "f",
                        Some(&[
                            "pg_catalog.int4",
                            "text[]",
                            "\"My Type\"",
                            "pg_catalog.float8"
                        ])
                    ),
                    "DROP FUNCTION ... CASCADE"
                ),
                (function(None, "g", None), "DROP FUNCTION ... CASCADE"),
                (
                    function(None, "total", Some(&["pg_catalog.\"numeric\""])),
                    "DROP AGGREGATE ... CASCADE"
                ),
                (function(None, "h", Some(&[])), "DROP ROUTINE ... CASCADE"),
            ]
        );
        assert_eq!(
            dependents("DROP OWNED BY app, \"Old Owner\", CURRENT_USER, SESSION_USER CASCADE"),
            [
                (Dropped::Owned(Role::Named("app".into())), "DROP OWNED"),
                (
                    Dropped::Owned(Role::Named("Old Owner".into())),
                    "DROP OWNED"
                ),
                (Dropped::Owned(Role::Current), "DROP OWNED"),
                (Dropped::Owned(Role::Session), "DROP OWNED"),
            ]
        );
        // Without CASCADE the server refuses to drop what others depend on; a procedure
        // computes nothing a table holds.
        assert_eq!(dependents("DROP SCHEMA app; DROP TYPE prio RESTRICT"), []);
        assert_eq!(
            dependents("TRUNCATE accounts; DROP FUNCTION f(); DROP PROCEDURE p() CASCADE"),
            []
        );
    }

    #[test]
    fn what_blocks_or_rewrites_the_bot_s_table_is_recognised() {
        let cases: [(&str, &str); 22] = [
            ("CREATE INDEX i ON t (c)", "BuildsIndex"),
            ("ALTER TABLE t ALTER COLUMN c TYPE bigint", "Retypes"),
            (
                "ALTER TABLE t ADD COLUMN IF NOT EXISTS n bigserial",
                "Rewrites",
            ),
            ("ALTER TABLE t SET UNLOGGED", "Rewrites"),
            ("CLUSTER t USING t_pkey", "Rewrites"),
            ("VACUUM (FULL, ANALYZE) t", "Rewrites"),
            ("VACUUM FULL t", "Rewrites"),
            ("REFRESH MATERIALIZED VIEW m", "Rewrites"),
            ("REINDEX TABLE t", "BuildsIndex"),
            ("REINDEX (VERBOSE) TABLE t", "BuildsIndex"),
            (
                "ALTER TABLE t ADD COLUMN IF NOT EXISTS c uuid DEFAULT gen_random_uuid()",
                "Rewrites",
            ),
            (
                "ALTER TABLE t ADD COLUMN c uuid DEFAULT public.uuid_generate_v1mc()",
                "Rewrites",
            ),
            (
                "ALTER TABLE t ADD COLUMN c bytea DEFAULT gen_random_bytes(8)",
                "Rewrites",
            ),
            ("ALTER TABLE t ADD CONSTRAINT k CHECK (c > 0)", "Validates"),
            (
                "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (c) REFERENCES u (id)",
                "Validates",
            ),
            ("ALTER TABLE t ALTER COLUMN c SET NOT NULL", "Validates"),
            ("ALTER TABLE t ADD PRIMARY KEY (id)", "BuildsIndex"),
            ("TRUNCATE t", "Truncates"),
            ("DELETE FROM t", "ChangesAllRows"),
            (
                "DELETE FROM pg_catalog.pg_enum WHERE enumlabel = 'x'",
                "DeletesEnumLabels",
            ),
            ("ALTER TABLE t RENAME COLUMN a TO b", "Renames"),
            ("ALTER TABLE t SET SCHEMA archive", "Renames"),
        ];
        for (sql, kind) in cases {
            let found = effects(sql);
            assert!(
                found.iter().any(|e| format!("{e:?}").starts_with(kind)),
                "{sql}: {found:?}"
            );
        }
    }

    #[test]
    fn a_type_change_carries_the_new_type_for_the_catalog_to_weigh() {
        let to = |sql: &str| match effects(sql).into_iter().next() {
            Some(Effect::Retypes { to, .. }) => to,
            other => panic!("{sql}: {other:?}"),
        };
        let typed = |name: &str, modifiers: &[i32]| Some((name.to_string(), modifiers.to_vec()));
        assert_eq!(
            to("ALTER TABLE t ALTER COLUMN c TYPE character varying(200)"),
            typed("varchar", &[200])
        );
        assert_eq!(to("ALTER TABLE t ALTER c TYPE text"), typed("text", &[]));
        assert_eq!(
            to("ALTER TABLE t ALTER c TYPE numeric(12, 2)"),
            typed("numeric", &[12, 2])
        );
        // What the catalog alone cannot weigh is a rewrite.
        assert_eq!(to("ALTER TABLE t ALTER c TYPE text USING c || 'x'"), None);
        assert_eq!(to("ALTER TABLE t ALTER c TYPE text[]"), None);
        assert_eq!(to("ALTER TABLE t ALTER c TYPE text COLLATE \"C\""), None);
        assert_eq!(to("ALTER TABLE t ALTER c TYPE app.text"), None);
    }

    #[test]
    fn a_default_the_catalog_holds_as_text_says_what_it_calls() {
        let calls = |sql: &str| default_calls(sql).map(|(volatile, calls)| (volatile, calls.len()));
        assert_eq!(calls("gen_random_uuid()"), Some((true, 1)));
        assert_eq!(calls("codes.next()"), Some((false, 1)));
        assert_eq!(calls("now()"), Some((false, 0)));
        assert_eq!(calls("'x'::text"), Some((false, 0)));
        assert_eq!(calls("nosuch syntax ("), None);
    }

    #[test]
    fn a_new_column_the_catalog_must_weigh_names_its_type_and_calls() {
        let may = |sql: &str| match effects(sql).as_slice() {
            [
                Effect::AddsColumn { .. },
                Effect::MayRewrite { of_type, calls, .. },
            ] => Some((of_type.clone(), calls.clone())),
            [Effect::AddsColumn { .. }] => None,
            [] => None,
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(
            may("ALTER TABLE t ADD COLUMN IF NOT EXISTS c app.\"Positive\""),
            Some((Some("app.\"Positive\"".into()), vec![]))
        );
        assert_eq!(
            may("ALTER TABLE t ADD COLUMN IF NOT EXISTS c text DEFAULT lower(codes.next(now()))"),
            Some((
                None,
                vec![
                    (None, "lower".into()),
                    (Some("codes".into()), "next".into())
                ]
            ))
        );
        for plain in [
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS c int",
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS c text[] DEFAULT '{}'",
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS c timestamptz DEFAULT now()",
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS c pg_catalog.text",
        ] {
            assert_eq!(may(plain), None, "{plain}");
        }
    }

    #[test]
    fn the_safe_forms_are_not_flagged() {
        let safe = [
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c)",
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS c text DEFAULT 'x'",
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS c timestamptz DEFAULT now()",
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS c int NOT NULL DEFAULT 0",
            // Every row NULL: PostgreSQL marks the key valid without reading them.
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS c int REFERENCES p (id)",
            "ALTER TABLE t ADD CONSTRAINT k CHECK (c > 0) NOT VALID",
            "ALTER TABLE t VALIDATE CONSTRAINT k",
            "DELETE FROM t WHERE id = 1",
            "UPDATE t SET c = 1 WHERE id = 1",
            "SELECT 'DROP TABLE t'",
            "DO $$ BEGIN EXECUTE 'TRUNCATE t'; END $$",
            "CREATE TABLE IF NOT EXISTS t (id int)",
            "VACUUM (ANALYZE) t",
            "VACUUM (FULL false) t",
            "REFRESH MATERIALIZED VIEW CONCURRENTLY m",
            "REINDEX TABLE CONCURRENTLY t",
            "REINDEX INDEX CONCURRENTLY i",
            "REINDEX (CONCURRENTLY) TABLE t",
        ];
        for sql in safe {
            // What only marks a statement for the ones after it is no hazard of its own.
            let found: Vec<_> = effects(sql)
                .into_iter()
                .filter(|e| {
                    !matches!(
                        e,
                        Effect::Creates { .. }
                            | Effect::AddsColumn { .. }
                            | Effect::AddsNotValid { .. }
                            | Effect::ValidatesConstraint { .. }
                    )
                })
                .collect();
            let index = found.iter().all(|e| {
                matches!(
                    e,
                    Effect::BuildsIndex {
                        concurrently: true,
                        ..
                    }
                )
            });
            assert!(index, "{sql}: {found:?}");
        }
    }

    /// `rules::check` parses a CREATE without the INDEX keyword only when the plan holds a
    /// hazard, relying on it weighing nothing: it may only name what it creates.
    #[test]
    fn a_create_without_index_only_names_what_it_creates() {
        use crate::sql::{Reach, reach};
        let creates = [
            "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, u int UNIQUE REFERENCES u (id))",
            "CREATE TABLE t (LIKE u INCLUDING INDEXES)",
            "CREATE TABLE p_1 PARTITION OF p FOR VALUES IN (1)",
            "CREATE TABLE t AS SELECT * FROM u",
            "CREATE UNLOGGED TABLE t (id int)",
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM u",
            "CREATE OR REPLACE VIEW v AS SELECT * FROM u",
            "CREATE SEQUENCE s",
            "CREATE TRIGGER g AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
            "CREATE RULE r AS ON DELETE TO t DO INSTEAD NOTHING",
            "CREATE POLICY p ON t USING (true)",
            "CREATE STATISTICS s ON a, b FROM t",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'DELETE FROM t RETURNING 1'",
        ];
        for sql in creates {
            assert_eq!(reach(sql), Reach::Creates, "{sql}");
            let found = effects(sql);
            let only_names = found
                .iter()
                .all(|e| matches!(e, Effect::Creates { .. } | Effect::NotIdempotent { .. }));
            assert!(only_names, "{sql}: {found:?}");
        }
        for sql in [
            "CREATE INDEX i ON t (c)",
            "create unique index on t (c)",
            "CREATE /* x */ INDEX i ON t (c)",
        ] {
            assert_eq!(reach(sql), Reach::Tables, "{sql}");
        }
        // A quoted "index" is a name, not the keyword.
        assert_eq!(reach("CREATE TABLE \"index\" (id int)"), Reach::Creates);
        assert_eq!(reach("ALTER TABLE t ADD c int"), Reach::Tables);
        assert_eq!(reach("INSERT INTO t VALUES (1)"), Reach::None);
    }

    #[test]
    fn a_statement_the_parser_refuses_has_no_effects() {
        assert_eq!(effects("ALTER TABEL t"), []);
    }

    #[test]
    fn names_are_quoted_as_sql_writes_them() {
        assert_eq!(table("video_requests").sql(), "video_requests");
        assert_eq!(table("Mixed").sql(), "\"Mixed\"");
        // Keywords that would not read as names; unreserved ones do.
        assert_eq!(table("order").sql(), "\"order\"");
        assert_eq!(table("user").sql(), "\"user\"");
        assert_eq!(table("char").sql(), "\"char\"");
        assert_eq!(table("left").sql(), "\"left\"");
        assert_eq!(table("data").sql(), "data");
        assert_eq!(table("events").sql(), "events");
        let qualified = Name {
            schema: Some("app".into()),
            name: "t\"x".into(),
        };
        assert_eq!(qualified.sql(), "app.\"t\"\"x\"");
    }
}
