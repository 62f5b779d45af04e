//! Flags every API-calling subcommand shares (`task`, `delivery`, `pulse`), and how the key is
//! found.

use crate::client::ApiClient;
use clap::Args;
use std::path::PathBuf;

/// `--api`, `--key`, `--data-dir`, `--json`.
#[derive(Debug, Args)]
pub(super) struct ApiFlags {
    /// API base URL.
    #[arg(
        long = "api",
        env = "TASKFLEET_API_URL",
        default_value = "http://127.0.0.1:8090",
        global = true
    )]
    pub(super) api: String,
    /// API key [default: $TASKFLEET_API_KEY, else <data-dir>/api-key].
    #[arg(long, env = "TASKFLEET_API_KEY", hide_env_values = true, global = true)]
    pub(super) key: Option<String>,
    /// Where `taskfleet up` wrote the generated key.
    #[arg(
        long,
        env = "TASKFLEET_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub(super) data_dir: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(super) json: bool,
}

impl ApiFlags {
    /// The key in `<data-dir>/api-key`, if `up` wrote one.
    pub(super) fn key_file(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir.join("api-key"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// A client with `--key`, else `fallback` (e.g. a task token), else the data dir's key.
    pub(super) fn client(&self, fallback: Option<String>) -> ApiClient {
        let key = self.key.clone().or(fallback).or_else(|| self.key_file());
        ApiClient::new(&self.api, key)
    }
}
