//! The on-demand backup before migrating: `backupRuns.insert`, then `operations.get` until the
//! operation is done. The Admin API's operations are not google.longrunning ones, so the
//! crate has no poller for them.

use std::time::{Duration, Instant};

use google_cloud_gax::error::Error as ApiError;
use google_cloud_sql_v1::client::{SqlBackupRunsService, SqlOperationsService};
use google_cloud_sql_v1::model::{self, Operation};
use tracing::info;

use super::{Admin, Instance, http_status};
use crate::error::Error;
use crate::interrupt::Interrupt;

/// The first pause between polls; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(500);
const MAX_POLL: Duration = Duration::from_secs(10);

impl Admin {
    /// Creates an on-demand backup described as `description`, waits for it for at most
    /// `timeout`, and returns its id.
    pub async fn backup(
        &self,
        description: &str,
        timeout: Duration,
        interrupt: &Interrupt,
    ) -> Result<String, Error> {
        let instance = &self.options.instance;
        info!(%instance, %description, "backing up before migrating");
        let id = self.take_backup(description, timeout, interrupt).await?;
        info!(%instance, backup_id = %id, "backup done");
        Ok(id)
    }

    async fn take_backup(
        &self,
        description: &str,
        timeout: Duration,
        interrupt: &Interrupt,
    ) -> Result<String, Error> {
        let google = self.google().await.map_err(|f| f.error)?;
        let credentials = google_cloud_auth::credentials::Credentials::from(google.credentials);
        let runs = self.admin(SqlBackupRunsService::builder(), &credentials);
        let operations = self.admin(SqlOperationsService::builder(), &credentials);
        let (runs, operations) = match (runs.build().await, operations.build().await) {
            (Ok(runs), Ok(operations)) => (runs, operations),
            (Err(e), _) | (_, Err(e)) => {
                return Err(self.backup_failed(format!(
                    "building the Admin API client: {}",
                    super::deepest(&e)
                )));
            }
        };
        let Instance { project, name, .. } = &self.options.instance;
        let started = Instant::now();
        let mut operation = runs
            .insert()
            .set_project(project)
            .set_instance(name)
            .set_body(model::BackupRun::new().set_description(description))
            .send()
            .await
            .map_err(|e| self.backup_error(&e))?;
        info!(instance = %self.options.instance, operation = %operation.name, "backup started");
        let mut pause = FIRST_POLL;
        loop {
            if let Some(outcome) = self.outcome(&operation) {
                return outcome;
            }
            let elapsed = started.elapsed();
            if elapsed >= timeout {
                return Err(self.backup_failed(format!(
                    "operation {} still {} after {}s (--backup-timeout); it may still finish: `gcloud sql operations describe {} --project {project}`",
                    operation.name,
                    operation.status.name().unwrap_or("running"),
                    elapsed.as_secs(),
                    operation.name
                )));
            }
            info!(
                instance = %self.options.instance,
                operation = %operation.name,
                state = operation.status.name().unwrap_or("?"),
                elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                "backup in progress"
            );
            interrupt.sleep(pause.min(timeout - elapsed)).await?;
            pause = (pause * 2).min(MAX_POLL);
            let polled = operations
                .get()
                .set_project(project)
                .set_operation(&operation.name)
                .send()
                .await;
            operation = match polled {
                Ok(operation) => operation,
                // A poll that fails transiently is simply tried again at the next tick.
                Err(e) if self.api_failure("operations.get", &e).transient => continue,
                Err(e) => return Err(self.backup_error(&e)),
            };
        }
    }

    /// The backup's id when the operation is done, its errors when it failed, None while it
    /// runs. The id is the operation's backup id (what `gcloud sql backups restore` takes),
    /// else the operation's name.
    fn outcome(&self, operation: &Operation) -> Option<Result<String, Error>> {
        if operation.status != model::operation::SqlOperationStatus::Done {
            return None;
        }
        if let Some(errors) = operation.error.as_ref().filter(|e| !e.errors.is_empty()) {
            let text: Vec<String> = errors
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect();
            return Some(Err(self.backup_failed(format!(
                "operation {} failed: {}",
                operation.name,
                text.join("; ")
            ))));
        }
        let id = operation
            .backup_context
            .as_ref()
            .map(|c| c.backup_id)
            .filter(|id| *id != 0)
            .map_or_else(|| operation.name.clone(), |id| id.to_string());
        Some(Ok(id))
    }

    fn backup_failed(&self, reason: String) -> Error {
        Error::Backup {
            instance: self.options.instance.to_string(),
            reason,
        }
    }

    fn backup_error(&self, error: &ApiError) -> Error {
        if http_status(error) == Some(403) {
            return self.backup_failed(format!(
                "permission denied ({}); grant the job's service account cloudsql.backupRuns.create (e.g. roles/cloudsql.editor) on project {}, or run with --backup never",
                error
                    .status()
                    .map(|s| s.message.as_str())
                    .unwrap_or_default(),
                self.options.instance.project
            ));
        }
        match self.api_failure("backupRuns.insert", error).error {
            Error::CloudSql { reason, .. } => self.backup_failed(reason),
            other => other,
        }
    }
}
