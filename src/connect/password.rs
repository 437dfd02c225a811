//! The password a connection string lacks, found as libpq finds it, from a file a secret is
//! mounted as, PGPASSWORD, or a pgpass file.

use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;

use crate::error::Error;

/// A password the URL lacks: DATABASE_PASSWORD_FILE (a file holding only the password, as
/// Kubernetes and Cloud Run mount secrets), then PGPASSWORD, then a pgpass file.
pub(super) fn find(
    pg: &tokio_postgres::Config,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Vec<u8>>, Error> {
    if let Some(path) = var("DATABASE_PASSWORD_FILE") {
        let secret = read_secret(Path::new(&path), "DATABASE_PASSWORD_FILE")?;
        return Ok(Some(
            secret.trim_end_matches(['\n', '\r']).as_bytes().to_vec(),
        ));
    }
    if let Some(password) = var("PGPASSWORD") {
        return Ok(Some(password.into_bytes()));
    }
    let (path, named) = match (var("PGPASSFILE"), var("HOME")) {
        (Some(path), _) => (PathBuf::from(path), true),
        (None, Some(home)) => (Path::new(&home).join(".pgpass"), false),
        (None, None) => return Ok(None),
    };
    if !named && !path.exists() {
        return Ok(None);
    }
    let text = read_secret(&path, "PGPASSFILE")?;
    Ok(pgpass_lookup(&text, &pgpass_key(pg)).map(String::into_bytes))
}

fn read_secret(path: &Path, variable: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| {
        // A value that names no directory and nothing that exists may be the password itself,
        // set where its file's path belongs: it is not repeated.
        let shown = match path.parent().is_some_and(|p| !p.as_os_str().is_empty()) || path.exists() {
            true => path.display().to_string(),
            false => "a file that is not there (the value is not repeated here: it may be a password)".to_string(),
        };
        Error::Config(format!(
            "{variable} names {shown}, which cannot be read ({e}); set it to the path of the file holding the password (the password itself goes in PGPASSWORD), or unset {variable}"
        ))
    })
}

/// (host, port, database, user) as pgpass matches them.
fn pgpass_key(pg: &tokio_postgres::Config) -> [String; 4] {
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        // libpq matches a socket in the default directory as "localhost".
        Some(Host::Unix(_)) | None => "localhost".to_string(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = pg.get_user().unwrap_or_default().to_string();
    let database = pg.get_dbname().map_or_else(|| user.clone(), str::to_string);
    [host, port, database, user]
}

/// The password of the first pgpass line matching `key`; `*` matches anything, and `\`
/// escapes `:` and `\`. <https://www.postgresql.org/docs/current/libpq-pgpass.html>
fn pgpass_lookup(text: &str, key: &[String; 4]) -> Option<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let fields = pgpass_fields(line);
            (fields.len() == 5).then_some(fields)
        })
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(key)
                .all(|(field, want)| field == "*" || field == want)
        })
        .map(|mut fields| fields.swap_remove(4))
}

fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields
                .last_mut()
                .into_iter()
                .for_each(|f| f.extend(chars.next())),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().into_iter().for_each(|f| f.push(c)),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The password for `bot` on `h`, database `d`, given these variables.
    fn find_in(vars: &[(&str, &str)]) -> Result<Option<Vec<u8>>, Error> {
        let pg: tokio_postgres::Config = "postgresql://bot@h/d".parse().unwrap();
        let var = |name: &str| {
            let found = vars.iter().find(|(key, _)| *key == name);
            found.map(|(_, value)| value.to_string())
        };
        find(&pg, &var)
    }

    #[test]
    fn a_password_set_where_its_file_belongs_is_not_repeated() {
        for variable in ["DATABASE_PASSWORD_FILE", "PGPASSFILE"] {
            let error = find_in(&[(variable, "Sentinel-pw-9")])
                .unwrap_err()
                .to_string();
            assert!(!error.contains("Sentinel"), "{error}");
            assert!(error.contains("goes in PGPASSWORD"), "{error}");
            // A path is shown: it says where the mount was expected.
            let error = find_in(&[(variable, "/run/secrets/missing")]).unwrap_err();
            assert!(
                error.to_string().contains("/run/secrets/missing"),
                "{error}"
            );
        }
    }

    #[test]
    fn password_files_supply_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "mounted-pw\n").unwrap();
        let pgpass = dir.path().join("pgpass");
        std::fs::write(
            &pgpass,
            "# comment\nother:*:*:*:nope\nh:5432:d:bot:pass\\:word\n*:*:*:*:fallback\n",
        )
        .unwrap();
        let cases = [
            (
                vec![("DATABASE_PASSWORD_FILE", secret.to_str().unwrap())],
                Some("mounted-pw"),
            ),
            (
                vec![("PGPASSFILE", pgpass.to_str().unwrap())],
                Some("pass:word"),
            ),
            (vec![("HOME", dir.path().to_str().unwrap())], None),
        ];
        for (vars, expected) in cases {
            let password = find_in(&vars).unwrap();
            let password = password.map(|p| String::from_utf8(p).unwrap());
            assert_eq!(password.as_deref(), expected, "{vars:?}");
        }
        let error = find_in(&[("DATABASE_PASSWORD_FILE", "/nonexistent/secret")]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("/nonexistent/secret"), "{error}");
    }
}
