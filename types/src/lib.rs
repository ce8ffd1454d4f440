//! Types shared by the master, the agent, the CLI and tenants' files: the job spec.
//!
//! A job spec (`job.json` beside each example; the body of "create a job cluster" in the API)
//! describes a job cluster: its source, its stages in order, its declared parameters and its
//! sink. See `docs/job-spec.md` for the format with every default and limit; this module is
//! the executable form of that page: [`JobSpec::parse`] reads it and [`JobSpec::validate`]
//! checks everything that can be checked without the master's state.

mod spec;

pub use spec::{
    ArtifactRef, Backpressure, JobSpec, ParamType, ParamValue, ParameterSpec, Resources, Routing, SinkSpec, SourceSpec,
    SpecError, StageSpec, limits,
};
