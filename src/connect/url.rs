//! The connection string, in libpq's URI or key=value form: split into what tokio-postgres
//! parses and the parameters this tool handles itself, with errors that never repeat the
//! password; and [`redact`], which hides credentials in text this tool did not write.

use crate::error::Error;

/// The parameters `settings` takes out of a connection string before tokio-postgres sees
/// it: the TLS settings (tokio-postgres knows only some sslmodes) and the keepalives (so that
/// unset ones get this tool's defaults, and `tcp_user_timeout` keeps libpq's unit).
const OWN_KEYS: [&str; 10] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "keepalives_retries",
    "tcp_user_timeout",
];

/// The parameters tokio-postgres parses itself.
const DRIVER_KEYS: [&str; 13] = [
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "connect_timeout",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
    "sslnegotiation",
];

const EXAMPLE: &str = "postgresql://user:password@host:5432/database";

/// A connection string split into the part tokio-postgres parses and this tool's own
/// parameters.
type Split = (String, Vec<(String, String)>);

/// Parses a URI or key=value string with tokio-postgres, returning the parameters `settings`
/// handles itself beside it.
pub(super) fn parse(url: &str) -> Result<(tokio_postgres::Config, Vec<(String, String)>), Error> {
    let (rest, own) = split(url)?;
    // `split` has checked every parameter name and re-quoted every key=value value, so what
    // tokio-postgres can still object to is a value, and its errors name only the option.
    let pg = rest.parse().map_err(|e: tokio_postgres::Error| {
        Error::Config(format!(
            "DATABASE_URL is not a valid connection string ({}); use {EXAMPLE}",
            describe_parse_error(&e)
        ))
    })?;
    Ok((pg, own))
}

/// Whatever the mistake, an error here repeats nothing of the input but a scheme or a
/// parameter name that cannot be part of a password: the input holds one.
fn split(url: &str) -> Result<Split, Error> {
    let text = unquote(url)?;
    // Quotes around nothing (`DATABASE_URL=""` kept by docker's --env-file) would otherwise
    // read as libpq's empty string: every default, localhost included.
    if text.is_empty() {
        let what = match url.trim().is_empty() {
            true => "is empty",
            false => "holds only quotes",
        };
        return Err(Error::Config(format!(
            "DATABASE_URL {what}, no database; set it to the connection string ({EXAMPLE}), or leave it unset to use PGHOST/PGDATABASE"
        )));
    }
    match uri_body(text)? {
        Some(body) => split_uri(body),
        None => split_key_values(text),
    }
}

/// Whether a connection string is empty, or quotes around nothing (`DATABASE_URL=""`, as
/// docker's `--env-file` keeps it): such a value counts as unset, and the PG* variables say
/// where to connect.
pub fn is_blank(text: &str) -> bool {
    unquote(text).is_ok_and(str::is_empty)
}

/// Drops one pair of matching quotes around the whole value: docker's `--env-file` and some
/// secret stores keep them (`DATABASE_URL="postgresql://..."`). A lone opening quote is
/// refused rather than taken into a parameter name or the host.
fn unquote(text: &str) -> Result<&str, Error> {
    let text = text.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote) {
            return inner.strip_suffix(quote).map(str::trim).ok_or_else(|| {
                Error::Config(format!(
                    "DATABASE_URL starts with {quote} but does not end with it; remove the quotes around the value"
                ))
            });
        }
    }
    Ok(text)
}

/// What follows `scheme://` when `text` is a URI. The scheme's letter case does not matter
/// (RFC 3986 §3.1), and a SQLAlchemy driver (`postgresql+psycopg2://`) is dropped so that an
/// application's URL can be shared: the rest is libpq's syntax. Any other scheme is refused.
fn uri_body(text: &str) -> Result<Option<&str>, Error> {
    let Some((scheme, body)) = text.split_once("://") else {
        return Ok(None);
    };
    if scheme.eq_ignore_ascii_case("jdbc:postgresql") {
        return Err(Error::Config(format!(
            "DATABASE_URL is a JDBC URL; drop `jdbc:` and put the user and password before the host: {EXAMPLE}"
        )));
    }
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.len() <= 32
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    // "://" inside a key=value value (`options=...`) does not make a URI.
    if !is_scheme {
        return Ok(None);
    }
    let base = scheme.split('+').next().unwrap_or_default();
    match base.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => Ok(Some(body)),
        _ => Err(Error::Config(format!(
            "DATABASE_URL is a {scheme}:// URL, but db-migrate connects only to PostgreSQL; use {EXAMPLE}"
        ))),
    }
}

/// `user:password@host:port/database?key=value&...`, the URI after its scheme. The
/// credentials end at the first `@`, as tokio-postgres reads them; another `@` before the
/// query is one of the password or user name that was not percent-encoded, and the rest of
/// the password would be taken for the host and printed in every log line.
fn split_uri(body: &str) -> Result<Split, Error> {
    // The protocol ends each of its strings with a NUL: a server could only refuse the
    // connection, after the whole --connect-timeout of tries.
    if percent_decode(body).contains('\0') {
        return Err(Error::Config(
            "DATABASE_URL holds a percent-encoded NUL (%00), which no part of a PostgreSQL connection can carry; remove it".into(),
        ));
    }
    let (credentials, after) = match body.split_once('@') {
        Some((credentials, after)) => (Some(credentials), after),
        None => (None, body),
    };
    let (location, query) = after.split_once('?').unwrap_or((after, ""));
    // A password holding `@` and then `?` puts its tail in the query: `x@y?tail@host/db`.
    // An `@` in a parameter's name, or one followed by a path, is that; an `@` in a value
    // (`application_name=bot@vm`) is not.
    let stray_at = query.split('&').any(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        key.contains('@')
            || value
                .split_once('@')
                .is_some_and(|(_, tail)| tail.contains('/'))
    });
    if location.contains('@') || stray_at {
        return Err(Error::Config(
            "DATABASE_URL has an @ in its user name or password that is not percent-encoded, so part of the password would be read as the host; percent-encode @ in the password as %40 (p@ss becomes p%40ss)".into(),
        ));
    }
    if let Some(credentials) = credentials {
        let user_raw = credentials
            .split_once(':')
            .map_or(credentials, |(user, _)| user);
        let user = percent_decode(user_raw);
        if user.contains(':') {
            return Err(Error::Config(
                "DATABASE_URL's user name holds a percent-encoded : (%3A), so the password would be read as part of the user name and printed with it; write user:password@host with the : itself".into(),
            ));
        }
        refuse_pairs("user", &user)?;
        refuse_pairs_after("user", user_raw, true)?;
    }
    refuse_pairs_in_uri("host or database name", location)?;
    let mut kept = Vec::new();
    let mut own = Vec::new();
    let mut after_password = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        let password = key == "password";
        // With an `@` anywhere in the query, a key may be the tail of a password.
        let is_own = is_own(&key, after_password || query.contains('@'))?;
        refuse_pairs_in_uri(&key, value)?;
        match is_own {
            true => own.push((key, percent_decode(value))),
            false => kept.push(pair),
        }
        after_password = password;
    }
    let mut rest = String::from("postgresql://");
    if let Some(credentials) = credentials {
        rest.push_str(credentials);
        rest.push('@');
    }
    rest.push_str(location);
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, own))
}

/// Whether this tool handles `key` itself (else tokio-postgres does). An unknown key is
/// named in the error only when it cannot be a fragment of a password: not right after the
/// password, and spelled like a parameter name.
fn is_own(key: &str, after_password: bool) -> Result<bool, Error> {
    if OWN_KEYS.contains(&key) {
        return Ok(true);
    }
    if DRIVER_KEYS.contains(&key) {
        return Ok(false);
    }
    if key.eq_ignore_ascii_case("DATABASE_URL") {
        return Err(Error::Config(
            "DATABASE_URL's value starts with DATABASE_URL=; set the variable to what follows the =".into(),
        ));
    }
    let named = !after_password
        && (1..=40).contains(&key.len())
        && key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    Err(Error::Config(match named {
        true => format!(
            "DATABASE_URL has the parameter `{key}`, which db-migrate does not support; remove it"
        ),
        false => "DATABASE_URL has a parameter db-migrate does not know (not repeated here: it may be part of a password); check the parameter names, and single-quote a value with spaces: password='my secret'".into(),
    }))
}

/// Refuses a value that carries more `key=value` pairs behind a `;`, `,`, `&` or white space:
/// pairs written with another separator than libpq's (`host=h;port=5432;password=...`, as
/// ADO.NET and JDBC write them), or appended to a URL after a space (`postgresql://u@h/d
/// password=...`), are read as one value, the host's or the database's, which every log line
/// prints, password and all. Only the password's value (anything goes) and `options`
/// (the server's own `-c name=value` list) may hold them.
fn refuse_pairs(key: &str, value: &str) -> Result<(), Error> {
    refuse_pairs_after(key, value, false)
}

/// [`refuse_pairs`] for a part of a URI as written, before its percent-decoding: a URI holds
/// no white space of its own, so any `name=` after one is a pair appended to it.
fn refuse_pairs_in_uri(key: &str, raw: &str) -> Result<(), Error> {
    refuse_pairs_after(key, raw, true)?;
    refuse_pairs(key, &percent_decode(raw))
}

fn refuse_pairs_after(key: &str, value: &str, any_after_space: bool) -> Result<(), Error> {
    if key == "password" || key == "options" {
        return Ok(());
    }
    // At the start too: `host= password=...` (a host substituted while unset) reads the next
    // pair as the host's value, as libpq does.
    let is_name = |name: &str| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let joined =
        std::iter::once(0).chain(value.match_indices([';', ',', '&']).map(|(at, _)| at + 1));
    let pair_at = |at: usize, known_only: bool| {
        let rest = value[at..].trim_start();
        rest.split_once('=').is_some_and(|(name, _)| {
            let name = name.trim_end();
            is_name(name)
                && (!known_only || OWN_KEYS.contains(&name) || DRIVER_KEYS.contains(&name))
        })
    };
    // After white space only a parameter this tool or libpq knows counts: a value may hold a
    // space and an `=` of its own (application_name='deploy run=42').
    let spaced = (value.match_indices(char::is_whitespace)).map(|(at, space)| at + space.len());
    let holds_pair = joined.into_iter().any(|at| pair_at(at, false))
        || spaced.into_iter().any(|at| pair_at(at, !any_after_space));
    match holds_pair {
        true => Err(Error::Config(format!(
            "DATABASE_URL's {key} holds key=value pairs (not repeated here: they may hold a password): an empty value before them, pairs joined by ; , or &, or pairs after a space in a URL; give {key} a value and separate key=value pairs with spaces (host=h port=5432 user=u password=p dbname=d), or write {EXAMPLE}"
        ))),
        false => Ok(()),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `host=h sslmode=verify-full password='a b'`, each value re-quoted for tokio-postgres so
/// that its parser sees only well-formed pairs.
fn split_key_values(text: &str) -> Result<Split, Error> {
    let mut kept = Vec::new();
    let mut own = Vec::new();
    let mut after_password = false;
    for (key, value) in key_values(text)? {
        let password = key == "password";
        let is_own = is_own(&key, after_password)?;
        refuse_pairs(&key, &value)?;
        if is_own {
            own.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
        after_password = password;
    }
    Ok((kept.join(" "), own))
}

/// libpq's key=value pairs; values may be single-quoted with `\` escapes. A word without `=`
/// is refused without being repeated: it is most often the rest of an unquoted password with
/// a space in it (`password=my secret`).
fn key_values(text: &str) -> Result<Vec<(String, String)>, Error> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() && chars.peek().is_none() {
            return Ok(pairs);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if key.is_empty() || chars.next_if_eq(&'=').is_none() {
            return Err(without_equals(pairs.is_empty()));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(Error::Config(
                    "DATABASE_URL has a single-quoted value that is not closed; end it with '"
                        .into(),
                ));
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())));
        }
        pairs.push((key, value));
    }
}

fn without_equals(first: bool) -> Error {
    Error::Config(match first {
        true => format!(
            "DATABASE_URL is neither a postgresql:// URL nor key=value pairs (not repeated here: it may hold a password); use {EXAMPLE}, or host=... user=... dbname=... pairs"
        ),
        false => "DATABASE_URL has a word without = among its key=value pairs (not repeated here: it is most likely part of a password with a space); single-quote a value with spaces: password='my secret'".into(),
    })
}

fn describe_parse_error(error: &tokio_postgres::Error) -> String {
    std::error::Error::source(error)
        .map(|cause| cause.to_string())
        .unwrap_or_else(|| error.to_string())
}

/// `text` with the credentials of anything in it that looks like a connection string
/// replaced by `***`: in a URI everything from `://` to the last `@` of the line, after
/// `password=` its value. For text this tool does not write itself, such as clap's usage
/// errors, which repeat what was typed.
pub fn redact(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| redact_password_values(&redact_credentials(line)))
        .collect()
}

fn redact_credentials(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        out.push_str(head);
        rest = match tail.rfind('@') {
            Some(at) => {
                out.push_str("***");
                &tail[at..]
            }
            None => tail,
        };
    }
    out.push_str(rest);
    out
}

fn redact_password_values(line: &str) -> String {
    // ASCII lower-casing keeps every byte offset.
    let lower = line.to_ascii_lowercase();
    let mut out = String::new();
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let key_end = from + found + "password".len();
        let Some(value) = line[key_end..]
            .trim_start_matches(' ')
            .strip_prefix('=')
            .map(|v| v.trim_start_matches(' '))
        else {
            out.push_str(&line[from..key_end]);
            from = key_end;
            continue;
        };
        let value_start = line.len() - value.len();
        out.push_str(&line[from..value_start]);
        out.push_str("***");
        from = value_start + value_length(value);
    }
    out.push_str(&line[from..]);
    out
}

/// The length of the value `text` starts with: single-quoted with `\` escapes, or up to a
/// space, `&`, quote or line end.
fn value_length(text: &str) -> usize {
    let Some(quoted) = text.strip_prefix('\'') else {
        return text
            .find(|c: char| c.is_whitespace() || matches!(c, '&' | '\'' | '"'))
            .unwrap_or(text.len());
    };
    let mut escaped = false;
    for (i, c) in quoted.char_indices() {
        match (escaped, c) {
            (false, '\\') => escaped = true,
            (false, '\'') => return i + 2,
            _ => escaped = false,
        }
    }
    text.trim_end_matches('\n').len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::Host;

    #[test]
    fn malformed_url_error_does_not_repeat_the_input() {
        let error = parse("postgresql://bot:s3cret-sentinel@db:notaport/videos").unwrap_err();
        let text = error.to_string();
        assert!(!text.contains("s3cret-sentinel"), "{text}");
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn a_percent_encoded_nul_is_refused_wherever_it_stands() {
        for url in [
            "postgresql://bot:pw@db/videos%00",
            "postgresql://bot%00:pw@db/videos",
            "postgresql://bot:p%00w-sentinel@db/videos",
            "postgresql://bot:pw@db%00/videos",
            "postgresql://bot:pw@db/videos?application_name=a%00b",
        ] {
            let error = parse(url).unwrap_err();
            let text = error.to_string();
            assert!(text.contains("NUL (%00)"), "{url}: {text}");
            assert!(!text.contains("sentinel"), "{text}");
            assert_eq!(error.exit_code(), 2);
        }
    }

    #[test]
    fn quoted_upper_case_and_driver_urls_are_accepted() {
        let forms = [
            "\"postgresql://bot:pw@db.internal/videos\"",
            "'postgresql://bot:pw@db.internal/videos'\n",
            "POSTGRESQL://bot:pw@db.internal/videos",
            "Postgres://bot:pw@db.internal/videos",
            "postgresql+psycopg2://bot:pw@db.internal/videos",
            "postgres+asyncpg://bot:pw@db.internal/videos",
            "\"host=db.internal user=bot password='pw' dbname=videos\"",
        ];
        for form in forms {
            let (pg, _) = parse(form).unwrap_or_else(|e| panic!("{form}: {e}"));
            let host = Host::Tcp("db.internal".into());
            assert_eq!(pg.get_hosts(), [host], "{form}");
            assert_eq!(pg.get_user(), Some("bot"), "{form}");
            assert_eq!(pg.get_dbname(), Some("videos"), "{form}");
            assert_eq!(pg.get_password(), Some(&b"pw"[..]), "{form}");
        }
    }

    #[test]
    fn separators_inside_values_that_hold_no_pairs_are_kept() {
        let forms = [
            "host=h1,h2 port=5432,5433 user=bot password='a;b=c,d=e' dbname=videos",
            "host=h1 user=bot options='-c search_path=app,public -c a.b=x;y=z' dbname=videos",
            "postgresql://bot:x%3By%3Dz@h1,h2/videos?application_name=bot;blue",
            // A space and an `=` of the value's own, not a parameter's.
            "host=h1,h2 user=bot application_name='deploy run=42' dbname=videos",
            "postgresql://bot@h1,h2/videos?application_name=deploy%20run%3D42",
        ];
        for form in forms {
            let (pg, _) = parse(form).unwrap_or_else(|e| panic!("{form}: {e}"));
            assert_eq!(
                pg.get_hosts().len(),
                2 - usize::from(form.contains("options"))
            );
            assert_eq!(pg.get_dbname(), Some("videos"), "{form}");
        }
    }

    #[test]
    fn an_at_sign_in_a_parameter_value_is_kept() {
        let url = "postgresql://bot:pw@h/videos?application_name=bot@vm&sslmode=disable";
        let (pg, _) = parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(pg.get_application_name(), Some("bot@vm"));
        assert_eq!(pg.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn url_mistakes_are_refused_naming_the_fix_without_the_secret() {
        let secret = "S3cret-Sentinel";
        let cases = [
            (format!("mysql://bot:{secret}@h/d"), "mysql:// URL"),
            (
                format!("jdbc:postgresql://h/d?user=bot&password={secret}"),
                "drop `jdbc:`",
            ),
            (
                format!("postgresql://bot:x@{secret}@h/d"),
                "percent-encode @ in the password as %40",
            ),
            (format!("postgresql://bot:x@{secret}@/d"), "%40"),
            (
                format!("host=h user=bot password=my {secret} dbname=d"),
                "password='my secret'",
            ),
            (
                format!("host=h user=bot password=my {secret}=x dbname=d"),
                "not repeated here",
            ),
            (format!("host=h password='{secret}"), "not closed"),
            (
                format!("\"postgresql://bot:{secret}@h/d"),
                "remove the quotes",
            ),
            (
                format!("DATABASE_URL=postgresql://bot:{secret}@h/d"),
                "what follows the =",
            ),
            (
                secret.to_string(),
                "neither a postgresql:// URL nor key=value pairs",
            ),
            (
                format!("postgresql://bot:{secret}@h/d?passfile=/x"),
                "`passfile`",
            ),
            // The password `x@h?secret...&` and `x@h?secret...=y`, not percent-encoded.
            (
                "postgresql://bot:x@h?secretsentinel&@127.0.0.1:5432/d".into(),
                "percent-encode @ in the password as %40",
            ),
            (
                "postgresql://bot:x@h?secret_sentinel=y@127.0.0.1:5432/d".into(),
                "percent-encode @ in the password as %40",
            ),
            (
                "postgresql://bot:x@h?secret_sentinel=y@z".into(),
                "not repeated here",
            ),
            // Pairs written with ADO.NET's or JDBC's separators: one value, the password in it.
            (
                format!("host=127.0.0.1;port=5432;user=bot;password={secret};dbname=d"),
                "DATABASE_URL's host holds key=value pairs",
            ),
            (
                format!("host=127.0.0.1,port=5432,user=bot,password={secret},dbname=d"),
                "separate key=value pairs with spaces",
            ),
            (
                format!("postgresql://bot@h/d?sslmode=disable;password={secret}"),
                "DATABASE_URL's sslmode holds key=value pairs",
            ),
            (
                format!("postgresql://bot@h/d?dbname=d;password={secret}"),
                "DATABASE_URL's dbname holds",
            ),
            (
                format!("postgresql://bot@h/d;password={secret}"),
                "DATABASE_URL's host or database name holds",
            ),
            (
                format!("postgresql://bot;password={secret}@h/d"),
                "DATABASE_URL's user holds",
            ),
            // Pairs appended to a URL after a space: the database name, the path, a value.
            (
                format!("postgresql://bot@h:5432/d password={secret}"),
                "DATABASE_URL's host or database name holds",
            ),
            (
                format!("postgresql://bot@h/d?sslmode=disable password={secret}"),
                "DATABASE_URL's sslmode holds",
            ),
            (
                format!("postgresql://bot@h/d?sslrootcert=/x\tpassword={secret}"),
                "DATABASE_URL's sslrootcert holds",
            ),
            (
                format!("postgresql://bot@h/d?host=127.0.0.1 password={secret}"),
                "DATABASE_URL's host holds",
            ),
            (
                format!("postgresql://bot@h/d?dbname=d%20password={secret}"),
                "DATABASE_URL's dbname holds",
            ),
            // Quotes around nothing.
            ("\"\"".into(), "holds only quotes"),
            (" '' ".into(), "holds only quotes"),
            (" ".into(), "DATABASE_URL is empty"),
            // A misspelled parameter after a space in a URL is a pair all the same.
            (
                format!("postgresql://bot@h/d pasword={secret}"),
                "DATABASE_URL's host or database name holds",
            ),
            // A host substituted while unset: the password read as the host.
            (
                format!("host= password={secret} dbname=d"),
                "give host a value",
            ),
            // The whole user info percent-encoded as one piece.
            (
                format!("postgresql://bot%3A{secret}@h/d"),
                "percent-encoded : (%3A)",
            ),
        ];
        for (url, fix) in cases {
            let error = parse(&url).unwrap_err();
            let text = error.to_string();
            assert!(text.contains(fix), "{url}: {text}");
            assert!(!text.to_lowercase().contains("sentinel"), "{url}: {text}");
            assert!(!text.contains('\n'), "one line: {text}");
            assert_eq!(error.exit_code(), 2, "{url}");
        }
    }

    #[test]
    fn redact_hides_url_credentials_and_password_values() {
        let cases = [
            (
                "error: unexpected argument 'postgresql://u:pw@h/db' found\n",
                "error: unexpected argument 'postgresql://***@h/db' found\n",
            ),
            ("'postgresql://u:p@ss@h/db'", "'postgresql://***@h/db'"),
            (
                "'host=h PASSWORD = pw dbname=d'",
                "'host=h PASSWORD = *** dbname=d'",
            ),
            ("password='a \\' b' x", "password=*** x"),
            (
                "?password=pw&sslmode=require",
                "?password=***&sslmode=require",
            ),
            (
                "no secrets: postgresql://h/db",
                "no secrets: postgresql://h/db",
            ),
        ];
        for (text, redacted) in cases {
            assert_eq!(redact(text), redacted, "{text}");
        }
    }
}
