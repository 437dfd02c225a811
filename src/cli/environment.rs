//! What a run reads besides its flags: a `.env` file's DATABASE_URL, and who is applying.

use std::path::Path;

use crate::error::Error;

/// Reads one key from a `.env` file without touching the process environment, so a real
/// environment variable (already taken by clap) always wins.
pub(super) fn dotenv_value(path: &Path, key: &str) -> Result<Option<String>, Error> {
    let entries = match dotenvy::from_path_iter(path) {
        Ok(entries) => entries,
        Err(e) if e.not_found() => return Ok(None),
        Err(e) => return Err(dotenv_error(path, e)),
    };
    for entry in entries {
        let (name, value) = entry.map_err(|e| dotenv_error(path, e))?;
        if name == key {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

fn dotenv_error(path: &Path, error: dotenvy::Error) -> Error {
    // dotenvy's parse errors quote the offending line, which may hold a password.
    let what = match error {
        dotenvy::Error::LineParse(_, index) => format!("cannot parse it near byte {index}"),
        dotenvy::Error::Io(e) => e.to_string(),
        _ => "cannot read it".to_string(),
    };
    Error::Config(format!(
        "{}: {what}; fix the file or set DATABASE_URL in the environment",
        path.display()
    ))
}

/// Who applied a migration: the Cloud Run execution, the Kubernetes pod, or the host.
pub(super) fn applied_by() -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(execution) = var("CLOUD_RUN_EXECUTION") {
        return format!("cloud-run/{execution}");
    }
    let host = var("HOSTNAME").or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
    });
    match (var("KUBERNETES_SERVICE_HOST"), host) {
        (Some(_), Some(pod)) => format!("pod/{pod}"),
        (None, Some(host)) => host,
        (_, None) => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_supplies_a_missing_value_only_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "# local\nOTHER=1\nDATABASE_URL=\"postgresql://u@h/d\"\n",
        )
        .unwrap();
        assert_eq!(
            dotenv_value(&path, "DATABASE_URL").unwrap().as_deref(),
            Some("postgresql://u@h/d")
        );
        assert_eq!(
            dotenv_value(&dir.path().join("none"), "DATABASE_URL").unwrap(),
            None
        );
    }
}
