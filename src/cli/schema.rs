//! `postern config-schema`: prints the config file's JSON Schema (see
//! [`crate::config::json_schema`]), the text committed as `config/postern.schema.json`.

use std::process::ExitCode;

use crate::config::json_schema::config_schema_text;

/// Writes the schema to standard output, pretty-printed with a final newline.
pub fn run() -> ExitCode {
    crate::cli::write_bytes(config_schema_text().as_bytes());
    ExitCode::SUCCESS
}
