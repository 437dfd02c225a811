#!/usr/bin/env python3
"""Writes tests/data/lexer-corpus.json: random SQL files and how PostgreSQL's own parser splits
them, for the differential test in tests/lexer.rs.

src/sql.rs is a hand-written lexer; a gap in it (a string read with the wrong rules, a BEGIN
taken for a routine body) can hide a COMMIT from the transaction check or split a file where the
server would not. This script builds files from fragments that stress the lexer and records
what libpg_query, the server's scanner and grammar built as a library, makes of them. pglast
wraps libpg_query for Python; the corpus is checked in so that `cargo test` needs neither
Python nor a C toolchain.

Regenerate (the output depends only on the seed and the pglast version):

    python3 -m venv /tmp/pglast && /tmp/pglast/bin/pip install pglast==8.8
    /tmp/pglast/bin/python scripts/lexer-corpus.py > tests/data/lexer-corpus.json

Each case is {"sql", "mode", "statements": [{"at", "len", "control"?, "copy"?, "index"?}]}
with byte offsets of each statement from its first token to its last (comments around it
excluded), as sql::split reports them.

- mode "parser": valid SQL split by the parser (RawStmt locations). A statement is "control"
  when it is a TransactionStmt other than SAVEPOINT, RELEASE and ROLLBACK TO, or SET TRANSACTION
  (or SET transaction_isolation, _read_only, _deferrable); "copy" when it is
  COPY from or to the client (no file name, no PROGRAM); "index" is the name CREATE INDEX gives.
- mode "scanner": any text the scanner accepts, split at every `;` token. These cases reach
  token sequences the grammar rejects (two strings on one line, a block comment between them),
  so they hold no parentheses and no CREATE, whose semicolons only the parser can place.

Left out on purpose, where db-migrate differs from the server by design:
- psql meta-commands (`\\set`): the server never sees them; sql::meta_command refuses them.
- semicolons inside parentheses outside CREATE RULE, and unbalanced parentheses: psql (and
  sql::split) keep such a semicolon in the statement, the server reports a syntax error.
- unterminated quotes and comments: sql::split sends the rest of the file so the server reports
  it; libpg_query only raises an error.
- a byte-order mark, which sql::split skips and the server rejects.
- CREATE FUNCTION inside a BEGIN ATOMIC body: the grammar takes it, but the server refuses any
  utility statement there ("not yet supported in unquoted SQL function body"), so sql.rs opens
  bodies only at the top level.
- standard_conforming_strings = off (backslashes in plain strings): off since PostgreSQL 9.1.
"""

import json
import random
import sys

import pglast
from pglast import parser

SEED = 20240611
PARSER_CASES = 260
SCANNER_CASES = 120

rng = random.Random(SEED)


def pick(*options):
    return rng.choice(options)


def maybe(p, text, otherwise=""):
    return text if rng.random() < p else otherwise


# --- whitespace and comments -------------------------------------------------------------

SPACES = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\n\n", "\r", "\f", "\v"]
COMMENT_TEXT = ["", " x", " it's", ' "q', " ;", " $$", " /*", " */", " --", " é", " \\set"]


def line_comment():
    return "--" + "".join(rng.choice(COMMENT_TEXT) for _ in range(rng.randint(0, 2)))


def block_comment(depth=0):
    # Only the recursion nests: a stray `/*` or `*/` in the text would leave it unterminated.
    texts = [t for t in COMMENT_TEXT if "*" not in t and "/" not in t]
    inner = "".join(rng.choice(texts) for _ in range(rng.randint(0, 2)))
    if depth < 2 and rng.random() < 0.3:
        inner += block_comment(depth + 1)
    return "/*" + inner + maybe(0.3, "\n") + "*/"


def gap():
    """Whitespace between two tokens, sometimes with comments in it."""
    out = rng.choice(SPACES)
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
        if rng.random() < 0.5:
            out += line_comment() + pick("\n", "\r\n", "\r")
        else:
            out += block_comment() + rng.choice(SPACES)
    return out


def continuation_space():
    """What may join two parts of one string constant: whitespace with a newline, and `--`
    comments (scan.l's `quotecontinue`)."""
    out = pick("", " ", "\t", " " + line_comment())
    out += pick("\n", "\r\n", "\r", "\n\n")
    if rng.random() < 0.3:
        out += line_comment() + "\n"
    return out + pick("", " ", "  ", "\t")


# --- literals ------------------------------------------------------------------------------

PLAIN_BITS = ["a", "x y", ";", "''", "\\", '"', "$$", "$a$", "--", "/*", "*/", "é", "\n", "(", ")", "BEGIN", "COMMIT;"]
ESCAPE_BITS = PLAIN_BITS[:5] + ["\\'", "\\\\", "\\n", "\\t", "\\x41", "\\101", "\\u00e9", "\\;"] + PLAIN_BITS[6:]


def plain_part():
    return "'" + "".join(rng.choice(PLAIN_BITS) for _ in range(rng.randint(0, 3))) + "'"


def escape_part():
    # A lone backslash before the closing quote would escape it; "\\" never does.
    bits = [b for b in ESCAPE_BITS if b != "\\"]
    return "'" + "".join(rng.choice(bits) for _ in range(rng.randint(0, 3))) + "'"


def string_constant():
    kind = rng.choice(["plain", "E", "E", "U&", "dollar", "dollar", "B", "N"])
    if kind == "dollar":
        return dollar_quoted(rng.choice(PLAIN_BITS + ["';'", "$", "$b$ ; $b$"]))
    if kind == "B":
        return pick("B", "b") + "'0101'"
    if kind == "U&":
        body = "".join(rng.choice(["d\\0061t", ";", "\\\\", "x", "''", "\\+01F600"]) for _ in range(2))
        text = pick("U", "u") + "&'" + body + "'"
        if rng.random() < 0.2:
            return text.replace("\\", "!") + " UESCAPE '!'"
        # Continued parts of a U& string follow its (quote-doubling) rules.
        if rng.random() < 0.3:
            text += continuation_space() + "'" + pick(";", "''", "a") + "'"
        return text
    prefix = {"plain": "", "E": pick("E", "e"), "N": pick("N", "n")}[kind]
    part = escape_part if kind == "E" else plain_part
    text = prefix + part()
    # Continued parts of an E string keep the backslash escapes.
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        text += continuation_space() + part()
    return text


def dollar_quoted(body):
    tag = pick("", "", "a", "fn", "_x1", "é", "B")
    delimiter = "$" + tag + "$"
    if delimiter in body:
        body = body.replace(delimiter, "")
    return delimiter + body + delimiter


# --- identifiers ---------------------------------------------------------------------------

def identifier():
    return pick("t", "t", "a", "x$y", "x$$y", "begin", "atomic", "Stdin", "é_col", '"end"', '"a;b"', '"it\'s"', '"a""b"', 'U&"d\\0061t"', '"BEGIN"', '"a\n--b"', '"/*"')


def index_name():
    # U&"..." names are left out: sql::created_indexes does not decode their escapes (a gap
    # reported with the test; the name only decides which INVALID index gets rebuilt).
    return pick("i", "Idx_A", "begin", '"My Idx"', '"a""b"', "é_idx", "x" * 70)


# --- statements ----------------------------------------------------------------------------

def g():
    return gap()


def select():
    return rng.choice([
        lambda: f"SELECT{g()}{string_constant()}{g()}AS{g()}{identifier()}",
        lambda: f"SELECT {string_constant()},{g()}{string_constant()}",
        lambda: f"SELECT {identifier()} FROM {identifier()} WHERE {identifier()} ={g()}{string_constant()}",
        lambda: f"SELECT 1{g()}+{g()}2",
    ])()


TRANSACTION = [
    "BEGIN", "begin work", "BEGIN ISOLATION LEVEL SERIALIZABLE", "START TRANSACTION", "COMMIT",
    "commit work", "COMMIT AND CHAIN", "COMMIT AND NO CHAIN", "END", "ROLLBACK", "ABORT",
    "ROLLBACK AND CHAIN", "rollback transaction", "SAVEPOINT s", "RELEASE SAVEPOINT s",
    "RELEASE s", "ROLLBACK TO s", "ROLLBACK TO SAVEPOINT s", "ROLLBACK WORK TO SAVEPOINT s",
    "rollback transaction to s", "PREPARE TRANSACTION 'gid'", "prepare transaction $$g$$",
    "COMMIT PREPARED 'gid'", "ROLLBACK PREPARED 'gid'", "PREPARE p AS SELECT $1",
    "PREPARE transaction AS SELECT 1", "PREPARE transaction (int) AS SELECT $1", "EXECUTE p(1)",
    "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
]

COPY = [
    "COPY t FROM STDIN", "copy t (a, b) from stdin with (format csv)",
    "COPY (SELECT 1 FROM stdin) TO STDOUT", "COPY t TO stdout WITH CSV HEADER",
    "COPY stdin FROM STDIN", "COPY s.t TO STDIN", "COPY t FROM '/tmp/t.csv'",
    "COPY t TO PROGRAM 'gzip > /tmp/t.gz'", "COPY stdin FROM PROGRAM 'cat'",
    "COPY (SELECT * FROM stdout) TO '/tmp/x'",
]


def transaction():
    return rng.choice(TRANSACTION)


def copy():
    return rng.choice(COPY)


def ddl():
    return rng.choice([
        lambda: f"COMMENT ON TABLE {identifier()} IS{g()}{string_constant()}",
        lambda: f"INSERT INTO {identifier()} ({identifier()},{g()}{identifier()}) VALUES ({string_constant()}, {string_constant()})",
        lambda: f"CREATE TABLE {identifier()} ({identifier()} text DEFAULT {string_constant()}, begin int)",
        lambda: f"UPDATE {identifier()} SET begin ={g()}{string_constant()}",
        lambda: f"CREATE {maybe(0.3, 'UNIQUE ')}INDEX {maybe(0.4, 'CONCURRENTLY ')}{maybe(0.3, 'IF NOT EXISTS ')}{index_name()} ON t (a)",
        lambda: "CREATE INDEX ON t (a)",
    ])()


DO_BODIES = ["BEGIN; COMMIT; END", "BEGIN RAISE NOTICE 'x;'; END", "BEGIN PERFORM $$x$$; ROLLBACK; END", "DECLARE a int; BEGIN END"]


def dollar_body():
    return rng.choice([
        lambda: f"DO{g()}{dollar_quoted(rng.choice(DO_BODIES))}",
        lambda: f"CREATE FUNCTION {pick('f', 'begin')}() RETURNS text LANGUAGE sql AS {dollar_quoted('SELECT $$;$$; COMMIT')}",
    ])()


def body_statement():
    return rng.choice([
        lambda: f"SELECT {string_constant()} AS begin",
        lambda: f"SELECT CASE WHEN {string_constant()} = 'a' THEN 1 ELSE 2 END",
        lambda: "SELECT (CASE WHEN true THEN 1 END)",
        lambda: "SELECT CASE WHEN true THEN CASE WHEN false THEN 1 END END",
        lambda: "SELECT begin atomic FROM t",
        lambda: f"INSERT INTO t VALUES ({string_constant()})",
        lambda: "UPDATE t SET begin = 1",
        lambda: "SELECT 1",
    ])()


def atomic_routine():
    kind = pick("FUNCTION", "PROCEDURE", "function")
    name = pick("f", "begin", "atomic", '"end"')
    head = f"CREATE {maybe(0.3, 'OR REPLACE ')}{kind} {name}"
    head += pick("()", "(begin int)", "(a int DEFAULT (CASE WHEN true THEN 1 END))", f"(a text DEFAULT {string_constant()})")
    if kind != "PROCEDURE":
        head += " RETURNS int"
    head += " LANGUAGE sql" + maybe(0.3, " SET search_path = begin")
    if kind != "PROCEDURE" and rng.random() < 0.2:
        return head + " RETURN CASE WHEN true THEN 1 END"
    body = "".join(f"{g()}{body_statement()};" for _ in range(rng.randint(0, 3)))
    return f"{head} BEGIN{g()}ATOMIC{body}{g()}{pick('END', 'end')}"


RULE_ACTIONS = ["INSERT INTO a VALUES (1)", "UPDATE a SET x = ';'", "DELETE FROM a", "NOTIFY c", "SELECT 1"]


def rule():
    actions = [rng.choice(RULE_ACTIONS) for _ in range(rng.randint(1, 3))]
    body = pick("NOTHING", f"({';'.join(actions)}{maybe(0.3, ';')})", actions[0])
    return f"CREATE RULE r AS ON INSERT TO t DO {pick('ALSO', 'INSTEAD')} {body}"


STATEMENTS = [select, select, transaction, transaction, copy, ddl, ddl, dollar_body, atomic_routine, atomic_routine, rule]


def parser_file():
    out = maybe(0.1, "-- no-transaction\n") + maybe(0.3, gap())
    for _ in range(rng.randint(1, 5)):
        out += rng.choice(STATEMENTS)() + maybe(0.6, gap()) + ";" + maybe(0.15, gap() + ";") + gap()
    if rng.random() < 0.5:
        out = out.rstrip(";" + "".join(SPACES))
    return out


WORDS = [
    "SELECT", "COMMIT", "begin", "BEGIN", "atomic", "end", "E", "e", "typE", "U", "x", "x$$y", "1", "1.5",
    ".5", "1e5", "0x1F", "1_000", "$1", "$1$a$;$a$", "+", "-", "*", "/", "::", ",", "\\", "@--", "+/*c*/",
    "*/*c*/",
]


def scanner_file():
    out = ""
    for _ in range(rng.randint(3, 12)):
        item = rng.random()
        if item < 0.35:
            out += string_constant()
        elif item < 0.45:
            # An E string, then a string that continues it only across a newline and `--`
            # comments; a plain one ends at its first quote even after a backslash.
            out += pick("E'x'", "e'\\\\'") + pick(" ", " /* c */\n", "\n/* c */ ", "\n", "\t--c\n")
            out += pick("'\\'", "'a\\'", escape_part())
        elif item < 0.7:
            out += rng.choice(WORDS)
        elif item < 0.8:
            out += ";"
        else:
            out += identifier() if rng.random() < 0.5 else gap()
        out += maybe(0.7, gap())
    return out


# --- what PostgreSQL makes of them ---------------------------------------------------------

class Offsets:
    """Maps the scanner's character offsets to the byte offsets sql::split reports."""

    def __init__(self, sql):
        self.bytes = [0]
        for c in sql:
            self.bytes.append(self.bytes[-1] + len(c.encode()))

    def byte(self, char):
        return self.bytes[char]


def code_tokens(sql):
    """(start, end) byte ranges of the scanner's tokens, comments left out."""
    at = Offsets(sql)
    return [
        (at.byte(t.start), at.byte(t.end + 1), t.name)
        for t in parser.scan(sql)
        if t.name not in ("SQL_COMMENT", "C_COMMENT")
    ]


def trimmed(tokens, start, end):
    inside = [t for t in tokens if start <= t[0] and t[1] <= end and t[2] != "ASCII_59"]
    return {"at": inside[0][0], "len": inside[-1][1] - inside[0][0]} if inside else None


KEEPS_TRANSACTION = {"TRANS_STMT_SAVEPOINT", "TRANS_STMT_RELEASE", "TRANS_STMT_ROLLBACK_TO"}


def sets_transaction(name):
    """SET TRANSACTION ... and the settings only a transaction's start may change."""
    settings = {"transaction_isolation", "transaction_read_only", "transaction_deferrable"}
    return name == "TRANSACTION" or name.startswith("TRANSACTION ") or name in settings


def parsed(sql):
    tokens = code_tokens(sql)
    size = len(sql.encode())
    statements = []
    for raw in json.loads(parser.parse_sql_json(sql))["stmts"]:
        start = raw.get("stmt_location", 0)
        end = start + raw["stmt_len"] if raw.get("stmt_len") else size
        statement = trimmed(tokens, start, end)
        (node, fields), = raw["stmt"].items()
        if node == "TransactionStmt" and fields["kind"] not in KEEPS_TRANSACTION:
            statement["control"] = True
        if node == "VariableSetStmt" and sets_transaction(fields.get("name", "")):
            statement["control"] = True
        if node == "CopyStmt" and "filename" not in fields and not fields.get("is_program"):
            statement["copy"] = True
        if node == "IndexStmt" and "idxname" in fields:
            statement["index"] = fields["idxname"]
        statements.append(statement)
    return statements


# Semicolons inside parentheses and routine bodies are placed by the grammar (see the top).
PARSER_ONLY = {"ASCII_40", "ASCII_41", "CREATE"}


def scanned(sql):
    tokens = code_tokens(sql)
    if any(t[2] in PARSER_ONLY for t in tokens):
        return None  # a string read as code can leave a parenthesis outside any quote
    statements, start = [], 0
    for t in tokens + [(len(sql.encode()), len(sql.encode()), "ASCII_59")]:
        if t[2] == "ASCII_59":
            statement = trimmed(tokens, start, t[0])
            if statement:
                statements.append(statement)
            start = t[1]
    return statements


def cases(count, make, mode, split):
    out = []
    while len(out) < count:
        sql = make()
        try:
            statements = split(sql)
        except pglast.parser.ParseError:
            continue  # not SQL the server would run (or scan): nothing to compare
        if statements is None:
            continue
        out.append({"sql": sql, "mode": mode, "statements": statements})
    return out


def main():
    corpus = {
        "generator": "scripts/lexer-corpus.py",
        "seed": SEED,
        "pglast": pglast.__version__,
        "postgresql": ".".join(map(str, parser.get_postgresql_version())),
        "cases": cases(PARSER_CASES, parser_file, "parser", parsed)
        + cases(SCANNER_CASES, scanner_file, "scanner", scanned),
    }
    json.dump(corpus, sys.stdout, ensure_ascii=False, indent=0)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
