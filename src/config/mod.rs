//! Configuration: the YAML schema, human units, and validation with errors that name the
//! file, the key path and the problem.

pub mod schema;
pub mod units;
