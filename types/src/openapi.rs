//! OpenAPI schemas of the types whose serde form is hand-written (ids, artifact references,
//! parameter values), for the master's API document (feature `openapi`).
//!
//! Each schema states the same rule as the type's parser, so that a document-valid value is
//! one the server accepts and a value the server refuses is one the document calls invalid.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::ids::{AgentId, ClusterName, JobId, JobKey, Sha256, StageName, TenantId, WorkerNumber};
use crate::{ArtifactRef, ParamValue};

/// A name: 1 to 63 of `a-z`, `0-9`, `-`, starting with a letter.
pub const NAME_PATTERN: &str = "^[a-z][a-z0-9-]{0,62}$";
/// A tag's version: 1 to 64 of letters, digits, `.`, `-`, `+`, `_`.
pub const VERSION_PATTERN: &str = "^[A-Za-z0-9.+_-]{1,64}$";
/// A job id: `<cluster>-<n>`, n from 1.
pub const JOB_ID_PATTERN: &str = "^[a-z][a-z0-9-]{0,62}-[1-9][0-9]{0,18}$";
/// A sha256: 64 lowercase hex digits.
pub const SHA256_PATTERN: &str = "^[0-9a-f]{64}$";

fn string(description: &str, pattern: &str) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).description(Some(description)).pattern(Some(pattern)).into()
}

macro_rules! string_schema {
    ($ty:ty, $description:expr, $pattern:expr) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                string($description, $pattern)
            }
        }
        impl ToSchema for $ty {}
    };
}

string_schema!(TenantId, "A tenant: 1 to 63 of a-z, 0-9 and '-'.", "^[a-z0-9-]{1,63}$");
string_schema!(ClusterName, "A job cluster's name.", NAME_PATTERN);
string_schema!(StageName, "A stage's name.", NAME_PATTERN);
string_schema!(AgentId, "An agent: 1 to 63 of A-Z, a-z, 0-9, '-', '_' and '.'.", "^[A-Za-z0-9._-]{1,63}$");
string_schema!(JobId, "A job: `<cluster>-<n>`, the n-th job of its tenant's cluster.", JOB_ID_PATTERN);
string_schema!(
    JobKey,
    "A job among every tenant's: `<tenant>.<job>`.",
    "^[a-z0-9-]{1,63}\\.[a-z][a-z0-9-]{0,62}-[1-9][0-9]{0,18}$"
);
string_schema!(Sha256, "A component's sha256: 64 lowercase hex digits.", SHA256_PATTERN);
string_schema!(
    ArtifactRef,
    "An artifact: `name@version` (a tag) or `sha256:` and 64 lowercase hex digits.",
    "^(sha256:[0-9a-f]{64}|[a-z][a-z0-9-]{0,62}@[A-Za-z0-9.+_-]{1,64})$"
);

impl PartialSchema for WorkerNumber {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .description(Some("A worker's incarnation, unique within its job."))
            .into()
    }
}
impl ToSchema for WorkerNumber {}

impl PartialSchema for ParamValue {
    fn schema() -> RefOr<Schema> {
        let text = ObjectBuilder::new().schema_type(Type::String).max_length(Some(crate::limits::PARAM_VALUE_LEN));
        OneOfBuilder::new()
            .item(text)
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .description(Some(
                "A parameter value: a string (at most 4,096 bytes), a number or a boolean; stages receive it as text.",
            ))
            .into()
    }
}
impl ToSchema for ParamValue {}

/// The schema of key-hash routing's `fields`: at least one non-empty field name.
pub fn key_fields() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)))
        .min_items(Some(1))
        .description(Some("The fields that make the key (at least one, none empty)."))
        .build()
}

/// The schema of a stage's fixed `params`: at most 64 names, each with a parameter value.
pub fn stage_params() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .additional_properties(Some(ParamValue::schema()))
        .max_properties(Some(crate::limits::PARAMS))
        .description(Some("Fixed parameters of this stage (at most 64)."))
        .build()
}
