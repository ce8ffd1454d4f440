//! Types shared by the master, the agent, the CLI and tenants' files: the job spec, and the
//! control protocol between master and agents ([`control`]), and the framing of sink streams
//! ([`sse`]).
//!
//! A job spec (`job.json` beside each example; the body of "create a job cluster" in the API)
//! describes a job cluster: its source, its stages in order, its declared parameters and its
//! sink. See `docs/job-spec.md` for the format with every default and limit; this module is
//! the executable form of that page: [`JobSpec::parse`] reads it and [`JobSpec::validate`]
//! checks everything that can be checked without the master's state.

pub mod control;
pub mod ids;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod scaling;
pub mod sink;
mod spec;
pub mod sse;
pub mod time;

pub use spec::{
    ArtifactRef, ArtifactRefError, Backpressure, Constraints, Fitness, JobSpec, LabelConstraint, ParamError, ParamType,
    ParamValue, ParameterSpec, Resources, Routing, SinkSpec, Sla, SourceSpec, SpecError, StageSpec, Strength,
    is_tag_version, limits, valid_stream,
};
