//! The statement splitter against PostgreSQL's own parser: tests/data/lexer-corpus.json holds
//! random files built from fragments that stress the lexer, with the statements libpg_query
//! found in them (see scripts/lexer-corpus.py, which writes it and says what it leaves out).

use db_migrate::sql;
use serde_json::Value;

const CORPUS: &str = include_str!("data/lexer-corpus.json");

/// What the server made of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    at: usize,
    len: usize,
    control: bool,
    copy: bool,
    index: Option<String>,
}

struct Case {
    sql: String,
    /// Split by the parser, so the statements' kinds are known too; else only by the scanner.
    parsed: bool,
    statements: Vec<Expected>,
}

fn cases() -> Vec<Case> {
    let corpus: Value = serde_json::from_str(CORPUS).expect("the corpus is JSON");
    let cases = corpus["cases"].as_array().expect("the corpus has cases");
    cases.iter().map(case).collect()
}

fn case(value: &Value) -> Case {
    let statements = value["statements"]
        .as_array()
        .expect("a case has statements");
    Case {
        sql: value["sql"].as_str().expect("a case has SQL").to_string(),
        parsed: value["mode"] == "parser",
        statements: statements.iter().map(expected).collect(),
    }
}

fn expected(value: &Value) -> Expected {
    let number = |key: &str| value[key].as_u64().expect("a statement has at and len") as usize;
    Expected {
        at: number("at"),
        len: number("len"),
        control: value["control"] == true,
        copy: value["copy"] == true,
        index: value["index"].as_str().map(String::from),
    }
}

/// sql.rs counts lines by `\n`; so does this, as the question is only which statement is named.
fn line(sql: &str, at: usize) -> usize {
    sql[..at].matches('\n').count() + 1
}

fn first_line(case: &Case, flag: impl Fn(&Expected) -> bool) -> Option<usize> {
    let first = case.statements.iter().find(|s| flag(s))?;
    Some(line(&case.sql, first.at))
}

/// Every way sql.rs disagrees with the server on one case, as readable lines.
fn disagreements(case: &Case) -> Vec<String> {
    let sql = case.sql.as_str();
    let ours: Vec<(usize, usize)> = sql::split(sql)
        .iter()
        .map(|s| (s.offset, s.text.len()))
        .collect();
    let theirs: Vec<(usize, usize)> = case.statements.iter().map(|s| (s.at, s.len)).collect();
    if ours != theirs {
        let texts = |spans: &[(usize, usize)]| -> Vec<String> {
            spans
                .iter()
                .map(|&(at, len)| sql[at..at + len].to_string())
                .collect()
        };
        return vec![format!(
            "split differs\n  ours:   {:?}\n  server: {:?}",
            texts(&ours),
            texts(&theirs)
        )];
    }
    if !case.parsed {
        return Vec::new();
    }
    let mut found = Vec::new();
    for statement in &case.statements {
        let text = &sql[statement.at..statement.at + statement.len];
        if sql::transaction_control(text).is_some() != statement.control {
            found.push(format!(
                "transaction control should be {}: {text:?}",
                statement.control
            ));
        }
        if sql::copy_stdio(text).is_some() != statement.copy {
            found.push(format!(
                "COPY to/from the client should be {}: {text:?}",
                statement.copy
            ));
        }
    }
    // The commit guard's second opinion may ask for a guard the file does not need, never
    // miss one: every statement the parser reads as ending or opening the transaction (SET
    // TRANSACTION and its settings aside, which the file checks alone refuse) counts.
    let ends = case.statements.iter().any(|s| {
        let text = &sql[s.at..s.at + s.len];
        s.control && !text.get(..3).is_some_and(|w| w.eq_ignore_ascii_case("set"))
    });
    if ends && !sql::may_end_transaction(sql) {
        found.push("may_end_transaction misses a statement that ends the transaction".into());
    }
    let control = sql::transaction_control(sql).map(|(line, _)| line);
    if control != first_line(case, |s| s.control) {
        found.push(format!("transaction_control names line {control:?}"));
    }
    let copy = sql::copy_stdio(sql).map(|(line, _)| line);
    if copy != first_line(case, |s| s.copy) {
        found.push(format!("copy_stdio names line {copy:?}"));
    }
    let indexes: Vec<String> = case
        .statements
        .iter()
        .filter_map(|s| s.index.clone())
        .collect();
    let created: Vec<String> = (sql::created_indexes(sql).into_iter())
        .map(|(name, _)| name)
        .collect();
    if created != indexes {
        found.push(format!("created_indexes {created:?}, server {indexes:?}"));
    }
    found
}

#[test]
fn splitter_agrees_with_the_postgresql_parser_on_the_corpus() {
    let cases = cases();
    assert!(cases.len() >= 300, "the corpus lost its cases");
    let failures: Vec<String> = cases
        .iter()
        .flat_map(|case| {
            disagreements(case)
                .into_iter()
                .map(move |problem| format!("{problem}\n  in: {:?}", case.sql))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} disagreements with PostgreSQL (first 10):\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn corpus_exercises_every_question_it_checks() {
    let cases = cases();
    let statements = || {
        cases
            .iter()
            .filter(|c| c.parsed)
            .flat_map(|c| &c.statements)
    };
    assert!(statements().filter(|s| s.control).count() >= 20);
    assert!(statements().filter(|s| s.copy).count() >= 10);
    assert!(statements().filter(|s| s.index.is_some()).count() >= 10);
    assert!(cases.iter().filter(|c| !c.parsed).count() >= 50);
}
