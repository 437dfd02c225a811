//! A small PostgreSQL lexer: splits migration files into statements and answers the few
//! questions the migrator asks about them, never mistaking quoted text or comments for code.

/// One statement of a file, without its terminating semicolon.
///
/// `text` runs from the statement's first token to its last, so comments before the first
/// token and after the last one are dropped, while comments in between are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    /// The statement's source text.
    pub text: &'a str,
    /// Byte offset of `text` within the source.
    pub offset: usize,
    /// 1-based line where `text` starts.
    pub line: usize,
}

impl Statement<'_> {
    /// 1-based line and column (in characters) where the statement starts in `sql`, the
    /// text it was split from. Reads back only to the start of its line, so placing every
    /// statement of a big file stays linear.
    pub fn place(&self, sql: &str) -> (usize, usize) {
        let start = sql[..self.offset].rfind('\n').map_or(0, |i| i + 1);
        (self.line, sql[start..self.offset].chars().count() + 1)
    }
}

/// Splits a file into statements at top-level semicolons. Statements containing only
/// whitespace/comments are dropped.
pub fn split(sql: &str) -> Vec<Statement<'_>> {
    let mut lines = LineCounter::new();
    spans(sql)
        .map(|(start, end)| Statement {
            text: &sql[start..end],
            offset: start,
            line: lines.line_at(sql, start),
        })
        .collect()
}

/// How many statements [`split`] finds in `sql`, without collecting them.
pub fn count(sql: &str) -> usize {
    spans(sql).count()
}

/// True when the file holds no statement at all (only whitespace/comments).
/// An unterminated block comment counts as content, so the server gets to report it.
pub fn is_empty(sql: &str) -> bool {
    tokens(sql).all(|t| matches!(t.kind, Kind::Space | Kind::Comment | Kind::Semicolon))
}

/// A statement on one line for a person to recognise it by: runs of white space (line
/// breaks among them) made one space, cut after `max` characters with ` …`. Its first line
/// alone is often `ALTER TABLE name`, without what the statement does.
pub fn headline(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() > max {
            break;
        }
    }
    match out.char_indices().nth(max) {
        Some((cut, _)) => format!("{} …", out[..cut].trim_end()),
        None => out,
    }
}

/// True when the file's first line is the directive `-- no-transaction`.
pub fn is_no_transaction(sql: &str) -> bool {
    let sql = sql.strip_prefix(BOM).unwrap_or(sql);
    let first_line = sql.lines().next().unwrap_or_default();
    first_line
        .strip_prefix("--")
        .map(|rest| rest.trim_start_matches([' ', '\t']).trim_end())
        == Some("no-transaction")
}

/// What of a file's statements bears on the transaction db-migrate runs it in, found in one
/// walk over its statements (the file checks read every pending file, seeds of many
/// megabytes among them).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TransactionUse {
    /// The first statement that ends or opens a transaction, or sets the characteristics only
    /// its start may set, as (line, keywords in upper case such as `COMMIT`, `PREPARE
    /// TRANSACTION` or `SET TRANSACTION`). Savepoints (`SAVEPOINT`, `RELEASE`, `ROLLBACK TO`)
    /// stay inside the transaction, so they are not reported.
    pub control: Option<(usize, String)>,
    /// The first statement PostgreSQL refuses inside a transaction block, as (line, its
    /// leading keywords such as `CREATE INDEX CONCURRENTLY`): in a file db-migrate runs in a
    /// transaction it can only fail, and only once the migrations before it have committed.
    pub outside_only: Option<(usize, String)>,
    /// The first two-phase commit statement (`PREPARE TRANSACTION`, `COMMIT PREPARED`,
    /// `ROLLBACK PREPARED`), wherever it stands: in a `-- no-transaction` file it may follow a
    /// `BEGIN` the file is allowed, which [`TransactionUse::control`] reports in its place.
    pub two_phase: Option<(usize, String)>,
}

/// See [`TransactionUse`].
pub fn transaction_use(sql: &str) -> TransactionUse {
    let mut found = TransactionUse::default();
    let mut lines = LineCounter::new();
    for (start, end) in spans(sql) {
        let statement = &sql[start..end];
        let head = head(statement, HEAD);
        if (found.control.is_none() || found.two_phase.is_none())
            && let Some(keywords) = control_keywords(statement, &head)
        {
            let line = lines.line_at(sql, start);
            if found.two_phase.is_none() && keywords.contains("PREPARE") {
                found.two_phase = Some((line, keywords.clone()));
            }
            found.control.get_or_insert((line, keywords));
        }
        if found.outside_only.is_none()
            && let Some(what) = outside_only(statement, &head)
        {
            found.outside_only = Some((lines.line_at(sql, start), what.to_string()));
        }
        if found.control.is_some() && found.outside_only.is_some() && found.two_phase.is_some() {
            break;
        }
    }
    found
}

/// The first statement of `sql` that changes what the server shares between its databases
/// (a role or its memberships, a database, a tablespace, the server's settings, the
/// privileges on any of them, a subscription), as (line,
/// what it is): a rehearsal on a scratch database of the server cannot undo it. Statements
/// whose leading keywords may say so are read by PostgreSQL's parser (`CREATE USER MAPPING`
/// is the database's own, `GRANT ... ON` a privilege, `GRANT role TO role` a membership).
pub fn server_wide(sql: &str) -> Option<(usize, &'static str)> {
    use pg_query::NodeEnum as N;
    use pg_query::protobuf::ObjectType;
    const SHARED: [&str; 8] = [
        "role",
        "user",
        "group",
        "database",
        "tablespace",
        "system",
        "owned",
        "subscription",
    ];
    let mut lines = LineCounter::new();
    for (start, end) in spans(sql) {
        let statement = &sql[start..end];
        let head = head(statement, 4);
        let Some(first) = head.first() else { continue };
        let verb = [
            "create", "alter", "drop", "grant", "revoke", "comment", "reassign",
        ]
        .into_iter()
        .find(|verb| first.is_keyword(statement, verb));
        let may = match verb {
            Some("grant" | "revoke" | "reassign") => true,
            Some(_) => {
                (head.iter().skip(1)).any(|t| SHARED.iter().any(|w| t.is_keyword(statement, w)))
            }
            None => false,
        };
        if !may {
            continue;
        }
        let Ok(parsed) = pg_query::parse(statement, pg_query::ParserOptions::DEFAULT) else {
            continue;
        };
        let shared_object = |kind: i32| {
            [
                ObjectType::ObjectRole,
                ObjectType::ObjectDatabase,
                ObjectType::ObjectTablespace,
            ]
            .iter()
            .any(|k| *k as i32 == kind)
        };
        for raw in &parsed.protobuf.stmts {
            let what = match raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
                Some(N::CreateRoleStmt(_)) => "CREATE ROLE",
                Some(N::AlterRoleStmt(_) | N::AlterRoleSetStmt(_)) => "ALTER ROLE",
                Some(N::DropRoleStmt(_)) => "DROP ROLE",
                Some(N::GrantRoleStmt(_)) => "GRANT or REVOKE of a role's membership",
                Some(N::CreatedbStmt(_)) => "CREATE DATABASE",
                Some(N::DropdbStmt(_)) => "DROP DATABASE",
                Some(N::AlterDatabaseStmt(_) | N::AlterDatabaseSetStmt(_)) => "ALTER DATABASE",
                Some(N::CreateTableSpaceStmt(_)) => "CREATE TABLESPACE",
                Some(N::DropTableSpaceStmt(_)) => "DROP TABLESPACE",
                Some(N::AlterTableSpaceOptionsStmt(_)) => "ALTER TABLESPACE",
                Some(N::AlterSystemStmt(_)) => "ALTER SYSTEM",
                Some(N::RenameStmt(r)) if shared_object(r.rename_type) => {
                    "a RENAME of a role, database or tablespace"
                }
                Some(N::AlterOwnerStmt(o)) if shared_object(o.object_type) => {
                    "an OWNER TO of a database or tablespace"
                }
                Some(N::CommentStmt(c)) if shared_object(c.objtype) => {
                    "a COMMENT on a role, database or tablespace"
                }
                // The privileges on a database, a tablespace or a setting are kept once for
                // the whole server: replayed, they would be granted or revoked on the target's
                // own database (a REVOKE CONNECT and its rollback's GRANT undone the other way).
                Some(N::GrantStmt(g))
                    if shared_object(g.objtype)
                        || g.objtype == ObjectType::ObjectParameterAcl as i32 =>
                {
                    "a GRANT or REVOKE on a database, tablespace or setting"
                }
                Some(N::DropOwnedStmt(_)) => "DROP OWNED",
                Some(N::ReassignOwnedStmt(_)) => "REASSIGN OWNED",
                // A subscription is server-wide too, and starts replicating once made.
                Some(
                    N::CreateSubscriptionStmt(_)
                    | N::AlterSubscriptionStmt(_)
                    | N::DropSubscriptionStmt(_),
                ) => "a SUBSCRIPTION",
                _ => continue,
            };
            return Some((lines.line_at(sql, start), what));
        }
    }
    None
}

/// [`TransactionUse::control`] alone.
pub fn transaction_control(sql: &str) -> Option<(usize, String)> {
    transaction_use(sql).control
}

/// Whether the server might see a statement in `sql` that ends or opens a transaction, by
/// PostgreSQL's own parser (libpg_query): a second opinion on [`transaction_control`], which
/// the file checks use. True also when the parser does not accept the text, since then it
/// cannot say.
pub fn may_end_transaction(sql: &str) -> bool {
    // Every statement that opens or ends a transaction starts with one of these keywords,
    // which the server matches in ASCII whatever the case and no escape can spell: text
    // without any of them, anywhere, needs no parse (most files: a parse costs tens of
    // microseconds and the allocations of its tree).
    if !contains_any_ignore_case(sql, &TRANSACTION_KEYWORDS) {
        return false;
    }
    // PostgreSQL's scanner splits the text, and only a statement that starts with such a
    // keyword is parsed: the parse tree of a whole seed file, a single INSERT of many rows,
    // takes some forty times the text's size. The split ends a statement at any top-level
    // semicolon, inside a `BEGIN ATOMIC` body too, whose END then reads as a COMMIT: a
    // guard more, never one fewer. Text that fails to parse as a whole never runs at all.
    let Ok(statements) = pg_query::split_with_scanner(sql) else {
        return true;
    };
    statements.into_iter().any(|statement| {
        let first = code(statement).next();
        first.is_some_and(|first| {
            TRANSACTION_KEYWORDS
                .iter()
                .any(|k| first.is_keyword(statement, k))
                && ends_transaction(statement)
        })
    })
}

/// Whether PostgreSQL's own scanner (libpg_query's) reads `sql` to its end without an error,
/// so that no string, quoted identifier, dollar quote or comment the file leaves open can run
/// on into text appended after it: the file checks' lexer ([`unterminated`]) says so too,
/// but it is ours, and a migration's history change and `COMMIT` may ride behind the file
/// only on the server's own word (with `standard_conforming_strings` on, as both assume).
pub fn scans_whole(sql: &str) -> bool {
    // Every token that can stay open starts with a quote, a dollar sign or `/*`, and a
    // backslash is what could make a reader disagree on where a string ends: text without
    // any of them leaves nothing open, whoever reads it, and the scanner (whose tables cost
    // the job a third of a megabyte of memory) is not needed.
    let may_open = sql
        .bytes()
        .any(|b| matches!(b, b'\'' | b'"' | b'$' | b'\\'));
    !(may_open || sql.contains("/*")) || pg_query::split_with_scanner(sql).is_ok()
}

/// Whether `sql` might drop the session's prepared statements: `DEALLOCATE` anywhere, in
/// any case, comments and strings too (`DISCARD ALL` would as well, but it cannot run inside
/// a transaction, where a migration that has prepared statements runs). A yes costs the
/// migration its place in a pipeline; a no for a file that builds the statement out of sight
/// (inside a function) costs it a second and a third run, each rolled back, as before.
pub fn may_deallocate(sql: &str) -> bool {
    contains_any_ignore_case(sql, &["deallocate"])
}

/// [`may_deallocate`] for a `-- no-transaction` file, where `DISCARD ALL` runs too.
pub fn may_deallocate_outside(sql: &str) -> bool {
    contains_any_ignore_case(sql, &["deallocate", "discard"])
}

/// The first keyword of every statement that opens or ends a transaction.
const TRANSACTION_KEYWORDS: [&str; 7] = [
    "begin", "start", "commit", "end", "rollback", "abort", "prepare",
];

/// Whether PostgreSQL's parser reads `statement` as one that opens or ends a transaction;
/// true also when it does not accept it, since then it cannot say.
fn ends_transaction(statement: &str) -> bool {
    use pg_query::protobuf::TransactionStmtKind as Kind;
    let Ok(parsed) = pg_query::parse(statement, pg_query::ParserOptions::DEFAULT) else {
        return true;
    };
    parsed.protobuf.stmts.iter().any(
        |raw| match raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
            Some(pg_query::NodeEnum::TransactionStmt(t)) => !matches!(
                t.kind(),
                Kind::TransStmtSavepoint | Kind::TransStmtRelease | Kind::TransStmtRollbackTo
            ),
            _ => false,
        },
    )
}

/// Whether `text` contains any of the lower-case ASCII `words`, in any case: lowered a slice
/// at a time rather than copied whole, as the text may be a seed file of many megabytes.
fn contains_any_ignore_case(text: &str, words: &[&str]) -> bool {
    const SLICE: usize = 1 << 16;
    // Each slice runs on into the next by a word's length, so no word is cut in two.
    let overlap = words.iter().map(|w| w.len()).max().unwrap_or(0);
    let bytes = text.as_bytes();
    let mut lower = Vec::with_capacity(bytes.len().min(SLICE + overlap));
    (0..bytes.len()).step_by(SLICE).any(|at| {
        let end = bytes.len().min(at + SLICE + overlap);
        lower.clear();
        lower.extend(bytes[at..end].iter().map(u8::to_ascii_lowercase));
        let found = |w: &&str| memchr::memmem::find(&lower, w.as_bytes()).is_some();
        words.iter().any(found)
    })
}

/// What a statement does to `lock_timeout`, the wait the run allows a statement in the lock
/// queue (where the bot's queries on the same table wait behind it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockTimeout {
    /// `RESET ALL`, `RESET lock_timeout`, `SET lock_timeout TO DEFAULT`: back to the session's
    /// default, which is no limit unless the role or database sets one.
    Reset,
    /// `SET [SESSION | LOCAL] lock_timeout` to this value (zero: no limit).
    Set(std::time::Duration),
    /// A value the statement computes (`set_config('lock_timeout', ...)`) or one not read.
    Unknown,
}

/// How `statement` changes `lock_timeout`, if it does (see [`LockTimeout`]).
pub fn lock_timeout_change(statement: &str) -> Option<LockTimeout> {
    let tokens = head(statement, HEAD);
    let word = |i: usize| lower_word(statement, &tokens, i);
    match word(0).as_str() {
        "reset" => match word(1).as_str() {
            "all" | "lock_timeout" => Some(LockTimeout::Reset),
            _ => None,
        },
        "set" => {
            let at = usize::from(matches!(word(1).as_str(), "session" | "local"));
            if word(1 + at) != "lock_timeout" {
                return None;
            }
            // `TO` or `=`, then the value.
            let value = tokens.get(3 + at)?;
            let text = value.text(statement);
            if value.kind == Kind::Word && text.eq_ignore_ascii_case("default") {
                return Some(LockTimeout::Reset);
            }
            let literal = match value.kind {
                Kind::Literal => text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')),
                Kind::Other => Some(text),
                _ => None,
            };
            Some(
                literal
                    .and_then(milliseconds)
                    .map_or(LockTimeout::Unknown, |ms| {
                        LockTimeout::Set(std::time::Duration::from_millis(ms))
                    }),
            )
        }
        // `set_config('lock_timeout', ...)` anywhere in it, however its value is computed.
        // Most statements never name it: the text is searched first, the tokens only then.
        _ => (contains_any_ignore_case(statement, &["lock_timeout"])
            && (calls_set_config(statement, Some("'lock_timeout'"))
                || may_set_unseen(statement, &tokens, &["lock_timeout"])))
        .then_some(LockTimeout::Unknown),
    }
}

/// Whether `statement` may change a setting (`names`, lower case) where its words do not
/// show it: a `DO` block whose body names the setting (a `SET`, `set_config` or `EXECUTE`
/// inside it is one literal to the lexer), an `UPDATE` of `pg_settings` (a `WITH` one too),
/// or a `set_config` of a name it computes (`SELECT set_config(name, ...) FROM pg_settings
/// WHERE name = ...`), that names it.
fn may_set_unseen(statement: &str, tokens: &[Token], names: &[&str]) -> bool {
    let first = lower_word(statement, tokens, 0);
    let settings = || {
        contains_any_ignore_case(statement, &["pg_settings"])
            && code(statement).any(|t| t.is_keyword(statement, "update"))
    };
    contains_any_ignore_case(statement, names)
        && (first == "do" || settings() || calls_set_config(statement, None))
}

/// The `i`th token of `tokens` (the head of `statement`) in lower case when it is a word,
/// else empty.
fn lower_word(statement: &str, tokens: &[Token], i: usize) -> String {
    (tokens.get(i))
        .filter(|t| t.kind == Kind::Word)
        .map(|t| t.text(statement).to_ascii_lowercase())
        .unwrap_or_default()
}

/// Whether `statement` calls `set_config` with `quoted` (the setting's name as a literal,
/// quotes and all) as its first argument, or with `None`, a first argument that is not a
/// literal (a name it computes).
fn calls_set_config(statement: &str, quoted: Option<&str>) -> bool {
    let mut last: [Option<Token>; 2] = [None, None];
    code(statement).any(|token| {
        let found = matches!(last, [Some(name), Some(open)]
        if name.is_keyword(statement, "set_config")
            && open.kind == Kind::Open
            && match quoted {
                Some(quoted) => token.kind == Kind::Literal
                    && token.text(statement).eq_ignore_ascii_case(quoted),
                None => token.kind != Kind::Literal,
            });
        last = [last[1], Some(token)];
        found
    })
}

/// Whether `statement` may change the session's time zone: `SET [SESSION | LOCAL] TimeZone`
/// or `TIME ZONE`, `RESET TimeZone` or `ALL`, or `set_config('TimeZone', ...)` anywhere in
/// it.
pub fn changes_time_zone(statement: &str) -> bool {
    let tokens = head(statement, HEAD);
    let word = |i: usize| lower_word(statement, &tokens, i);
    match word(0).as_str() {
        "reset" => matches!(word(1).as_str(), "all" | "timezone"),
        "set" => {
            let at = usize::from(matches!(word(1).as_str(), "session" | "local"));
            word(1 + at) == "timezone" || (word(1 + at) == "time" && word(2 + at) == "zone")
        }
        _ => {
            calls_set_config(statement, Some("'timezone'"))
                || may_set_unseen(statement, &tokens, &["timezone", "time zone"])
        }
    }
}

/// A time setting's value in milliseconds, as the server reads it: a number alone is
/// milliseconds, or a number and a unit (`us`, `ms`, `s`, `min`, `h`, `d`).
fn milliseconds(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let number: f64 = value[..split].parse().ok()?;
    let per_unit = match value[split..].trim() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    Some((number * per_unit).ceil() as u64)
}

/// A string, quoted identifier, dollar quote or block comment the file opens and never closes,
/// as (line it opens on, what it is, what closes it). Sent as it is, it would run on into the
/// statements db-migrate appends to the file, and the server would quote those in its error.
pub fn unterminated(sql: &str) -> Option<(usize, String, String)> {
    let last = tokens(sql).last()?;
    if last.end != sql.len()
        || !matches!(last.kind, Kind::Literal | Kind::QuotedIdent | Kind::Other)
    {
        return None;
    }
    // A token that is closed ends where it ends; an open one runs on into whatever follows.
    let longer = format!("{sql}\n");
    if lex(&longer, last.start).1 <= sql.len() {
        return None;
    }
    let text = last.text(sql);
    let (what, closer) = match text.as_bytes() {
        [b'/', b'*', ..] => ("block comment".to_string(), "*/".to_string()),
        [b'$', ..] => {
            let tag = &text[..=text[1..].find('$')? + 1];
            (format!("dollar quote {tag}"), tag.to_string())
        }
        _ if last.kind == Kind::QuotedIdent => ("quoted identifier".into(), "\"".into()),
        // With backslash escapes off (standard_conforming_strings, on since PostgreSQL 9.1),
        // `'it\'s'` leaves a quote open: doubling it works whatever the setting.
        _ => (
            "string".into(),
            "' (a quote inside a string is written '')".into(),
        ),
    };
    Some((line_of(sql, last.start), what, closer))
}

/// Why a migration that failed in the dry run's or `plan`'s one transaction failed only for
/// being rehearsed there, not for anything `up` would meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RehearsalOnly {
    /// [`awaits_enum_commit`].
    EnumCommit,
    /// [`awaits_skipped`].
    Skipped,
}

impl RehearsalOnly {
    /// Why, for the warning that names the migration.
    pub fn why(self) -> &'static str {
        match self {
            RehearsalOnly::EnumCommit => {
                "it uses a value an earlier migration adds to an enum type, usable only once that one commits (as up commits it)"
            }
            RehearsalOnly::Skipped => {
                "it fails on something a migration before it names that was not run (up runs that one first)"
            }
        }
    }
}

/// Whether the file `sql`, failed with `sqlstate` and `message` where the rehearsal ran it
/// after the migrations before it (`skipped`: those it did not run; `up`: rehearsing `up`, not
/// a rollback), failed only for being rehearsed; the caller rewinds it, names it, and counts
/// it among the ones not run.
pub fn rehearsal_only(
    sqlstate: &str,
    message: &str,
    sql: &str,
    skipped: &[&str],
    up: bool,
) -> Option<RehearsalOnly> {
    if awaits_enum_commit(sqlstate, sql) {
        return Some(RehearsalOnly::EnumCommit);
    }
    (up && awaits_skipped(sqlstate, message, skipped)).then_some(RehearsalOnly::Skipped)
}

/// Whether a file that failed with `sqlstate` failed only for running in one transaction with
/// the migrations before it, as the dry run and `plan` run them: it uses a value an earlier
/// one added to an enum type (55P04), which PostgreSQL allows only once the transaction that
/// added it has committed, and `up` commits each migration first. A file that may add such a
/// value itself is never taken for one: the words `ADD VALUE` anywhere in it, in a comment,
/// a string or a function body (dynamic SQL) too, since `up` would fail on it as well.
fn awaits_enum_commit(sqlstate: &str, sql: &str) -> bool {
    sqlstate == "55P04" && !adds_enum_value(sql)
}

/// Whether the words `ADD VALUE` stand anywhere in `sql`.
pub fn adds_enum_value(sql: &str) -> bool {
    let mut words = sql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty());
    let mut after_add = false;
    words.any(|word| {
        let found = after_add && word.eq_ignore_ascii_case("value");
        after_add = word.eq_ignore_ascii_case("add");
        found
    })
}

/// Whether a file that failed with `sqlstate` and `message` may have failed only for what the
/// migrations before it that were not run (`skipped`, their SQL: `-- no-transaction` files,
/// which the dry run and `plan` list without running, and those `plan` could not trace) make:
/// a relation, column, index, function, type or schema not found (42P01, 42703, 42704,
/// 42883, 3F000), or an enum value the type does not take (22P02), whose name, the first one
/// the message quotes (a function's: the word before its parenthesis), a skipped file names
/// as a word. Anything else, a message that names nothing so (a translated one), or a name no
/// skipped file holds, is the migration's own failure.
fn awaits_skipped(sqlstate: &str, message: &str, skipped: &[&str]) -> bool {
    if !matches!(
        sqlstate,
        "42P01" | "42703" | "42704" | "42883" | "3F000" | "22P02"
    ) {
        return false;
    }
    let quoted = message
        .split('"')
        .nth(1)
        .filter(|_| message.matches('"').count() >= 2);
    let called = || {
        let before = message.split('(').next()?;
        before.split_whitespace().last()
    };
    let Some(name) = quoted.or_else(|| (sqlstate == "42883").then(called).flatten()) else {
        return false;
    };
    // A qualified name is looked for by its last part, as a file may name it unqualified.
    let name = name.rsplit('.').next().unwrap_or(name).to_lowercase();
    if name.is_empty() {
        return false;
    }
    let is_word = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    skipped.iter().any(|sql| {
        let sql = sql.to_lowercase();
        sql.match_indices(&name).any(|(at, _)| {
            let before = sql[..at].chars().next_back();
            let after = sql[at + name.len()..].chars().next();
            !before.is_some_and(is_word) && !after.is_some_and(is_word)
        })
    })
}

/// `query`, another session's as `pg_stat_activity` shows it, with each string literal and
/// dollar-quoted body written `'?'` and each comment dropped: what the job logs of a session
/// that blocks it must not carry a password or token that session sent (`ALTER ROLE ...
/// PASSWORD '...'`, a value it inserts). Its words, names and numbers stay, to tell what it
/// runs. A literal cut off by the server's `track_activity_query_size` runs to the end.
pub fn without_literals(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    for token in tokens(query) {
        let text = token.text(query);
        match token.kind {
            Kind::Literal => out.push_str("'?'"),
            // A block comment cut off before its end lexes as `/` alone: drop the rest.
            Kind::Comment => out.push(' '),
            _ if text.starts_with("/*") => {
                out.push(' ');
                break;
            }
            _ => out.push_str(text),
        }
    }
    out
}

/// The first `COPY ... FROM STDIN` or `COPY ... TO STDOUT`, as (line, a short description
/// such as `COPY ... FROM STDIN`). Its data would have to follow the statement over the
/// protocol, which a plain SQL script cannot do; COPY to or from a file or program is not
/// reported.
pub fn copy_stdio(sql: &str) -> Option<(usize, String)> {
    spans(sql).find_map(|(start, end)| {
        let description = copy_stdio_description(&sql[start..end])?;
        Some((line_of(sql, start), description))
    })
}

/// The first statement that releases the session's advisory locks, the migration lock among
/// them, as (line, what): `DISCARD ALL`, or a call of `pg_advisory_unlock_all` outside quotes
/// and comments. Released in the middle of a migration, the lock lets a second run start on
/// the same pending migrations while this one is still applying them. A call hidden in a
/// function body or a `DO` block is not seen (the run's guard then stops this run, not the
/// other).
pub fn releases_lock(sql: &str) -> Option<(usize, &'static str)> {
    if !contains_any_ignore_case(sql, &["pg_advisory_unlock_all", "discard"]) {
        return None;
    }
    spans(sql).find_map(|(start, end)| {
        let statement = &sql[start..end];
        let mut code = code(statement);
        let first = code.next()?;
        let what = match first.is_keyword(statement, "discard") {
            true => code
                .next()
                .filter(|t| t.is_keyword(statement, "all"))
                .map(|_| "DISCARD ALL"),
            false => std::iter::once(first)
                .chain(code)
                .any(|t| t.is_keyword(statement, "pg_advisory_unlock_all"))
                .then_some("pg_advisory_unlock_all()"),
        }?;
        Some((line_of(sql, start), what))
    })
}

/// Whether `sql` calls `setval` outside quotes and comments: a sequence's value is not
/// transactional, so a rollback leaves the value it set (`plan`, which rolls its trace back,
/// would leave the bot's next insert a key that exists).
pub fn calls_setval(sql: &str) -> bool {
    contains_any_ignore_case(sql, &["setval"]) && tokens(sql).any(|t| t.is_keyword(sql, "setval"))
}

/// The first psql meta-command (a backslash outside quotes and comments), as (line, command
/// word such as `\set`). It may end a line of SQL as well as start one (`SELECT ... \gset`,
/// `\gexec`): PostgreSQL has no backslash outside a quoted text, so the server would refuse
/// the file wherever it stands, and only after the migrations before it had committed.
pub fn meta_command(sql: &str) -> Option<(usize, String)> {
    tokens(sql)
        .find(|t| t.kind == Kind::Backslash)
        .map(|t| (line_of(sql, t.start), command_word(sql, t.start)))
}

/// Maps the server's error position (1-based, in characters of the text it received) to a
/// 1-based (line, column in characters). Position 0 maps to the first character; positions
/// past the end map to just after the last character, where "end of input" errors point.
pub fn line_col(sql: &str, position: usize) -> (usize, usize) {
    sql.chars()
        .take(position.saturating_sub(1))
        .fold((1, 1), |(line, col), c| match c {
            '\n' => (line + 1, 1),
            _ => (line, col + 1),
        })
}

/// The indexes the file creates: each name spelled as the catalog will store it, with its
/// table as the statement writes it (`s.big`, `"My"."T"`), which says the index's schema.
pub fn created_indexes(sql: &str) -> Vec<(String, Option<String>)> {
    spans(sql)
        .filter_map(|(start, end)| {
            let statement = &sql[start..end];
            created_index(statement, &head(statement, HEAD))
        })
        .collect()
}

/// `sql` without its comments, those inside dollar-quoted bodies (a `DO` block's, a
/// function's, whose language shares SQL's comments) too, each left as a space: the text a
/// scan for the words a file may use as names reads (River's `-- River's ...` inside a DO
/// block named no schema `river`). String literals stay, as `format('%I', 'app')` names one.
pub fn without_comments(sql: &str) -> String {
    uncommented(sql, 0)
}

/// [`without_comments`], `depth` bodies deep: past a few, a body is kept as it is (a body
/// quoted in a body quoted in a body is no migration's).
fn uncommented(sql: &str, depth: usize) -> String {
    let mut out = String::with_capacity(sql.len());
    for token in tokens(sql) {
        let text = token.text(sql);
        match token.kind {
            Kind::Comment => out.push(' '),
            Kind::Literal if text.starts_with('$') => {
                // `$tag$body$tag$`: the tag is the text up to the second `$`.
                let open = text[1..].find('$').map(|i| i + 2);
                match open {
                    Some(open)
                        if depth < 4 && text.len() >= 2 * open && text.ends_with(&text[..open]) =>
                    {
                        out.push_str(&text[..open]);
                        out.push_str(&uncommented(&text[open..text.len() - open], depth + 1));
                        out.push_str(&text[..open]);
                    }
                    _ => out.push_str(text),
                }
            }
            _ => out.push_str(text),
        }
    }
    out
}

/// For a `DELETE FROM pg_enum` statement, a query of what it deletes: one row per label, its
/// type's OID and the label. The statement's own WITH, target, USING and WHERE are kept as
/// written, each on lines of its own (a `--` comment ending one cannot swallow the next), its
/// RETURNING is left out; `reference` is how they name `pg_enum` (its alias), which the
/// selected columns are qualified with, as a USING list may have columns of those names too.
/// `None` for any other statement, and for `WHERE CURRENT OF` (a cursor's row, which no query
/// outside the cursor's transaction can find).
pub fn enum_labels_deleted(statement: &str, reference: &str) -> Option<String> {
    let tokens: Vec<Token> = code(statement).collect();
    let (mut depth, mut delete, mut at) = (0_usize, None, std::collections::HashMap::new());
    for (i, token) in tokens.iter().enumerate() {
        match token.kind {
            Kind::Open => depth += 1,
            Kind::Close => depth = depth.saturating_sub(1),
            // The statement's own DELETE is the one FROM follows (a WITH query may be named
            // `delete`), and its clauses come after it (a WITH query's CYCLE has a USING).
            Kind::Word if depth == 0 && delete.is_none() => {
                let from = tokens
                    .get(i + 1)
                    .is_some_and(|t| t.is_keyword(statement, "from"));
                if token.is_keyword(statement, "delete") && from {
                    delete = Some(i);
                }
            }
            Kind::Word if depth == 0 => {
                let word = token.text(statement).to_ascii_lowercase();
                if ["using", "where", "returning"].contains(&word.as_str()) {
                    at.entry(word).or_insert(i);
                }
            }
            _ => {}
        }
    }
    let delete = delete?;
    let end = tokens.last()?.end;
    // The text of the clause whose keyword is token `i`, to the next clause or the end.
    let clause = |i: usize, next: &[&str]| {
        let start = tokens.get(i + 1).map_or(end, |t| t.start);
        let stop = (next.iter().filter_map(|word| at.get(*word)))
            .min()
            .map_or(end, |&j| tokens[j].start);
        &statement[start..stop.max(start)]
    };
    let mut query = format!(
        "{}SELECT {reference}.enumtypid, {reference}.enumlabel::pg_catalog.text\nFROM {}\n",
        &statement[..tokens[delete].start],
        clause(delete + 1, &["using", "where", "returning"]),
    );
    if let Some(&using) = at.get("using") {
        query.push_str(&format!(", {}\n", clause(using, &["where", "returning"])));
    }
    if let Some(&r#where) = at.get("where") {
        let current_of = tokens
            .get(r#where + 1)
            .is_some_and(|t| t.is_keyword(statement, "current"))
            && tokens
                .get(r#where + 2)
                .is_some_and(|t| t.is_keyword(statement, "of"));
        if current_of {
            return None;
        }
        query.push_str(&format!("WHERE {}\n", clause(r#where, &["returning"])));
    }
    Some(query)
}

/// True for a statement that takes its locks in steps with CONCURRENTLY (`CREATE INDEX`,
/// `DROP INDEX`, `REINDEX`, `REFRESH MATERIALIZED VIEW`, `ALTER TABLE ... DETACH PARTITION`):
/// its lock never conflicts with the bot's reads and writes, and it then waits for older
/// transactions to end.
pub fn waits_without_blocking(statement: &str) -> bool {
    let starts = ["create", "drop", "reindex", "refresh", "alter"];
    let mut tokens = code(statement);
    tokens
        .next()
        .is_some_and(|first| starts.iter().any(|k| first.is_keyword(statement, k)))
        && tokens.any(|t| t.is_keyword(statement, "concurrently"))
}

/// Whether a statement of a `-- no-transaction` file may share its message with a check
/// sent before it: the two then run in one implicit transaction block, in one server
/// session even behind a transaction pooler, so the statement runs in the run's session
/// (with its `lock_timeout` and its lock) or not at all. Only statements that take table
/// locks or change the session's settings, and do the same inside a transaction block as
/// outside one: `VACUUM`, `CLUSTER` and
/// `REINDEX` (refused inside one on a partitioned table, which the text does not show),
/// `ANALYZE` (of several tables, each in a transaction of its own only outside one),
/// `DEALLOCATE` (the run's own prepared statements go with it) and `DISCARD`, `SET
/// TRANSACTION` (only before the transaction's first query) and, inside the file's own
/// block, any `SET`, `CALL` (its procedure may commit), what
/// PostgreSQL refuses inside a transaction block, and `ALTER TYPE ... VALUE` before
/// PostgreSQL 12 (`server_version`) go alone; so does `LOCK`, refused outside a transaction
/// block, unless the file opened one (`in_block`).
pub fn shares_message(statement: &str, in_block: bool, server_version: i32) -> bool {
    let head = head(statement, HEAD);
    if outside_only(statement, &head).is_some() || waits_without_blocking(statement) {
        return false;
    }
    let word = |i: usize| lower_word(statement, &head, i);
    match word(0).as_str() {
        "create" | "drop" => !matches!(word(1).as_str(), "database" | "subscription"),
        "alter" => match word(1).as_str() {
            "database" | "subscription" | "system" => false,
            "type" => {
                server_version >= 120_000 || !head.iter().any(|t| t.is_keyword(statement, "value"))
            }
            _ => true,
        },
        "truncate" | "insert" | "update" | "delete" | "merge" | "with" | "select" | "comment"
        | "grant" | "revoke" | "refresh" | "security" => true,
        // A setting lasts in the server session it lands in: the file's next statements
        // (checked, so in the run's session) run under it, and the bot's transactions, which a
        // transaction pooler gives another server session, do not. Not inside the file's own
        // block, which keeps its server session anyway, and where the check's query would
        // come before a SET TRANSACTION that must come first; nor the transaction's own
        // characteristics.
        "set" | "reset" if in_block => false,
        "set" | "reset" => {
            let name = match word(1).as_str() {
                "local" | "session" => word(2),
                name => name.to_string(),
            };
            name != "transaction" && !name.starts_with("transaction_")
        }
        "lock" => in_block,
        // One that commits (itself or in a procedure it calls) is refused inside the check's
        // transaction block (2D000) before anything of it stays, and is sent again alone.
        "do" => true,
        _ => false,
    }
}

/// `Some(true)` for a statement that opens a transaction block (`BEGIN`, `START
/// TRANSACTION`), `Some(false)` for one that ends it (`COMMIT`, `END`, `ROLLBACK`, `ABORT`,
/// `PREPARE TRANSACTION`), else `None`: what a `-- no-transaction` file's statements do to
/// the block [`shares_message`] asks about.
pub fn opens_block(statement: &str) -> Option<bool> {
    match control_keywords(statement, &head(statement, HEAD))?.as_str() {
        "BEGIN" | "START" => Some(true),
        "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "PREPARE TRANSACTION" => Some(false),
        _ => None,
    }
}

/// What a statement's keywords say of its reach into existing tables, for the hazard rules,
/// which parse only what may matter to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Its first keyword is none the rules weigh (`INSERT`, `SELECT`, `COMMENT`, `GRANT`,
    /// `DO`, ...): no parse needed.
    None,
    /// `CREATE` without the `INDEX` keyword: a table, view, sequence, function or the like,
    /// and no index built on a table that exists (only `CREATE [UNIQUE] INDEX` does). It
    /// only names what it creates, which matters only to a hazard later on that name.
    Creates,
    /// `CREATE ... INDEX`, `ALTER`, `DROP`, `TRUNCATE`, `DELETE`, `UPDATE`, `WITH` (before a
    /// `DELETE` or `UPDATE`), `CLUSTER`, `VACUUM`, `REFRESH` or `REINDEX`: may change, rewrite
    /// or drop existing tables or rows.
    Tables,
}

/// The [`Reach`] of `statement`, from one pass of the lexer.
pub fn reach(statement: &str) -> Reach {
    let starts = [
        "alter", "drop", "truncate", "delete", "update", "with", "cluster", "vacuum", "refresh",
        "reindex",
    ];
    let mut tokens = code(statement);
    let Some(first) = tokens.next() else {
        return Reach::None;
    };
    if first.is_keyword(statement, "create") {
        return match tokens.any(|t| t.is_keyword(statement, "index")) {
            true => Reach::Tables,
            false => Reach::Creates,
        };
    }
    match starts.iter().any(|k| first.is_keyword(statement, k)) {
        true => Reach::Tables,
        false => Reach::None,
    }
}

/// Whether every statement of `sql` only defines things: it starts with `CREATE`, `ALTER`,
/// `DROP`, `COMMENT`, `GRANT` or `REVOKE`, and holds no query (no `SELECT` or `VALUES`, no
/// `AS TABLE`, `AS WITH` or `AS EXECUTE`, bare or in parentheses, as `CREATE TABLE ... AS`
/// would), no `EXTENSION` (whose script may do anything) and no `TRIGGER` or `RULE` (whose
/// action runs on a later write, a history row's included). On tables that hold no rows,
/// such a file takes only the time of its catalog changes. From the lexer alone: a
/// function's body is a string to it.
pub fn defines_only(sql: &str) -> bool {
    let starts = ["create", "alter", "drop", "comment", "grant", "revoke"];
    // A trigger or rule runs SQL on another's write: one on the history table, or an event
    // trigger, would run queries as the migrations behind it record themselves.
    let queries = ["select", "values", "extension", "trigger", "rule"];
    spans(sql).all(|(start, end)| {
        let statement = &sql[start..end];
        let mut tokens = code(statement);
        let Some(first) = tokens.next() else {
            return true;
        };
        let mut after_as = false;
        starts.iter().any(|k| first.is_keyword(statement, k))
            && tokens.all(|t| {
                let query = queries.iter().any(|k| t.is_keyword(statement, k))
                    || (after_as
                        && ["table", "with", "execute"]
                            .iter()
                            .any(|k| t.is_keyword(statement, k)));
                // `AS (TABLE v)`: the query may stand in parentheses.
                after_as = t.is_keyword(statement, "as") || (after_as && t.kind == Kind::Open);
                !query
            })
    })
}

/// The command tag the server reports for `statement` (`CREATE TABLE`, `INSERT`, `ALTER
/// DEFAULT PRIVILEGES`, ...), without the row count: tokio-postgres hands over only a
/// command's count, so the words are read from the statement the way the server names it.
/// `CREATE TABLE ... AS` and `CREATE MATERIALIZED VIEW` report `SELECT`, as the server does;
/// a statement it does not know is named by its first keyword.
pub fn command_tag(statement: &str) -> String {
    let mut tokens = code(statement).peekable();
    match tokens.peek() {
        None => return String::new(),
        // `(SELECT ...) UNION ...`
        Some(t) if t.kind == Kind::Open => return "SELECT".into(),
        Some(_) => {}
    }
    // The words outside parentheses, in upper case; "" stands for any other token, so
    // `CREATE TABLE "Quoted"` does not read the next keyword as part of the command. The
    // first ones say it all (the AS of CREATE TABLE ... AS, the command after WITH's
    // parenthesised queries); an INSERT of many rows has a comma outside them for each.
    let mut depth = 0usize;
    let mut words = Vec::new();
    for token in tokens {
        if words.len() == COMMAND_WORDS {
            break;
        }
        match token.kind {
            Kind::Open => depth += 1,
            Kind::Close => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            Kind::Word => words.push(token.text(statement).to_ascii_uppercase()),
            _ => words.push(String::new()),
        }
    }
    let word = |i: usize| words.get(i).map_or("", String::as_str);
    match word(0) {
        "CREATE" => {
            let modifiers = [
                "OR",
                "REPLACE",
                "TEMP",
                "TEMPORARY",
                "UNLOGGED",
                "UNIQUE",
                "GLOBAL",
                "LOCAL",
                "TRUSTED",
                "PROCEDURAL",
                "RECURSIVE",
                "CONSTRAINT",
            ];
            let at = (1..).find(|&i| !modifiers.contains(&word(i))).unwrap_or(1);
            let object = object_words(&words, at);
            let selects = ["TABLE", "MATERIALIZED VIEW"].contains(&object.as_str())
                && words[at..].iter().any(|w| w == "AS");
            match (selects, object.as_str()) {
                (true, _) => "SELECT".into(),
                (false, "") => "CREATE".into(),
                (false, object) => format!("CREATE {object}"),
            }
        }
        verb @ ("ALTER" | "DROP") => match object_words(&words, 1) {
            object if object.is_empty() => verb.into(),
            object => format!("{verb} {object}"),
        },
        // The statement after the common table expressions (their bodies are in parentheses).
        "WITH" => words[1..]
            .iter()
            .find(|w| ["INSERT", "UPDATE", "DELETE", "MERGE", "SELECT"].contains(&w.as_str()))
            .map_or("SELECT".into(), String::clone),
        "" | "VALUES" | "TABLE" => "SELECT".into(),
        "TRUNCATE" | "LOCK" => format!("{} TABLE", word(0)),
        "REFRESH" => "REFRESH MATERIALIZED VIEW".into(),
        "SECURITY" => "SECURITY LABEL".into(),
        "IMPORT" => "IMPORT FOREIGN SCHEMA".into(),
        "START" => "START TRANSACTION".into(),
        "END" => "COMMIT".into(),
        first => first.into(),
    }
}

/// How many words outside parentheses [`command_tag`] reads.
const COMMAND_WORDS: usize = 256;

/// The object a CREATE, ALTER or DROP names from word `at` on, as its command tag names it.
fn object_words(words: &[String], at: usize) -> String {
    let word = |i: usize| words.get(i).map_or("", String::as_str);
    let two = || format!("{} {}", word(at), word(at + 1));
    match (word(at), word(at + 1)) {
        ("MATERIALIZED" | "EVENT" | "ACCESS" | "DEFAULT" | "LARGE", _) => two(),
        ("FOREIGN", "DATA") => "FOREIGN DATA WRAPPER".into(),
        ("FOREIGN", _) => "FOREIGN TABLE".into(),
        ("TEXT", _) => format!("TEXT SEARCH {}", word(at + 2)),
        ("OPERATOR", "CLASS" | "FAMILY") | ("USER", "MAPPING") => two(),
        ("USER" | "GROUP", _) => "ROLE".into(),
        (object, _) => object.into(),
    }
}

pub const BOM: &str = "\u{feff}";

/// PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Whitespace, including a leading byte-order mark.
    Space,
    /// A terminated comment.
    Comment,
    /// An unquoted identifier or keyword.
    Word,
    QuotedIdent,
    /// Any string literal, including dollar-quoted ones.
    Literal,
    Semicolon,
    Open,
    Close,
    Backslash,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Token {
    fn text<'a>(&self, sql: &'a str) -> &'a str {
        sql.get(self.start..self.end).unwrap_or_default()
    }

    fn is_keyword(&self, sql: &str, keyword: &str) -> bool {
        self.kind == Kind::Word && self.text(sql).eq_ignore_ascii_case(keyword)
    }
}

/// Every token of the source, whitespace and comments included, so offsets stay exact.
struct Tokens<'a> {
    sql: &'a str,
    pos: usize,
}

fn tokens(sql: &str) -> Tokens<'_> {
    Tokens { sql, pos: 0 }
}

impl Iterator for Tokens<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let start = self.pos;
        if start >= self.sql.len() {
            return None;
        }
        // Editors on Windows like to add a BOM, which the server would reject as code.
        let (kind, end) = if start == 0 && self.sql.starts_with(BOM) {
            (Kind::Space, BOM.len())
        } else {
            lex(self.sql, start)
        };
        self.pos = end;
        Some(Token { kind, start, end })
    }
}

/// Lexes the token starting at byte `i`. Every token ends at an ASCII byte or at the end of
/// the source, so token boundaries are always char boundaries. Unterminated quotes run to
/// the end of the source, so the server sees (and reports) the rest of the file.
fn lex(sql: &str, i: usize) -> (Kind, usize) {
    let b = sql.as_bytes();
    let next = b.get(i + 1).copied();
    match b[i] {
        b'-' if next == Some(b'-') => (Kind::Comment, line_end(b, i)),
        b'/' if next == Some(b'*') => block_comment(b, i),
        b'\'' => (Kind::Literal, quoted_end(b, i + 1, b'\'')),
        b'"' => (Kind::QuotedIdent, quoted_end(b, i + 1, b'"')),
        b'$' => dollar(sql, i),
        b'e' | b'E' if next == Some(b'\'') => (Kind::Literal, escape_string_end(b, i + 2)),
        b'u' | b'U' if next == Some(b'&') => unicode_prefixed(b, i),
        c if is_ident_start(c) => (Kind::Word, run_end(b, i + 1, is_ident_char)),
        c if c.is_ascii_digit() => (Kind::Other, number_end(b, i)),
        c if is_space(c) => (Kind::Space, run_end(b, i + 1, is_space)),
        b';' => (Kind::Semicolon, i + 1),
        b'(' => (Kind::Open, i + 1),
        b')' => (Kind::Close, i + 1),
        b'\\' => (Kind::Backslash, i + 1),
        _ => (Kind::Other, i + 1),
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// Bytes >= 0x80 count as letters, as in PostgreSQL, so multi-byte characters are never split.
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn is_tag_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

fn run_end(b: &[u8], from: usize, pred: impl Fn(u8) -> bool) -> usize {
    b[from..]
        .iter()
        .position(|&c| !pred(c))
        .map_or(b.len(), |p| from + p)
}

/// A `--` comment ends at either newline byte: the server ends it at a lone `\r` too, so a
/// statement after it on an old Mac-style line is code, not comment.
fn line_end(b: &[u8], from: usize) -> usize {
    run_end(b, from, |c| !is_newline(c))
}

fn is_newline(c: u8) -> bool {
    matches!(c, b'\n' | b'\r')
}

/// Letters glued to a number (`1e5`, `1abc`) belong to it, so they are never read as a
/// keyword or as an `E'` string prefix.
fn number_end(b: &[u8], i: usize) -> usize {
    let end = run_end(b, i, |c| c.is_ascii_digit() || c == b'.' || c == b'_');
    match b.get(end) {
        Some(&c) if is_ident_start(c) => run_end(b, end, is_ident_char),
        _ => end,
    }
}

/// Block comments nest in PostgreSQL. An unterminated one is kept as code rather than a
/// comment, so the statement holding it is sent and the server reports the error.
fn block_comment(b: &[u8], i: usize) -> (Kind, usize) {
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() {
        match (b[j], b.get(j + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                j += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return (Kind::Comment, j);
                }
            }
            _ => j += 1,
        }
    }
    (Kind::Other, b.len())
}

/// End of a quoted run whose quote character is escaped by doubling it.
fn quoted_end(b: &[u8], from: usize, quote: u8) -> usize {
    let mut j = from;
    while j < b.len() {
        if b[j] == quote {
            if b.get(j + 1) != Some(&quote) {
                return j + 1;
            }
            j += 1;
        }
        j += 1;
    }
    b.len()
}

/// End of an `E'...'` string, where a backslash also escapes the next byte. A constant
/// continued on a later line is the same constant, and its parts keep the E rules, so
/// `E'x'` + newline + `'a\''` is one string: read as a plain one, its `\'` would end it early
/// and hide the code after it.
fn escape_string_end(b: &[u8], from: usize) -> usize {
    let mut j = from;
    while j < b.len() {
        match (b[j], b.get(j + 1)) {
            (b'\\', _) | (b'\'', Some(b'\'')) => j += 2,
            (b'\'', _) => match continuation(b, j + 1) {
                Some(next) => j = next,
                None => return j + 1,
            },
            _ => j += 1,
        }
    }
    b.len()
}

/// Where a string constant ending just before `from` continues: after whitespace holding at
/// least one newline, and `--` comments, the next `'` opens the next part (scan.l's
/// `quotecontinue`). A block comment in between does not continue it. Returns the position
/// after that quote.
fn continuation(b: &[u8], from: usize) -> Option<usize> {
    let mut j = from;
    let mut newline = false;
    loop {
        match (*b.get(j)?, b.get(j + 1)) {
            (b'\'', _) if newline => return Some(j + 1),
            (b'-', Some(b'-')) => j = line_end(b, j),
            (c, _) if is_space(c) => {
                newline |= is_newline(c);
                j += 1;
            }
            _ => return None,
        }
    }
}

/// `U&'...'` and `U&"..."`: their backslash escapes never hide a quote, so plain rules do,
/// continued parts included.
fn unicode_prefixed(b: &[u8], i: usize) -> (Kind, usize) {
    match b.get(i + 2) {
        Some(b'\'') => (Kind::Literal, quoted_end(b, i + 3, b'\'')),
        Some(b'"') => (Kind::QuotedIdent, quoted_end(b, i + 3, b'"')),
        _ => (Kind::Word, run_end(b, i + 1, is_ident_char)),
    }
}

/// A `$` starts a parameter (`$1`), a dollar-quoted string (`$$`, `$tag$`), or nothing.
fn dollar(sql: &str, i: usize) -> (Kind, usize) {
    let b = sql.as_bytes();
    if b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return (Kind::Other, run_end(b, i + 1, |c| c.is_ascii_digit()));
    }
    let Some(close) = dollar_tag_end(b, i + 1) else {
        return (Kind::Other, i + 1);
    };
    let delimiter = &sql[i..=close];
    let body = close + 1;
    let end = sql[body..]
        .find(delimiter)
        .map_or(sql.len(), |at| body + at + delimiter.len());
    (Kind::Literal, end)
}

/// Position of the `$` closing a dollar-quote tag that starts at `from`, if there is one.
fn dollar_tag_end(b: &[u8], from: usize) -> Option<usize> {
    let end = match b.get(from) {
        Some(&c) if is_ident_start(c) => run_end(b, from + 1, is_tag_char),
        _ => from,
    };
    (b.get(end) == Some(&b'$')).then_some(end)
}

/// Each non-empty statement of `sql` as the span of its code, from its first code token to
/// the end of its last, found lazily: a statement's tokens are never held, so a file of one
/// huge INSERT costs no more memory than its text (a token list is several times the text).
fn spans(sql: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut tokens = tokens(sql);
    let mut splitter = Splitter::default();
    std::iter::from_fn(move || {
        for token in tokens.by_ref() {
            if let Some(span) = splitter.push(sql, token) {
                return Some(span);
            }
        }
        splitter.take()
    })
}

/// The code tokens (no whitespace or comments) of the first non-empty statement of `sql`,
/// lazily: what reads a statement's keywords reads only as far as it needs.
fn code(sql: &str) -> impl Iterator<Item = Token> + '_ {
    let mut tokens = tokens(sql);
    let mut splitter = Splitter::default();
    std::iter::from_fn(move || {
        for token in tokens.by_ref() {
            match token.kind {
                Kind::Space | Kind::Comment => {}
                Kind::Semicolon if splitter.at_top() && splitter.span.is_none() => {}
                Kind::Semicolon if splitter.at_top() => return None,
                _ => {
                    splitter.push(sql, token);
                    return Some(token);
                }
            }
        }
        None
    })
    .fuse()
}

/// The first `n` code tokens of the first statement of `sql`, for the readers of leading
/// keywords.
fn head(sql: &str, n: usize) -> Vec<Token> {
    code(sql).take(n).collect()
}

/// Enough leading tokens for every statement the file checks read by its head: the longest
/// is `CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS name ON` (9).
const HEAD: usize = 16;

/// Where statements end: at a semicolon outside parentheses and routine bodies.
#[derive(Default)]
struct Splitter {
    /// The current statement's first code token's start and its last one's end.
    span: Option<(usize, usize)>,
    parens: usize,
    body: AtomicBody,
}

impl Splitter {
    /// Takes in the next token; returns the statement it ends, if it ends one.
    fn push(&mut self, sql: &str, token: Token) -> Option<(usize, usize)> {
        match token.kind {
            Kind::Space | Kind::Comment => None,
            Kind::Semicolon if self.at_top() => self.take(),
            _ => {
                self.push_code(sql, token);
                None
            }
        }
    }

    fn at_top(&self) -> bool {
        self.parens == 0 && self.body.depth == 0
    }

    /// Semicolons inside parentheses stay in the statement, as psql keeps them (rule actions).
    fn push_code(&mut self, sql: &str, token: Token) {
        match token.kind {
            Kind::Open => self.parens += 1,
            Kind::Close => self.parens = self.parens.saturating_sub(1),
            _ => {}
        }
        self.body.code(sql, token, self.parens);
        let start = self.span.map_or(token.start, |(start, _)| start);
        self.span = Some((start, token.end));
    }

    /// Ends the current statement: its span, unless it held no code.
    fn take(&mut self) -> Option<(usize, usize)> {
        self.parens = 0;
        self.body = AtomicBody::default();
        self.span.take()
    }
}

/// Tracks `BEGIN ATOMIC ... END` in SQL-standard routine bodies, so their inner semicolons
/// do not end the `CREATE FUNCTION`/`CREATE PROCEDURE` statement. psql counts every BEGIN;
/// BEGIN is an unreserved keyword, though, so `SELECT 1 AS begin` or `SET search_path = begin`
/// would throw its count off. Only BEGIN directly followed by ATOMIC opens a body, at the top
/// level of the statement (the server refuses a CREATE FUNCTION inside a body, and inside one
/// `begin atomic` can be a column and its alias); CASE, which also closes with the reserved
/// END, nests inside it.
#[derive(Default)]
struct AtomicBody {
    head: Vec<String>,
    routine: bool,
    /// The previous code token was a top-level BEGIN of a routine statement.
    after_begin: bool,
    depth: usize,
}

impl AtomicBody {
    fn code(&mut self, sql: &str, token: Token, parens: usize) {
        let after_begin = std::mem::take(&mut self.after_begin);
        if token.kind != Kind::Word {
            return;
        }
        let word = token.text(sql);
        if self.head.len() < 4 {
            self.head.push(word.to_ascii_lowercase());
            self.routine = starts_routine(&self.head);
        }
        if !self.routine || parens > 0 {
            return;
        }
        let is = |keyword: &str| word.eq_ignore_ascii_case(keyword);
        if self.depth == 0 {
            if after_begin && is("atomic") {
                self.depth = 1;
            }
            self.after_begin = is("begin");
        } else if is("case") {
            self.depth += 1;
        } else if is("end") {
            self.depth -= 1;
        }
    }
}

fn starts_routine(head: &[String]) -> bool {
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    matches!(
        head.as_slice(),
        ["create", "function" | "procedure", ..]
            | ["create", "or", "replace", "function" | "procedure", ..]
    )
}

/// Counts lines forward from the last offset asked about, so numbering every statement of a
/// file stays linear.
struct LineCounter {
    offset: usize,
    line: usize,
}

impl LineCounter {
    fn new() -> Self {
        LineCounter { offset: 0, line: 1 }
    }

    fn line_at(&mut self, sql: &str, offset: usize) -> usize {
        let skipped = sql.as_bytes().get(self.offset..offset).unwrap_or_default();
        self.line += skipped.iter().filter(|&&c| c == b'\n').count();
        self.offset = offset;
        self.line
    }
}

fn line_of(sql: &str, offset: usize) -> usize {
    LineCounter::new().line_at(sql, offset)
}

/// psql reads a command name up to whitespace or the next backslash; `\\` is one of its own.
fn command_word(sql: &str, at: usize) -> String {
    let rest = &sql[at + 1..];
    let len = match rest.starts_with('\\') {
        true => 1,
        false => rest
            .find(|c: char| c.is_whitespace() || c == '\\')
            .unwrap_or(rest.len()),
    };
    format!("\\{}", &rest[..len])
}

/// What of `PreventInTransactionBlock`'s statements `tokens` (a statement's head) starts.
fn outside_only(sql: &str, tokens: &[Token]) -> Option<&'static str> {
    let has = |word: &str| tokens.iter().any(|t| t.is_keyword(sql, word));
    let after = |words: &[&str]| {
        words
            .iter()
            .try_fold(tokens, |rest, word| keyword(sql, rest, word))
    };
    let create = after(&["create"]).map(|rest| optional(sql, rest, &["unique"]));
    if create
        .and_then(|rest| keyword(sql, rest, "index"))
        .and_then(|rest| keyword(sql, rest, "concurrently"))
        .is_some()
    {
        return Some("CREATE INDEX CONCURRENTLY");
    }
    let found = [
        (
            &["drop", "index", "concurrently"][..],
            "DROP INDEX CONCURRENTLY",
        ),
        (&["vacuum"], "VACUUM"),
        (&["alter", "system"], "ALTER SYSTEM"),
        (&["create", "database"], "CREATE DATABASE"),
        (&["drop", "database"], "DROP DATABASE"),
        (&["create", "tablespace"], "CREATE TABLESPACE"),
        (&["drop", "tablespace"], "DROP TABLESPACE"),
        (&["discard", "all"], "DISCARD ALL"),
    ];
    if let Some((_, what)) = found.iter().find(|(words, _)| after(words).is_some()) {
        return Some(what);
    }
    if after(&["reindex"]).is_some() && (has("concurrently") || has("system") || has("database")) {
        return Some("REINDEX CONCURRENTLY, DATABASE or SYSTEM");
    }
    if after(&["alter", "table"]).is_some() && has("detach") && has("concurrently") {
        return Some("DETACH PARTITION CONCURRENTLY");
    }
    None
}

/// `CREATE [UNIQUE] INDEX [CONCURRENTLY] [IF NOT EXISTS] name ON ...`
fn created_index(sql: &str, tokens: &[Token]) -> Option<(String, Option<String>)> {
    let rest = keyword(sql, tokens, "create")?;
    let rest = optional(sql, rest, &["unique"]);
    let rest = keyword(sql, rest, "index")?;
    let rest = optional(sql, rest, &["concurrently"]);
    let rest = optional(sql, rest, &["if", "not", "exists"]);
    // Without a name the next token is ON; ON is reserved, so it can never be the name.
    let [name, on, table @ ..] = rest else {
        return None;
    };
    if !on.is_keyword(sql, "on") {
        return None;
    }
    let table = optional(sql, table, &["only"]);
    let named = |t: &Token| matches!(t.kind, Kind::Word | Kind::QuotedIdent);
    let table = match table {
        [schema, dot, name, ..] if named(schema) && dot.text(sql) == "." && named(name) => {
            Some(sql[schema.start..name.end].to_string())
        }
        [name, ..] if named(name) => Some(name.text(sql).to_string()),
        _ => None,
    };
    Some((identifier(sql, name)?, table))
}

/// What a statement's leading keywords do to the transaction (see `transaction_control`).
/// BEGIN, START and ABORT have no savepoint form, and END is COMMIT.
fn control_keywords(sql: &str, tokens: &[Token]) -> Option<String> {
    let (first, rest) = tokens.split_first()?;
    if first.kind != Kind::Word {
        return None;
    }
    let word = first.text(sql).to_ascii_uppercase();
    let prepared = keyword(sql, rest, "prepared").is_some();
    match word.as_str() {
        "BEGIN" | "START" | "END" | "ABORT" => Some(word),
        "COMMIT" | "ROLLBACK" if prepared => Some(format!("{word} PREPARED")),
        "COMMIT" => Some(word),
        "ROLLBACK" => (!rolls_back_to_savepoint(sql, rest)).then_some(word),
        // Isolation, deferrability, snapshot and read-write mode: the server takes them only
        // before the transaction's first query and outside a savepoint, so whether it did
        // would depend on what db-migrate runs ahead of the file (a check that the migration
        // before committed, a cursor, a savepoint), which differs with its place in a run.
        "SET" => {
            let rest = keyword(sql, rest, "session")
                .or_else(|| keyword(sql, rest, "local"))
                .unwrap_or(rest);
            let name = rest.first()?;
            if name.is_keyword(sql, "transaction") {
                return Some("SET TRANSACTION".into());
            }
            let settings = [
                "transaction_isolation",
                "transaction_read_only",
                "transaction_deferrable",
            ];
            let name = identifier(sql, name)?;
            settings
                .contains(&name.as_str())
                .then(|| format!("SET {name}"))
        }
        // `PREPARE name AS ...` is a prepared statement, and its name may be `transaction`:
        // only a string (the transaction's id) after TRANSACTION makes it a two-phase commit.
        "PREPARE" => match rest {
            [transaction, id, ..]
                if transaction.is_keyword(sql, "transaction") && id.kind == Kind::Literal =>
            {
                Some("PREPARE TRANSACTION".into())
            }
            _ => None,
        },
        _ => None,
    }
}

/// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name` undoes work back to a savepoint and
/// leaves the transaction open.
fn rolls_back_to_savepoint(sql: &str, rest: &[Token]) -> bool {
    let rest = optional(sql, rest, &["work"]);
    let rest = optional(sql, rest, &["transaction"]);
    keyword(sql, rest, "to").is_some()
}

/// `COPY ... {FROM | TO} {STDIN | STDOUT}`. The direction is the first FROM or TO outside
/// parentheses: a query or a column list sits inside them, and both words are reserved, so no
/// unquoted table name can be one. The server takes STDIN and STDOUT alike as the client's
/// side, whichever the direction, so either word counts after either.
fn copy_stdio_description(sql: &str) -> Option<String> {
    let mut tokens = code(sql);
    if !tokens.next()?.is_keyword(sql, "copy") {
        return None;
    }
    let mut parens = 0usize;
    let direction = tokens.by_ref().find(|t| {
        match t.kind {
            Kind::Open => parens += 1,
            Kind::Close => parens = parens.saturating_sub(1),
            _ => {}
        }
        parens == 0 && (t.is_keyword(sql, "from") || t.is_keyword(sql, "to"))
    })?;
    let target = tokens.next()?;
    (target.is_keyword(sql, "stdin") || target.is_keyword(sql, "stdout")).then(|| {
        format!(
            "COPY ... {} {}",
            direction.text(sql).to_ascii_uppercase(),
            target.text(sql).to_ascii_uppercase()
        )
    })
}

fn keyword<'t>(sql: &str, tokens: &'t [Token], word: &str) -> Option<&'t [Token]> {
    let (first, rest) = tokens.split_first()?;
    first.is_keyword(sql, word).then_some(rest)
}

/// Skips `words` when all of them come next, in order.
fn optional<'t>(sql: &str, tokens: &'t [Token], words: &[&str]) -> &'t [Token] {
    words
        .iter()
        .try_fold(tokens, |rest, word| keyword(sql, rest, word))
        .unwrap_or(tokens)
}

/// An identifier as the catalog stores it. Only ASCII is folded, as PostgreSQL does for
/// multi-byte encodings.
fn identifier(sql: &str, token: &Token) -> Option<String> {
    let text = token.text(sql);
    let name = match token.kind {
        Kind::Word => text.to_ascii_lowercase(),
        Kind::QuotedIdent => {
            let quoted = &text[text.find('"')? + 1..];
            quoted.strip_suffix('"')?.replace("\"\"", "\"")
        }
        _ => return None,
    };
    Some(truncate_identifier(name))
}

fn truncate_identifier(mut name: String) -> String {
    if name.len() > MAX_IDENTIFIER_BYTES {
        let cut = (0..=MAX_IDENTIFIER_BYTES)
            .rev()
            .find(|&i| name.is_char_boundary(i))
            .unwrap_or(0);
        name.truncate(cut);
    }
    name
}

/// Whether `sql` has a CREATE TABLE naming `qualified`'s table (`schema.table`, as quoted
/// by the server): a migration that makes a table of the name another tool uses.
pub fn creates_table(sql: &str, qualified: &str) -> bool {
    let name = qualified
        .rsplit('.')
        .next()
        .unwrap_or(qualified)
        .trim_matches('"');
    let name = name.to_lowercase();
    split(sql).iter().any(|statement| {
        command_tag(statement.text) == "CREATE TABLE"
            && statement.text.to_lowercase().contains(&name)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_table_created_is_told_from_one_only_used() {
        let name = "public.schema_migrations";
        assert!(super::creates_table(
            "SELECT 1;\nCREATE TABLE IF NOT EXISTS Schema_Migrations (version text);",
            name
        ));
        assert!(!super::creates_table(
            "ALTER TABLE schema_migrations ADD COLUMN data_version int;",
            name
        ));
        assert!(!super::creates_table("CREATE TABLE other (id int);", name));
    }

    use super::*;

    #[test]
    fn comments_are_left_out_in_dollar_quoted_bodies_too() {
        let sql = "DO $body$ BEGIN -- River's\n  PERFORM 'app'; /* x */ END $body$; -- tail\nSELECT $$a -- b$$";
        assert_eq!(
            without_comments(sql),
            "DO $body$ BEGIN  \n  PERFORM 'app';   END $body$;  \nSELECT $$a  $$"
        );
    }

    #[test]
    fn a_delete_from_pg_enum_is_read_as_a_query_of_the_labels_it_deletes() {
        let cases = [
            (
                "DELETE FROM pg_enum WHERE enumlabel = 'x' AND enumtypid = (SELECT oid FROM pg_type WHERE typname = 'e')",
                "pg_enum",
                "SELECT pg_enum.enumtypid, pg_enum.enumlabel::pg_catalog.text\nFROM pg_enum \nWHERE enumlabel = 'x' AND enumtypid = (SELECT oid FROM pg_type WHERE typname = 'e')\n",
            ),
            (
                "delete from pg_catalog.pg_enum e -- the labels\nusing pg_type t where e.enumtypid = t.oid and t.typname = 'e' returning e.oid",
                "e",
                "SELECT e.enumtypid, e.enumlabel::pg_catalog.text\nFROM pg_catalog.pg_enum e -- the labels\n\n, pg_type t \nWHERE e.enumtypid = t.oid and t.typname = 'e' \n",
            ),
            (
                "WITH delete AS (SELECT oid FROM pg_type WHERE typname = 'e') DELETE FROM pg_enum WHERE enumtypid IN (SELECT oid FROM delete)",
                "pg_enum",
                "WITH delete AS (SELECT oid FROM pg_type WHERE typname = 'e') SELECT pg_enum.enumtypid, pg_enum.enumlabel::pg_catalog.text\nFROM pg_enum \nWHERE enumtypid IN (SELECT oid FROM delete)\n",
            ),
            (
                "DELETE FROM pg_enum /* every label */",
                "pg_enum",
                "SELECT pg_enum.enumtypid, pg_enum.enumlabel::pg_catalog.text\nFROM pg_enum\n",
            ),
        ];
        for (statement, reference, query) in cases {
            let read = enum_labels_deleted(statement, reference);
            assert_eq!(read.as_deref(), Some(query), "{statement}");
        }
        let current = "DELETE FROM pg_enum WHERE CURRENT OF c";
        assert_eq!(enum_labels_deleted(current, "pg_enum"), None);
        assert_eq!(enum_labels_deleted("SELECT 1", "pg_enum"), None);
    }

    #[test]
    fn only_definitions_without_queries_define_only() {
        for sql in [
            "CREATE TABLE t (id int PRIMARY KEY, p int REFERENCES q ON DELETE CASCADE);",
            "CREATE INDEX i ON t (lower(x)); ALTER TABLE t ADD COLUMN c int DEFAULT 0;",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
            "CREATE TYPE mood AS ENUM ('a', 'b'); COMMENT ON TABLE t IS 'select values';",
            "-- SELECT in a comment\nDROP TABLE IF EXISTS t; GRANT SELECT ON t TO r;",
            "",
        ] {
            // GRANT SELECT names a privilege, yet reads as a query here: refused, which only
            // costs the grouping.
            let expected = !sql.contains("GRANT SELECT");
            assert_eq!(defines_only(sql), expected, "{sql}");
        }
        for sql in [
            "INSERT INTO t VALUES (1);",
            "CREATE TABLE t AS SELECT generate_series(1, 10);",
            "CREATE TABLE t AS TABLE s;",
            "CREATE TABLE t AS (TABLE s);",
            "CREATE MATERIALIZED VIEW v AS ((TABLE s));",
            "CREATE TABLE t AS (WITH x AS (DELETE FROM s RETURNING 1) TABLE x);",
            "CREATE TABLE t AS EXECUTE p;",
            "CREATE TRIGGER g AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f();",
            "CREATE EVENT TRIGGER e ON ddl_command_end EXECUTE FUNCTION f();",
            "CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY t;",
            "CREATE MATERIALIZED VIEW v AS WITH x AS (SELECT 1) SELECT * FROM x;",
            "CREATE TABLE t (i int); SELECT pg_sleep(1);",
            "CREATE EXTENSION postgis;",
            "DO $$ BEGIN END $$;",
            "REFRESH MATERIALIZED VIEW v;",
            "CREATE TABLE t (i int) ; UPDATE t SET i = 1;",
        ] {
            assert!(!defines_only(sql), "{sql}");
        }
    }

    fn texts(sql: &str) -> Vec<&str> {
        split(sql).into_iter().map(|s| s.text).collect()
    }

    fn assert_splits(cases: &[(&str, &[&str])]) {
        for (sql, expected) in cases {
            assert_eq!(texts(sql), *expected, "input: {sql:?}");
        }
    }

    #[test]
    fn a_change_of_the_time_zone_is_read_from_its_words() {
        for statement in [
            "SET TIME ZONE 'Europe/Berlin'",
            "set local timezone = 'America/New_York'",
            "SET SESSION TimeZone TO DEFAULT",
            "RESET timezone",
            "RESET ALL",
            "SELECT pg_catalog.set_config('TimeZone', 'Asia/Tokyo', false)",
            "DO $$ BEGIN SET TIME ZONE 'Europe/Berlin'; END $$",
            "DO $$ BEGIN EXECUTE format('SET timezone = %L', 'Asia/Tokyo'); END $$",
            "UPDATE pg_settings SET setting = 'Asia/Tokyo' WHERE name = 'TimeZone'",
            "WITH s AS (UPDATE pg_settings SET setting = 'UTC' WHERE name = 'TimeZone' RETURNING 1) SELECT 1",
            "SELECT set_config(name, 'Asia/Tokyo', false) FROM pg_settings WHERE name = 'TimeZone'",
        ] {
            assert!(changes_time_zone(statement), "{statement}");
        }
        for statement in [
            "SET lock_timeout = 0",
            "ALTER TABLE t ALTER COLUMN c TYPE timestamp with time zone",
            "SELECT now() AT TIME ZONE 'UTC'",
            "SELECT set_config('search_path', 'timezone', false)",
            "SELECT name, setting FROM pg_settings WHERE name = 'TimeZone'",
            "DO $$ BEGIN UPDATE t SET c = 1; END $$",
        ] {
            assert!(!changes_time_zone(statement), "{statement}");
        }
    }

    #[test]
    fn what_a_statement_does_to_lock_timeout_is_read_from_its_words() {
        use std::time::Duration;
        let ms = |n| Some(LockTimeout::Set(Duration::from_millis(n)));
        let cases = [
            ("RESET ALL", Some(LockTimeout::Reset)),
            ("reset Lock_Timeout", Some(LockTimeout::Reset)),
            ("SET lock_timeout TO DEFAULT", Some(LockTimeout::Reset)),
            ("SET lock_timeout = 0", ms(0)),
            ("SET lock_timeout = 5000", ms(5000)),
            ("SET LOCAL lock_timeout = '5s'", ms(5000)),
            ("SET SESSION lock_timeout TO '1min'", ms(60_000)),
            ("set lock_timeout = '150ms'", ms(150)),
            ("SET lock_timeout = '2 s'", ms(2000)),
            ("SET lock_timeout = 'soon'", Some(LockTimeout::Unknown)),
            (
                "SELECT pg_catalog.set_config('lock_timeout', '0', false)",
                Some(LockTimeout::Unknown),
            ),
            (
                "DO $$ BEGIN SET lock_timeout = 0; ALTER TABLE t ADD c int; END $$",
                Some(LockTimeout::Unknown),
            ),
            (
                "DO $$BEGIN PERFORM set_config('Lock_Timeout', '0', false); END$$",
                Some(LockTimeout::Unknown),
            ),
            (
                "DO $x$ BEGIN EXECUTE 'SET lock_timeout TO 0'; END $x$",
                Some(LockTimeout::Unknown),
            ),
            (
                "UPDATE pg_catalog.pg_settings SET setting = '0' WHERE name = 'lock_timeout'",
                Some(LockTimeout::Unknown),
            ),
            (
                "SELECT set_config(name, '0', false) FROM pg_settings WHERE name = 'lock_timeout'",
                Some(LockTimeout::Unknown),
            ),
            (
                "WITH s AS (UPDATE pg_settings SET setting = '0' WHERE name = 'lock_timeout' RETURNING 1) SELECT 1",
                Some(LockTimeout::Unknown),
            ),
            ("DO $$ BEGIN ALTER TABLE t ADD c int; END $$", None),
            ("UPDATE t SET lock_timeout = 0", None),
            (
                "SELECT setting FROM pg_settings WHERE name = 'lock_timeout'",
                None,
            ),
            ("SELECT set_config('search_path', '', false)", None),
            ("SET statement_timeout = 0", None),
            ("RESET search_path", None),
            ("SELECT 'RESET ALL'", None),
            ("-- SET lock_timeout = 0\nSELECT 1", None),
        ];
        for (statement, expected) in cases {
            assert_eq!(lock_timeout_change(statement), expected, "{statement}");
        }
    }

    #[test]
    fn what_a_file_opens_and_never_closes_is_named_with_its_line() {
        const STRING: &str = "' (a quote inside a string is written '')";
        let cases = [
            ("SELECT 'abc", Some((1, "string", STRING))),
            ("SELECT 1;\nSELECT E'it\\'s", Some((2, "string", STRING))),
            ("SELECT 'it''", Some((1, "string", STRING))),
            ("SELECT \"x", Some((1, "quoted identifier", "\""))),
            (
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1;",
                Some((1, "dollar quote $body$", "$body$")),
            ),
            (
                "SELECT 1;\n\n/* a /* nested */",
                Some((3, "block comment", "*/")),
            ),
            ("SELECT 'abc';", None),
            ("SELECT 'it''s'", None),
            ("SELECT \"x\"", None),
            ("SELECT $$ a $$", None),
            ("SELECT 1 /* c */", None),
            ("SELECT 1 -- no newline", None),
            ("SELECT E'x'\n", None),
            ("SELECT 123", None),
            ("SELECT 1\n   ", None),
            ("", None),
        ];
        for (sql, expected) in cases {
            let found = unterminated(sql);
            let found = found.as_ref().map(|(l, w, c)| (*l, w.as_str(), c.as_str()));
            assert_eq!(found, expected, "{sql:?}");
        }
    }

    #[test]
    fn only_a_file_that_adds_no_enum_value_awaits_an_earlier_commit() {
        let uses = "CREATE INDEX i ON jobs (id) WHERE status = 'aborting'";
        assert!(awaits_enum_commit("55P04", uses));
        assert!(!awaits_enum_commit("42P01", uses));
        for adds in [
            "ALTER TYPE s ADD VALUE 'aborting'; UPDATE jobs SET status = 'aborting'",
            "alter type s add\n  value if not exists 'x'",
            "DO $$ BEGIN EXECUTE 'ALTER TYPE s ADD VALUE ''x'''; END $$",
            "-- add value x first\nSELECT 1",
        ] {
            assert!(!awaits_enum_commit("55P04", adds), "{adds}");
        }
        // A word that merely contains them is not them.
        assert!(awaits_enum_commit("55P04", "SELECT readd, value_x FROM t"));
    }

    #[test]
    fn another_session_s_query_is_logged_without_its_literals_and_comments() {
        for (query, kept) in [
            (
                "ALTER ROLE bot PASSWORD 'sentinel'",
                "ALTER ROLE bot PASSWORD '?'",
            ),
            (
                "INSERT INTO t VALUES (1, E'a\\'sentinel', $x$sentinel$x$) -- sentinel",
                "INSERT INTO t VALUES (1, '?', '?')  ",
            ),
            (
                "SELECT /* sentinel */ \"col\" FROM t WHERE k = $1",
                "SELECT   \"col\" FROM t WHERE k = $1",
            ),
            // Cut off inside the literal, or inside a comment.
            ("UPDATE t SET token = 'sentin", "UPDATE t SET token = '?'"),
            ("SELECT 1 /* token sentinel", "SELECT 1  "),
            ("SELECT U&'sentinel'", "SELECT '?'"),
        ] {
            assert_eq!(without_literals(query), kept, "{query}");
        }
    }

    #[test]
    fn what_a_skipped_no_transaction_migration_makes_is_awaited_only_after_one() {
        let index = "-- no-transaction\nCREATE INDEX CONCURRENTLY tenants_id ON t (c);";
        let value = "-- no-transaction\nALTER TYPE mood ADD VALUE 'calm';";
        let missing = "index \"tenants_id\" does not exist";
        assert!(awaits_skipped("42704", missing, &[index]));
        assert!(awaits_skipped(
            "42704",
            "index \"public.tenants_id\" does not exist",
            &[index]
        ));
        assert!(!awaits_skipped("42704", missing, &[]));
        assert!(!awaits_skipped("42704", missing, &[value]));
        // A name the skipped file does not hold, or holds only inside a longer word.
        assert!(!awaits_skipped(
            "42704",
            "role \"analytics\" does not exist",
            &[index]
        ));
        assert!(!awaits_skipped(
            "42704",
            "index \"tenants\" does not exist",
            &[index]
        ));
        assert!(!awaits_skipped(
            "42703",
            "column \"bogus\" of relation \"t\" does not exist",
            &[index]
        ));
        assert!(!awaits_skipped(
            "42883",
            "function uuid_generate_v4() does not exist",
            &[index]
        ));
        let function = "-- no-transaction\nCREATE EXTENSION IF NOT EXISTS \"uuid-ossp\";\nSELECT uuid_generate_v4();";
        assert!(awaits_skipped(
            "42883",
            "function uuid_generate_v4() does not exist",
            &[function]
        ));
        let enum_value = "invalid input value for enum mood: \"calm\"";
        assert!(awaits_skipped("22P02", enum_value, &[index, value]));
        assert!(!awaits_skipped("22P02", enum_value, &[index]));
        // Nothing named, another error, a translated message without quotes.
        assert!(!awaits_skipped(
            "42883",
            "operator does not exist: integer = text",
            &[index]
        ));
        assert!(!awaits_skipped("23505", missing, &[index]));
        assert!(!awaits_skipped(
            "42704",
            "l'index «tenants_id» n'existe pas",
            &[index]
        ));
    }

    #[test]
    fn split_ignores_semicolons_in_strings_and_quoted_identifiers() {
        assert_splits(&[
            ("SELECT 1; SELECT 2;", &["SELECT 1", "SELECT 2"]),
            ("SELECT 'a;''b'; SELECT 2", &["SELECT 'a;''b'", "SELECT 2"]),
            // standard_conforming_strings: the backslash is a plain character.
            (r"SELECT 'C:\'; SELECT 2", &[r"SELECT 'C:\'", "SELECT 2"]),
            (
                r"SELECT E'it\'s; ok'; SELECT 2",
                &[r"SELECT E'it\'s; ok'", "SELECT 2"],
            ),
            (r"SELECT e'a\\'; SELECT 2", &[r"SELECT e'a\\'", "SELECT 2"]),
            (
                "SELECT E'a'';b'; SELECT 2",
                &["SELECT E'a'';b'", "SELECT 2"],
            ),
            // `typE'` is an identifier followed by a plain string, not an E-string.
            (
                r"SELECT typE'\'; SELECT 2",
                &[r"SELECT typE'\'", "SELECT 2"],
            ),
            (r"SELECT 1e'\'; SELECT 2", &[r"SELECT 1e'\'", "SELECT 2"]),
            (
                r"SELECT U&'d\0061t;a'; SELECT 2",
                &[r"SELECT U&'d\0061t;a'", "SELECT 2"],
            ),
            (
                r#"SELECT "a;""b" FROM t; SELECT 2"#,
                &[r#"SELECT "a;""b" FROM t"#, "SELECT 2"],
            ),
        ]);
    }

    #[test]
    fn split_ignores_semicolons_in_dollar_quotes() {
        assert_splits(&[
            (
                "DO $$ BEGIN; RAISE NOTICE 'x'; END $$; SELECT 2",
                &["DO $$ BEGIN; RAISE NOTICE 'x'; END $$", "SELECT 2"],
            ),
            (
                "CREATE FUNCTION f() RETURNS text AS $fn$ SELECT $$;$$ $fn$ LANGUAGE sql; SELECT 2",
                &[
                    "CREATE FUNCTION f() RETURNS text AS $fn$ SELECT $$;$$ $fn$ LANGUAGE sql",
                    "SELECT 2",
                ],
            ),
            (
                "SELECT $a$ it's $b$; $a$; SELECT 2",
                &["SELECT $a$ it's $b$; $a$", "SELECT 2"],
            ),
            (
                "SELECT $_x1$;$_x1$; SELECT 2",
                &["SELECT $_x1$;$_x1$", "SELECT 2"],
            ),
            // Parameters are not quotes, even when a `$` follows.
            (
                "PREPARE p AS SELECT $1 FROM t;SELECT $2",
                &["PREPARE p AS SELECT $1 FROM t", "SELECT $2"],
            ),
            (
                "SELECT $1$a$;$a$; SELECT 2",
                &["SELECT $1$a$;$a$", "SELECT 2"],
            ),
            // A `$` inside an identifier does not open a quote.
            (
                "SELECT a$b$ FROM t; SELECT 2",
                &["SELECT a$b$ FROM t", "SELECT 2"],
            ),
        ]);
    }

    #[test]
    fn split_ignores_semicolons_in_comments_and_drops_outer_comments() {
        assert_splits(&[
            (
                "SELECT 1 -- it's; \"x\n; SELECT 2",
                &["SELECT 1", "SELECT 2"],
            ),
            (
                "SELECT /* a /* b; ' */ c; \" */ 1; SELECT 2",
                &["SELECT /* a /* b; ' */ c; \" */ 1", "SELECT 2"],
            ),
            (
                "-- head\n/* c */ SELECT 1 /* mid */ + 2 -- tail\n;",
                &["SELECT 1 /* mid */ + 2"],
            ),
            (
                ";; -- only comments\n ; /* x; */ ;\nSELECT 1;;",
                &["SELECT 1"],
            ),
            (
                "SELECT 1 --;\r\n;\r\nSELECT 2\r\n",
                &["SELECT 1", "SELECT 2"],
            ),
            ("\u{feff}SELECT 1", &["SELECT 1"]),
        ]);
    }

    #[test]
    fn split_keeps_routine_bodies_and_parentheses_whole() {
        assert_splits(&[
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; SELECT 3;",
                &[
                    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
                    "SELECT 3",
                ],
            ),
            (
                "CREATE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END; CALL p();",
                &[
                    "CREATE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END",
                    "CALL p()",
                ],
            ),
            (
                "create or replace function f(x int) returns int language sql begin atomic \
                 select case when x > 0 then 1 else 2 end; select 3; end; select 4",
                &[
                    "create or replace function f(x int) returns int language sql begin atomic \
                     select case when x > 0 then 1 else 2 end; select 3; end",
                    "select 4",
                ],
            ),
            (
                "CREATE FUNCTION f(a int DEFAULT (CASE WHEN true THEN 1 END)) RETURNS int \
                 LANGUAGE sql RETURN a; SELECT 2",
                &[
                    "CREATE FUNCTION f(a int DEFAULT (CASE WHEN true THEN 1 END)) RETURNS int \
                     LANGUAGE sql RETURN a",
                    "SELECT 2",
                ],
            ),
            (
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); SELECT 3",
                &[
                    "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))",
                    "SELECT 3",
                ],
            ),
            ("BEGIN; SELECT 1; END;", &["BEGIN", "SELECT 1", "END"]),
            ("SELECT 1) ; SELECT 2", &["SELECT 1)", "SELECT 2"]),
        ]);
    }

    #[test]
    fn split_continues_an_escape_string_on_a_later_line_with_its_escapes() {
        assert_splits(&[
            (
                "COMMENT ON TABLE t IS E'x'\n'a\\'' ; COMMIT; SELECT '';",
                &["COMMENT ON TABLE t IS E'x'\n'a\\''", "COMMIT", "SELECT ''"],
            ),
            (
                "SELECT E'a'\n\n  'b\\';'\r\n'c\\'';SELECT 2",
                &["SELECT E'a'\n\n  'b\\';'\r\n'c\\''", "SELECT 2"],
            ),
            // Old Mac line ends are newlines too.
            (
                "SELECT E'a'\r'\\';';SELECT 2",
                &["SELECT E'a'\r'\\';'", "SELECT 2"],
            ),
            // `--` comments may sit in the whitespace between the parts.
            (
                "SELECT E'x' -- it's\n-- more\n'\\';'; SELECT 2",
                &["SELECT E'x' -- it's\n-- more\n'\\';'", "SELECT 2"],
            ),
            // Without a newline, or across a block comment, the next string is a new, plain one.
            (
                "SELECT E'x' '\\'; SELECT 2",
                &["SELECT E'x' '\\'", "SELECT 2"],
            ),
            (
                "SELECT E'x' /* c */\n'\\'; SELECT 2",
                &["SELECT E'x' /* c */\n'\\'", "SELECT 2"],
            ),
            (
                "SELECT E'x'\n/* c */ '\\'; SELECT 2",
                &["SELECT E'x'\n/* c */ '\\'", "SELECT 2"],
            ),
            // A plain string's continuation stays plain.
            (
                "SELECT 'x'\n'\\'; SELECT 2",
                &["SELECT 'x'\n'\\'", "SELECT 2"],
            ),
            // A later E'' is a new string, not a continuation.
            (
                "SELECT E'x'\nE'\\''; SELECT 2",
                &["SELECT E'x'\nE'\\''", "SELECT 2"],
            ),
            (
                "-- no-transaction\nCOMMENT ON TABLE t IS E'it''s'\n'\\'s; fine';\n\
                 CREATE INDEX CONCURRENTLY i ON t (a);",
                &[
                    "COMMENT ON TABLE t IS E'it''s'\n'\\'s; fine'",
                    "CREATE INDEX CONCURRENTLY i ON t (a)",
                ],
            ),
        ]);
    }

    #[test]
    fn split_ends_a_line_comment_at_a_lone_carriage_return() {
        assert_splits(&[
            (
                "SELECT 1; -- c\rCOMMIT; SELECT 2",
                &["SELECT 1", "COMMIT", "SELECT 2"],
            ),
            ("SELECT E'x' -- c\r'\\';'", &["SELECT E'x' -- c\r'\\';'"]),
        ]);
    }

    #[test]
    fn split_opens_a_routine_body_only_at_begin_atomic() {
        assert_splits(&[
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1 AS begin; END;\nCOMMIT;",
                &[
                    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1 AS begin; END",
                    "COMMIT",
                ],
            ),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = begin BEGIN ATOMIC SELECT 1; END; SELECT 2;",
                &[
                    "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = begin BEGIN ATOMIC SELECT 1; END",
                    "SELECT 2",
                ],
            ),
            (
                "CREATE FUNCTION begin() RETURNS int LANGUAGE sql RETURN 1; SELECT 2",
                &[
                    "CREATE FUNCTION begin() RETURNS int LANGUAGE sql RETURN 1",
                    "SELECT 2",
                ],
            ),
            // Comments may separate BEGIN from ATOMIC; inside the body `begin atomic` is a
            // column and its alias, and CASE ... END nests.
            (
                "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN /* c */ -- d\n ATOMIC \
                 SELECT begin atomic FROM t; SELECT CASE WHEN true THEN 1 END; end; SELECT 2",
                &[
                    "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN /* c */ -- d\n ATOMIC \
                     SELECT begin atomic FROM t; SELECT CASE WHEN true THEN 1 END; end",
                    "SELECT 2",
                ],
            ),
            (
                "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC UPDATE t SET begin = 1; END; SELECT 2",
                &[
                    "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC UPDATE t SET begin = 1; END",
                    "SELECT 2",
                ],
            ),
            (
                "UPDATE t SET begin = 1; SELECT begin FROM t; SELECT 2",
                &["UPDATE t SET begin = 1", "SELECT begin FROM t", "SELECT 2"],
            ),
        ]);
    }

    #[test]
    fn the_servers_scanner_refuses_text_that_leaves_a_token_open() {
        for open in [
            "SELECT 'a",
            "SELECT \"a",
            "SELECT $x$ a",
            "SELECT 1 /* a",
            "SELECT E'a\\'",
        ] {
            assert!(!scans_whole(open), "{open}");
        }
        for closed in [
            "SELECT 'a'",
            "SELECT 1; -- a",
            "SELECT $x$ a $x$",
            "CREATE TABLE t (i int);\n",
            "CREATE TABLE t (i int DEFAULT 1 - 2) -- no quote",
            "SELECT E'a\\''",
        ] {
            assert!(scans_whole(closed), "{closed}");
        }
    }

    #[test]
    fn split_treats_the_rest_of_the_file_as_one_statement_after_an_unterminated_token() {
        assert_splits(&[
            (
                "SELECT 1; SELECT 'oops; SELECT 2;\n",
                &["SELECT 1", "SELECT 'oops; SELECT 2;\n"],
            ),
            (r"SELECT 1; SELECT E'\", &["SELECT 1", r"SELECT E'\"]),
            (
                "SELECT 1; DO $x$ BEGIN; END; $y$;",
                &["SELECT 1", "DO $x$ BEGIN; END; $y$;"],
            ),
            ("SELECT 1; SELECT \"a; b", &["SELECT 1", "SELECT \"a; b"]),
            (
                "SELECT 1; SELECT /* a /* */ 2;",
                &["SELECT 1", "SELECT /* a /* */ 2;"],
            ),
            ("SELECT 1; /* a", &["SELECT 1", "/* a"]),
        ]);
    }

    #[test]
    fn split_reports_offsets_and_lines_with_crlf() {
        let sql = "-- head\r\nCREATE TABLE t (\r\n  a int\r\n);\r\n\r\n/* c */ INSERT INTO t VALUES (1)\r\n";
        let insert = sql.find("INSERT").unwrap_or_default();
        assert_eq!(
            split(sql),
            [
                Statement {
                    text: "CREATE TABLE t (\r\n  a int\r\n)",
                    offset: 9,
                    line: 2
                },
                Statement {
                    text: "INSERT INTO t VALUES (1)",
                    offset: insert,
                    line: 6
                },
            ]
        );
    }

    #[test]
    fn is_empty_is_true_only_without_statements() {
        let cases = [
            ("", true),
            (" \r\n\t", true),
            ("-- x\n/* y; */;\n;", true),
            ("\u{feff}\n", true),
            ("SELECT 1", false),
            ("-- x\nSELECT 1; -- y", false),
            ("/* unterminated", false),
            ("'", false),
        ];
        for (sql, expected) in cases {
            assert_eq!(is_empty(sql), expected, "input: {sql:?}");
        }
    }

    #[test]
    fn only_what_runs_alike_inside_a_transaction_block_shares_a_message_with_the_check() {
        let cases = [
            ("ALTER TABLE t ADD COLUMN c int", true),
            ("alter table t alter column c set not null", true),
            ("CREATE INDEX i ON t (c)", true),
            ("DROP TABLE t", true),
            ("TRUNCATE t", true),
            ("UPDATE t SET c = 1 WHERE id < 1000", true),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d",
                true,
            ),
            ("INSERT INTO t VALUES (1)", true),
            ("REFRESH MATERIALIZED VIEW v", true),
            ("DO $$ BEGIN UPDATE t SET c = 1; END $$", true),
            ("ALTER TYPE mood ADD VALUE 'b'", true),
            // PostgreSQL refuses these inside a transaction block.
            ("CREATE INDEX CONCURRENTLY i ON t (c)", false),
            ("DROP INDEX CONCURRENTLY i", false),
            ("REFRESH MATERIALIZED VIEW CONCURRENTLY v", false),
            ("ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY", false),
            ("VACUUM t", false),
            ("CREATE DATABASE d", false),
            ("DROP DATABASE d", false),
            ("ALTER DATABASE d SET TABLESPACE s", false),
            ("CREATE TABLESPACE s LOCATION '/x'", false),
            ("ALTER SYSTEM SET work_mem = '8MB'", false),
            ("CREATE SUBSCRIPTION s CONNECTION '' PUBLICATION p", false),
            ("DROP SUBSCRIPTION s", false),
            ("DISCARD ALL", false),
            // Refused inside one on a partitioned table, or may commit.
            ("REINDEX TABLE p", false),
            ("CLUSTER t", false),
            ("CALL fill()", false),
            // A DO that commits is refused inside the block before any of it stays, and
            // sent again alone (apply::outside); a word that only looks like it is no reason
            // to go unchecked.
            ("DO $$ BEGIN INSERT INTO t VALUES (1); COMMIT; END $$", true),
            ("do $$ begin alter table commits add c int; end $$", true),
            // Transaction control.
            ("BEGIN", false),
            ("COMMIT", false),
            // Settings, which last in the session they land in.
            ("SET lock_timeout = '1s'", true),
            ("set search_path = app, public", true),
            ("RESET ALL", true),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", true),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", false),
            ("set local transaction_isolation = 'serializable'", false),
            ("SET transaction_read_only = on", false),
            ("ANALYZE", false),
            ("ANALYZE t", false),
            ("DO $$ BEGIN CALL backfill(); END $$", true),
            ("DEALLOCATE ALL", false),
            ("DISCARD PLANS", false),
            ("SAVEPOINT a", false),
            // Refused outside a transaction block.
            ("LOCK TABLE t", false),
            ("", false),
            ("-- nothing", false),
        ];
        for (statement, expected) in cases {
            assert_eq!(
                shares_message(statement, false, 160_000),
                expected,
                "{statement:?}"
            );
        }
        assert!(shares_message("LOCK TABLE t IN SHARE MODE", true, 160_000));
        // Inside the file's block a SET may come before its SET TRANSACTION.
        assert!(!shares_message(
            "SET LOCAL lock_timeout = '5s'",
            true,
            160_000
        ));
        // Before PostgreSQL 12 a new enum value cannot be added inside a transaction block.
        assert!(!shares_message(
            "ALTER TYPE mood ADD VALUE 'b'",
            false,
            110_000
        ));
        assert!(shares_message(
            "ALTER TYPE mood RENAME TO m",
            false,
            110_000
        ));
    }

    #[test]
    fn opens_block_follows_begin_and_its_ends_not_savepoints() {
        let cases = [
            ("BEGIN", Some(true)),
            ("start transaction isolation level serializable", Some(true)),
            ("COMMIT", Some(false)),
            ("END", Some(false)),
            ("ROLLBACK", Some(false)),
            ("ABORT", Some(false)),
            ("PREPARE TRANSACTION 'x'", Some(false)),
            ("ROLLBACK TO SAVEPOINT a", None),
            ("SAVEPOINT a", None),
            ("COMMIT PREPARED 'x'", None),
            ("SET TRANSACTION READ ONLY", None),
            ("SELECT 1", None),
        ];
        for (statement, expected) in cases {
            assert_eq!(opens_block(statement), expected, "{statement:?}");
        }
    }

    #[test]
    fn a_headline_is_the_statement_on_one_line_cut_at_its_length() {
        assert_eq!(
            headline("ALTER TABLE script\n    ALTER COLUMN schema TYPE json", 100),
            "ALTER TABLE script ALTER COLUMN schema TYPE json"
        );
        assert_eq!(headline("SELECT  1", 100), "SELECT 1");
        assert_eq!(headline("SELECT abcdef", 9), "SELECT ab …");
        assert_eq!(headline("SELECT 'ééé'", 9), "SELECT 'é …");
        assert_eq!(headline("SELECT a\n  FROM b", 7), "SELECT …");
    }

    #[test]
    fn is_no_transaction_accepts_only_the_exact_directive_on_the_first_line() {
        let cases = [
            (
                "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);",
                true,
            ),
            ("-- no-transaction", true),
            ("--no-transaction\n", true),
            ("--  \tno-transaction \t\r\nSELECT 1", true),
            ("\u{feff}-- no-transaction\n", true),
            ("-- No-Transaction\n", false),
            ("-- no-transactions\n", false),
            ("-- no-transaction please\n", false),
            ("  -- no-transaction\n", false),
            ("\n-- no-transaction\n", false),
            ("SELECT 1; -- no-transaction", false),
            ("", false),
        ];
        for (sql, expected) in cases {
            assert_eq!(is_no_transaction(sql), expected, "input: {sql:?}");
        }
    }

    #[test]
    fn the_parser_is_asked_whenever_a_transaction_keyword_appears_in_any_case() {
        assert!(!may_end_transaction("CREATE TABLE t (id int);"));
        assert!(!may_end_transaction(
            "SELECT 'committed' AS state; SAVEPOINT s;"
        ));
        for sql in [
            "CoMmIt",
            "create table t (i int); END",
            "ROLLBACK",
            "abort;",
            "BEGIN; SELECT 1",
            "START TRANSACTION",
            "PREPARE TRANSACTION 'x'",
            // A keyword the parser cannot place: it cannot say, so the guard stays.
            "COMMIT /* unterminated",
        ] {
            assert!(may_end_transaction(sql), "{sql}");
        }
        // Text the parser rejects but with no such keyword cannot end a transaction on the
        // server either.
        assert!(!may_end_transaction("SELECT 1 /* unterminated"));
    }

    #[test]
    fn only_statements_that_start_with_a_transaction_keyword_are_parsed() {
        // The keywords inside strings, names and comments, and a statement that starts
        // with one but is no transaction control.
        for sql in [
            "INSERT INTO jobs (state) VALUES ('started'), ('ended'); -- commit later",
            "CREATE TABLE \"commit\" (\"end\" int);\nPREPARE p AS SELECT 1;",
            "/* BEGIN */ SELECT 1; SAVEPOINT s; RELEASE s; ROLLBACK TO s",
        ] {
            assert!(!may_end_transaction(sql), "{sql}");
        }
        for sql in [
            "SELECT 1; /* a comment first */ commit;",
            "INSERT INTO jobs VALUES ('started');\n-- done\n  End;",
            // The scanner ends a statement inside a routine body too: its END reads as a
            // COMMIT, which only adds a guard.
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;",
        ] {
            assert!(may_end_transaction(sql), "{sql}");
        }
        // A seed file's INSERT of many rows holding a keyword is not parsed (its tree would
        // take some forty times its text), and still answers.
        let rows = vec!["('started')"; 20_000].join(", ");
        assert!(!may_end_transaction(&format!(
            "INSERT INTO jobs (state) VALUES {rows};"
        )));
        assert!(may_end_transaction(&format!(
            "INSERT INTO jobs (state) VALUES {rows}; COMMIT;"
        )));
    }

    #[test]
    fn a_statement_is_read_from_its_first_code_token_to_its_top_level_semicolon() {
        let texts =
            |sql: &str| -> Vec<String> { code(sql).map(|t| t.text(sql).to_string()).collect() };
        assert_eq!(
            texts(" ; -- none\n; SELECT (1; 2) ; SELECT 3"),
            ["SELECT", "(", "1", ";", "2", ")"]
        );
        assert_eq!(
            texts("CREATE FUNCTION f() BEGIN ATOMIC SELECT 1; END; SELECT 2").last(),
            Some(&"END".to_string())
        );
        assert!(texts(" ;; -- only comments").is_empty());
        // A statement of many rows: the command tag reads its first words only.
        let rows = vec!["(1, 'a')"; 10_000].join(", ");
        assert_eq!(
            command_tag(&format!("INSERT INTO t VALUES {rows}")),
            "INSERT"
        );
        assert_eq!(
            command_tag("WITH a AS (SELECT 1), b AS (SELECT 2) DELETE FROM t"),
            "DELETE"
        );
        assert_eq!(command_tag("CREATE TABLE t (a) AS SELECT 1"), "SELECT");
    }

    #[test]
    fn a_keyword_is_found_across_the_slices_the_text_is_lowered_in() {
        let words = ["commit", "end"];
        for at in [0, 65_530, 65_533, 65_536, 131_070] {
            let mut text = "x".repeat(at);
            text.push_str("CoMmIt");
            text.push_str(&"y".repeat(10));
            assert!(contains_any_ignore_case(&text, &words), "at {at}");
        }
        assert!(!contains_any_ignore_case(&"x".repeat(200_000), &words));
        assert!(!contains_any_ignore_case("", &words));
    }

    #[test]
    fn transaction_control_finds_the_first_statement_starting_with_a_control_keyword() {
        let cases = [
            ("BEGIN;\nSELECT 1;", Some((1, "BEGIN"))),
            ("select 1;\n  commit;", Some((2, "COMMIT"))),
            ("-- c\nCOMMIT;", Some((2, "COMMIT"))),
            ("/* a\nb */\n\nrollback", Some((4, "ROLLBACK"))),
            (
                "START TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
                Some((1, "START")),
            ),
            ("SELECT 1;\nEnd;", Some((2, "END"))),
            ("ABORT;", Some((1, "ABORT"))),
            ("CREATE TABLE t (a int);\r\n\r\nBegin;", Some((3, "BEGIN"))),
            ("SELECT commit FROM t; UPDATE t SET begin = 1;", None),
            ("DO $$ BEGIN\n COMMIT;\nEND $$;", None),
            ("SELECT 'x;\nBEGIN';", None),
            ("/* BEGIN; */ SELECT 1; -- COMMIT;", None),
            ("SAVEPOINT a; RELEASE a;", None),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n SELECT 1;\nEND;\nSELECT 2;",
                None,
            ),
            (
                "CREATE PROCEDURE p()\nBEGIN ATOMIC\n INSERT INTO t VALUES (1);\nEND;\nCOMMIT;",
                Some((5, "COMMIT")),
            ),
        ];
        for (sql, expected) in cases {
            let expected = expected.map(|(line, keyword)| (line, keyword.to_string()));
            assert_eq!(transaction_control(sql), expected, "input: {sql:?}");
        }
    }

    #[test]
    fn transaction_control_refuses_two_phase_commit_and_chaining() {
        let cases = [
            ("PREPARE TRANSACTION 'x';", (1, "PREPARE TRANSACTION")),
            ("prepare transaction $$x$$", (1, "PREPARE TRANSACTION")),
            ("SELECT 1;\ncommit prepared 'x';", (2, "COMMIT PREPARED")),
            ("ROLLBACK PREPARED 'x';", (1, "ROLLBACK PREPARED")),
            ("COMMIT AND CHAIN;", (1, "COMMIT")),
            ("ROLLBACK AND CHAIN;", (1, "ROLLBACK")),
            ("rollback transaction and no chain", (1, "ROLLBACK")),
            ("ROLLBACK WORK;", (1, "ROLLBACK")),
            ("SAVEPOINT a;\nROLLBACK TO a;\nABORT;", (3, "ABORT")),
            (
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
                (1, "SET TRANSACTION"),
            ),
            ("set transaction snapshot '1'", (1, "SET TRANSACTION")),
            (
                "SELECT 1;\nSET LOCAL transaction_isolation = serializable",
                (2, "SET transaction_isolation"),
            ),
            (
                "SET SESSION \"transaction_read_only\" TO off",
                (1, "SET transaction_read_only"),
            ),
            (
                "set transaction_deferrable = on",
                (1, "SET transaction_deferrable"),
            ),
        ];
        for (sql, (line, keywords)) in cases {
            let expected = Some((line, keywords.to_string()));
            assert_eq!(transaction_control(sql), expected, "input: {sql:?}");
        }
    }

    #[test]
    fn transaction_control_accepts_savepoints_and_prepared_statements() {
        let cases = [
            "SAVEPOINT a; RELEASE SAVEPOINT a; RELEASE a;",
            "ROLLBACK TO a; ROLLBACK TO SAVEPOINT a; ROLLBACK WORK TO SAVEPOINT a; rollback transaction to a;",
            "PREPARE p AS SELECT 1; EXECUTE p; DEALLOCATE p;",
            "PREPARE transaction AS SELECT 1; PREPARE transaction (int) AS SELECT $1;",
            "SELECT prepared FROM t; SELECT 'PREPARE TRANSACTION ''x''';",
            // Defaults for later transactions, which the reset after each migration undoes.
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
            "SET default_transaction_isolation = serializable; SET LOCAL lock_timeout = '1s';",
            "SET search_path = transaction, public; SET \"transaction\".x = 1;",
        ];
        for sql in cases {
            assert_eq!(transaction_control(sql), None, "input: {sql:?}");
        }
    }

    #[test]
    fn transaction_control_sees_past_continued_strings_and_begin_identifiers() {
        let cases = [
            (
                "COMMENT ON TABLE t IS E'x'\n'a\\'' ; COMMIT; SELECT '';",
                Some((2, "COMMIT")),
            ),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1 AS begin; END;\nCOMMIT;",
                Some((2, "COMMIT")),
            ),
            ("SELECT 1; -- c\rCOMMIT;", Some((1, "COMMIT"))),
            // Without a newline the second string is a plain one, so this COMMIT is code.
            ("SELECT E'x' '\\'; COMMIT; '", Some((1, "COMMIT"))),
        ];
        for (sql, expected) in cases {
            let expected = expected.map(|(line, keyword)| (line, keyword.to_string()));
            assert_eq!(transaction_control(sql), expected, "input: {sql:?}");
        }
    }

    #[test]
    fn copy_stdio_finds_copy_from_stdin_or_to_stdout() {
        let cases = [
            ("COPY t FROM STDIN;", (1, "COPY ... FROM STDIN")),
            (
                "SELECT 1;\ncopy t (a, b) from stdin with (format csv);",
                (2, "COPY ... FROM STDIN"),
            ),
            (
                "COPY (SELECT a FROM t) TO STDOUT",
                (1, "COPY ... TO STDOUT"),
            ),
            (
                "COPY (SELECT 1) TO stdout WITH (FORMAT csv, HEADER);",
                (1, "COPY ... TO STDOUT"),
            ),
            ("COPY s.stdin FROM STDIN;", (1, "COPY ... FROM STDIN")),
            // The server takes either word for the client's side, whichever the direction.
            ("COPY t TO STDIN;", (1, "COPY ... TO STDIN")),
            (
                "CREATE TABLE t (a int);\n\nCOPY t\n  FROM STDIN;",
                (3, "COPY ... FROM STDIN"),
            ),
        ];
        for (sql, (line, description)) in cases {
            let expected = Some((line, description.to_string()));
            assert_eq!(copy_stdio(sql), expected, "input: {sql:?}");
        }
    }

    #[test]
    fn copy_stdio_ignores_files_programs_and_quoted_text() {
        let cases = [
            "COPY t FROM '/tmp/t.csv';",
            "COPY t TO PROGRAM 'gzip > /tmp/t.gz';",
            "COPY t FROM PROGRAM 'cat';",
            "COPY stdin FROM '/tmp/x';",
            "COPY (SELECT * FROM stdin) TO '/tmp/x';",
            "SELECT 'COPY t FROM STDIN';",
            "-- COPY t FROM STDIN\nSELECT 1;",
            "DO $$ BEGIN COPY t FROM STDIN; END $$;",
            "SELECT 1 FROM stdin;",
        ];
        for sql in cases {
            assert_eq!(copy_stdio(sql), None, "input: {sql:?}");
        }
    }

    #[test]
    fn calls_setval_sees_the_call_and_not_its_name_in_text() {
        assert!(calls_setval("SELECT setval('s', 5);"));
        assert!(calls_setval(
            "select pg_catalog.SETVAL('s', max(id)) from t;"
        ));
        assert!(!calls_setval("SELECT 'setval';"));
        assert!(!calls_setval("-- setval\nSELECT 1;"));
        assert!(!calls_setval("SELECT nextval('s');"));
    }

    #[test]
    fn releases_lock_finds_what_lets_go_of_the_migration_lock() {
        let cases = [
            ("CREATE TABLE t ();\nDISCARD ALL;", Some((2, "DISCARD ALL"))),
            ("discard all", Some((1, "DISCARD ALL"))),
            (
                "SELECT 1;\n\nselect PG_ADVISORY_UNLOCK_ALL();",
                Some((3, "pg_advisory_unlock_all()")),
            ),
            (
                "SELECT pg_catalog.pg_advisory_unlock_all();",
                Some((1, "pg_advisory_unlock_all()")),
            ),
            ("DISCARD PLANS; DISCARD TEMP;", None),
            ("SELECT 'pg_advisory_unlock_all()';", None),
            ("-- DISCARD ALL\nSELECT 1;", None),
            ("SELECT pg_advisory_unlock(1, 2);", None),
            ("CREATE TABLE discard (all_of int);", None),
            (
                "DO $$ BEGIN PERFORM pg_advisory_unlock_all(); END $$;",
                None,
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(releases_lock(sql), expected, "input: {sql:?}");
        }
    }

    #[test]
    fn server_wide_finds_what_the_server_shares_between_databases() {
        let cases = [
            (
                "CREATE TABLE t ();\nCREATE ROLE reader NOLOGIN;",
                Some((2, "CREATE ROLE")),
            ),
            (
                "create user app with password 'x';",
                Some((1, "CREATE ROLE")),
            ),
            (
                "ALTER ROLE app SET search_path = app;",
                Some((1, "ALTER ROLE")),
            ),
            (
                "GRANT reader TO app;",
                Some((1, "GRANT or REVOKE of a role's membership")),
            ),
            ("DROP DATABASE IF EXISTS old;", Some((1, "DROP DATABASE"))),
            (
                "ALTER DATABASE videos SET timezone = 'UTC';",
                Some((1, "ALTER DATABASE")),
            ),
            (
                "COMMENT ON ROLE app IS 'x';",
                Some((1, "a COMMENT on a role, database or tablespace")),
            ),
            (
                "-- no-transaction\nALTER SYSTEM SET work_mem = '8MB';",
                Some((2, "ALTER SYSTEM")),
            ),
            (
                "REVOKE CONNECT ON DATABASE videos FROM PUBLIC;",
                Some((1, "a GRANT or REVOKE on a database, tablespace or setting")),
            ),
            (
                "GRANT CREATE ON TABLESPACE pg_default TO app;",
                Some((1, "a GRANT or REVOKE on a database, tablespace or setting")),
            ),
            (
                "GRANT SET ON PARAMETER work_mem TO app;",
                Some((1, "a GRANT or REVOKE on a database, tablespace or setting")),
            ),
            ("DROP OWNED BY app;", Some((1, "DROP OWNED"))),
            (
                "REASSIGN OWNED BY app TO postgres;",
                Some((1, "REASSIGN OWNED")),
            ),
            (
                "CREATE SUBSCRIPTION s CONNECTION 'host=h' PUBLICATION p;",
                Some((1, "a SUBSCRIPTION")),
            ),
            ("GRANT SELECT ON t TO reader;", None),
            ("GRANT USAGE ON SCHEMA app TO reader;", None),
            ("REVOKE ALL ON ALL TABLES IN SCHEMA app FROM PUBLIC;", None),
            ("DROP TABLE owned;", None),
            ("CREATE USER MAPPING FOR app SERVER s;", None),
            ("CREATE TABLE user_roles (role text, database text);", None),
            ("ALTER TABLE t OWNER TO app;", None),
            ("DO $$ BEGIN CREATE ROLE r; END $$;", None),
            ("SELECT 'CREATE ROLE x';", None),
        ];
        for (sql, expected) in cases {
            assert_eq!(server_wide(sql), expected, "input: {sql:?}");
        }
    }

    #[test]
    fn transaction_use_finds_two_phase_commit_behind_other_control() {
        let cases = [
            (
                "BEGIN;\nCREATE TABLE t ();\nPREPARE TRANSACTION 'x';",
                Some((3, "PREPARE TRANSACTION")),
            ),
            (
                "BEGIN; COMMIT; rollback prepared 'x';",
                Some((1, "ROLLBACK PREPARED")),
            ),
            ("COMMIT PREPARED 'x'; BEGIN;", Some((1, "COMMIT PREPARED"))),
            ("BEGIN; PREPARE transaction AS SELECT 1; COMMIT;", None),
            ("BEGIN; SELECT 'PREPARE TRANSACTION ''x'''; COMMIT;", None),
        ];
        for (sql, expected) in cases {
            let found = transaction_use(sql);
            let expected = expected.map(|(line, what)| (line, what.to_string()));
            assert_eq!(found.two_phase, expected, "input: {sql:?}");
            assert!(found.control.is_some(), "input: {sql:?}");
        }
    }

    #[test]
    fn transaction_use_finds_what_a_transaction_block_refuses() {
        let cases = [
            (
                "CREATE INDEX CONCURRENTLY i ON t (x);",
                Some((1, "CREATE INDEX CONCURRENTLY")),
            ),
            (
                "SELECT 1;\ncreate unique index concurrently if not exists i on t (x);",
                Some((2, "CREATE INDEX CONCURRENTLY")),
            ),
            (
                "DROP INDEX CONCURRENTLY IF EXISTS i;",
                Some((1, "DROP INDEX CONCURRENTLY")),
            ),
            ("VACUUM (ANALYZE) t;", Some((1, "VACUUM"))),
            (
                "ALTER SYSTEM SET work_mem = '8MB';",
                Some((1, "ALTER SYSTEM")),
            ),
            (
                "REINDEX (VERBOSE) TABLE CONCURRENTLY t;",
                Some((1, "REINDEX CONCURRENTLY, DATABASE or SYSTEM")),
            ),
            (
                "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY;",
                Some((1, "DETACH PARTITION CONCURRENTLY")),
            ),
            ("CREATE INDEX i ON t (concurrently);", None),
            ("REINDEX TABLE t;", None),
            ("REFRESH MATERIALIZED VIEW CONCURRENTLY v;", None),
            ("ALTER TABLE p DETACH PARTITION p1;", None),
            ("DO $$ BEGIN EXECUTE 'VACUUM t'; END $$;", None),
            ("-- VACUUM\nSELECT 'CREATE DATABASE x';", None),
            ("CREATE TABLE vacuum_log (id int);", None),
        ];
        for (sql, expected) in cases {
            let expected = expected.map(|(line, what)| (line, what.to_string()));
            assert_eq!(
                transaction_use(sql).outside_only,
                expected,
                "input: {sql:?}"
            );
        }
    }

    #[test]
    fn meta_command_finds_a_backslash_in_code_wherever_it_stands() {
        let cases = [
            ("\\set x 1\nSELECT :x;", Some((1, "\\set"))),
            ("SELECT 1;\n  \\i other.sql\n", Some((2, "\\i"))),
            ("SELECT 1;\r\n\\connect db\r\n", Some((2, "\\connect"))),
            ("\t\\dt+\n", Some((1, "\\dt+"))),
            ("\u{feff}\\set x 1", Some((1, "\\set"))),
            ("SELECT 'a\n\\set x';", None),
            ("SELECT E'a\\'\n\\set x';", None),
            ("DO $$\n\\set x\n$$;", None),
            ("/*\n\\set x\n*/ SELECT 1;", None),
            ("-- \\set x\nSELECT 1;", None),
            ("SELECT \"a\n\\b\";", None),
            ("SELECT 1 AS x \\gset\n", Some((1, "\\gset"))),
            (
                "SELECT 1;\nSELECT format('SELECT %s', 1) \\gexec",
                Some((2, "\\gexec")),
            ),
            ("DROP TABLE t; \\i other.sql", Some((1, "\\i"))),
            ("SELECT 1 \\\\ SELECT 2;", Some((1, "\\\\"))),
            ("SELECT '\\gset', E'\\\\', $$\\g$$;", None),
            ("SELECT 1;", None),
        ];
        for (sql, expected) in cases {
            let expected = expected.map(|(line, word)| (line, word.to_string()));
            assert_eq!(meta_command(sql), expected, "input: {sql:?}");
        }
    }

    #[test]
    fn line_col_counts_characters_not_bytes_and_clamps() {
        let cases = [
            ("SELECT 1", 1, (1, 1)),
            ("SELECT 1", 8, (1, 8)),
            ("a\nbc", 3, (2, 1)),
            ("a\nbc", 4, (2, 2)),
            ("a\r\nb", 4, (2, 1)),
            ("SELECT 'é', x", 13, (1, 13)),
            ("é\nxé y", 6, (2, 4)),
            ("-- 😀\nSELECT y", 13, (2, 8)),
            ("ab", 0, (1, 1)),
            ("ab", 3, (1, 3)),
            ("ab", 99, (1, 3)),
            ("", 5, (1, 1)),
        ];
        for (sql, position, expected) in cases {
            assert_eq!(
                line_col(sql, position),
                expected,
                "input: {sql:?} at {position}"
            );
        }
    }

    #[test]
    fn a_statement_is_placed_as_the_server_counts_lines_and_characters() {
        let sql = "SELECT 1;\n  -- é\n  é_x := 1; SELECT 'ü'; SELECT 3";
        for statement in split(sql) {
            let position = sql[..statement.offset].chars().count() + 1;
            assert_eq!(
                statement.place(sql),
                line_col(sql, position),
                "{statement:?}"
            );
        }
    }

    #[test]
    fn concurrently_is_recognised_only_as_a_keyword_of_the_statement() {
        let concurrent = [
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c)",
            "create unique index concurrently i on t (c)",
            "DROP INDEX CONCURRENTLY IF EXISTS i",
            "REINDEX INDEX CONCURRENTLY i",
            "REFRESH MATERIALIZED VIEW CONCURRENTLY v",
            "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY",
        ];
        for statement in concurrent {
            assert!(waits_without_blocking(statement), "{statement}");
        }
        let plain = [
            "CREATE INDEX i ON t (c)",
            "ALTER TABLE t ADD COLUMN c int",
            "CREATE INDEX \"concurrently\" ON t (c)",
            "-- CONCURRENTLY\nCREATE INDEX i ON t (c)",
            "COMMENT ON TABLE t IS 'built CONCURRENTLY'",
            "SELECT 1",
        ];
        for statement in plain {
            assert!(!waits_without_blocking(statement), "{statement}");
        }
    }

    #[test]
    fn created_indexes_lists_named_indexes_as_the_catalog_spells_them() {
        let long = "a".repeat(70);
        let long_sql = format!("CREATE INDEX {long} ON t (a)");
        let cases: &[(&str, &[&str])] = &[
            ("CREATE INDEX idx_a ON t (a);", &["idx_a"]),
            (
                "create unique index concurrently if not exists Idx_B on t (b);",
                &["idx_b"],
            ),
            (
                "CREATE INDEX CONCURRENTLY \"My Idx\" ON t (c);",
                &["My Idx"],
            ),
            ("CREATE INDEX \"a\"\"b\" ON t (c);", &["a\"b"]),
            ("CREATE INDEX IF NOT EXISTS f ON ONLY t (a);", &["f"]),
            ("CREATE INDEX Été_IDX ON t (a)", &["Été_idx"]),
            (
                "CREATE INDEX ON t (a); CREATE INDEX CONCURRENTLY ON t (b);",
                &[],
            ),
            (
                "CREATE INDEX a ON t (a);\n-- CREATE INDEX b ON t (b);\n\
                 CREATE TABLE x (i int);\nCREATE UNIQUE INDEX c ON x (i);",
                &["a", "c"],
            ),
            (
                "SELECT 'CREATE INDEX d ON t (a)'; DO $$ BEGIN CREATE INDEX e ON t (a); END $$;",
                &[],
            ),
            (&long_sql, &[&long[..63]]),
        ];
        for (sql, expected) in cases {
            let names: Vec<String> = created_indexes(sql).into_iter().map(|(n, _)| n).collect();
            assert_eq!(names, *expected, "input: {sql:?}");
        }
        // The table, as written, says the schema the index goes into.
        let tables: Vec<Option<String>> = created_indexes(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON s.big2 (v);\n\
             CREATE INDEX b ON ONLY \"My\".\"T\" (v);\nCREATE INDEX c ON t(v);",
        )
        .into_iter()
        .map(|(_, t)| t)
        .collect();
        assert_eq!(
            tables,
            [
                Some("s.big2".to_string()),
                Some("\"My\".\"T\"".to_string()),
                Some("t".to_string())
            ]
        );
    }

    #[test]
    fn every_prefix_of_tricky_input_is_handled_without_panicking() {
        let sql = "\u{feff}E'\\'' $a$ $$ $a$ $1 /* /* */ */ -- c\r\n\"q\"\"\" U&'x' U&\"y\" 'é😀'\n \
                   \\set x\nCREATE INDEX \"i\" ON t; CREATE FUNCTION f() BEGIN ATOMIC CASE END; END;";
        let ends = sql.char_indices().map(|(at, _)| at).chain([sql.len()]);
        for at in ends {
            let prefix = &sql[..at];
            for statement in split(prefix) {
                let end = statement.offset + statement.text.len();
                assert_eq!(&prefix[statement.offset..end], statement.text);
            }
            is_empty(prefix);
            is_no_transaction(prefix);
            transaction_control(prefix);
            meta_command(prefix);
            copy_stdio(prefix);
            created_indexes(prefix);
            line_col(prefix, at);
        }
    }

    /// Each statement's tag as psql printed it from a PostgreSQL 15 server.
    #[test]
    fn command_tag_names_a_statement_as_the_server_does() {
        let cases = [
            ("CREATE TEMP TABLE t AS SELECT 1 a", "SELECT"),
            ("CREATE MATERIALIZED VIEW mv AS SELECT 1 a", "SELECT"),
            ("WITH x AS (SELECT 1) INSERT INTO t SELECT 2", "INSERT"),
            ("SELECT 1 INTO TEMP t2", "SELECT"),
            ("VALUES (1), (2)", "SELECT"),
            (
                "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
                "CREATE FUNCTION",
            ),
            (
                "CREATE TABLE tt (a int GENERATED ALWAYS AS (1) STORED)",
                "CREATE TABLE",
            ),
            ("create table \"As\" (a int)", "CREATE TABLE"),
            (
                "CREATE CONSTRAINT TRIGGER x AFTER INSERT ON tt FOR EACH ROW EXECUTE FUNCTION f()",
                "CREATE TRIGGER",
            ),
            ("REFRESH MATERIALIZED VIEW mv", "REFRESH MATERIALIZED VIEW"),
            ("TRUNCATE t", "TRUNCATE TABLE"),
            (
                "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC",
                "ALTER DEFAULT PRIVILEGES",
            ),
            (
                "CREATE TEXT SEARCH CONFIGURATION ts (COPY = english)",
                "CREATE TEXT SEARCH CONFIGURATION",
            ),
            ("CREATE TYPE e AS ENUM ('a')", "CREATE TYPE"),
            ("ALTER TYPE e ADD VALUE 'b'", "ALTER TYPE"),
            ("DO $$ begin end $$", "DO"),
            ("COMMENT ON TABLE t IS 'x'", "COMMENT"),
            ("DROP INDEX IF EXISTS nope", "DROP INDEX"),
            ("LOCK TABLE t", "LOCK TABLE"),
            (
                "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (1) TO (2)",
                "CREATE TABLE",
            ),
            ("CREATE OR REPLACE VIEW v AS SELECT 1 a", "CREATE VIEW"),
            (
                "CREATE RULE r AS ON INSERT TO v DO INSTEAD NOTHING",
                "CREATE RULE",
            ),
            ("GRANT SELECT ON t TO PUBLIC", "GRANT"),
            ("CREATE UNLOGGED TABLE u (a int)", "CREATE TABLE"),
            (
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON u (a)",
                "CREATE INDEX",
            ),
            ("update tt set a = 1", "UPDATE"),
            (
                "MERGE INTO tt USING s ON tt.a = s.a WHEN NOT MATCHED THEN INSERT VALUES (s.a)",
                "MERGE",
            ),
            (
                "CREATE FOREIGN DATA WRAPPER w",
                "CREATE FOREIGN DATA WRAPPER",
            ),
            ("SET LOCAL lock_timeout = '1s'", "SET"),
            ("ALTER TABLE IF EXISTS tt RENAME TO tt2", "ALTER TABLE"),
            ("-- why\nINSERT INTO t VALUES (1)", "INSERT"),
            ("(SELECT 1) UNION SELECT 2", "SELECT"),
        ];
        for (statement, tag) in cases {
            assert_eq!(command_tag(statement), tag, "{statement}");
        }
    }
}
