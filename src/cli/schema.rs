//! `postern config-schema`: prints the config file's JSON Schema (see
//! [`crate::config::json_schema`]), the text committed as `config/postern.schema.json`.

use std::io::Write;
use std::process::ExitCode;

use crate::config::json_schema::config_schema_text;

/// Writes the schema to standard output, pretty-printed with a final newline.
pub fn run() -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out
        .write_all(config_schema_text().as_bytes())
        .and_then(|()| out.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::cli::fail(format!(
            "cannot write the schema to standard output: {e}; redirect it to a file you may \
             write, e.g. > postern.schema.json"
        )),
    }
}
