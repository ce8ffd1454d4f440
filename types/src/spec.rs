//! The job spec and its validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Limits on a job spec, as documented in `docs/job-spec.md`.
pub mod limits {
    /// Longest cluster, stage or parameter name.
    pub const NAME_LEN: usize = 63;
    /// Most stages in a job.
    pub const STAGES: usize = 16;
    /// Most workers in one stage.
    pub const WORKERS: u32 = 1_000;
    /// Longest parameter value, in bytes.
    pub const PARAM_VALUE_LEN: usize = 4_096;
    /// Most parameters (declared or per stage).
    pub const PARAMS: usize = 64;
    /// Shortest and longest stage timer period, in ms.
    pub const TICK_MS: (u64, u64) = (10, 3_600_000);
    /// Largest `sla.min-jobs` / `sla.max-jobs`.
    pub const SLA_JOBS: u32 = 100;
}

/// A job cluster's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JobSpec {
    /// The cluster's name: 1 to 63 of `a-z`, `0-9`, `-`, starting with a letter.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z][a-z0-9-]{0,62}$"))]
    pub name: String,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// Where the job's events come from.
    pub source: SourceSpec,
    /// Parameters every stage receives; a job submission may override them.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub parameters: Vec<ParameterSpec>,
    /// The processing stages, in order: each one's output feeds the next.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 16))]
    pub stages: Vec<StageSpec>,
    /// Where the last stage's output goes.
    #[serde(default)]
    pub sink: SinkSpec,
    /// What a full queue does (default `block`).
    #[serde(default)]
    pub backpressure: Backpressure,
    /// How the scheduler picks agents for this job's workers (default bin-pack).
    #[serde(default)]
    pub fitness: Fitness,
    /// How many jobs of this cluster should run at once.
    #[serde(default)]
    pub sla: Sla,
}

/// Where a job's events come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceSpec {
    /// Generated events (`generator`: `device-logs`), at a set rate.
    #[serde(rename_all = "kebab-case")]
    Synthetic {
        /// Which generator.
        #[cfg_attr(feature = "openapi", schema(pattern = "^device-logs$"))]
        generator: String,
        /// Events per second (1 to 10,000,000).
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10_000_000))]
        events_per_second: u64,
    },
    /// Events posted to the job's ingest endpoint.
    Ingest,
    /// The sink of another job cluster's current job, optionally filtered by a query.
    Job {
        /// The upstream cluster.
        #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z][a-z0-9-]{0,62}$"))]
        cluster: String,
        /// A query the upstream evaluates before sending.
        #[serde(default)]
        query: Option<String>,
    },
    /// An application stream (`app/stream`) of the job's tenant: the events its publishers
    /// (`squilla-publish`) send, optionally filtered by a query (`SELECT * WHERE …`).
    App {
        /// The stream: `<app>/<stream>`, each part a name (a-z, 0-9, '-', from a letter).
        #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z][a-z0-9-]{0,62}/[a-z][a-z0-9-]{0,62}$"))]
        stream: String,
        /// A filter the gateway and the publishers apply before sending.
        #[serde(default)]
        query: Option<String>,
    },
}

/// Whether `text` names an application stream: `<app>/<stream>`, each part a valid name.
pub fn valid_stream(text: &str) -> bool {
    text.split_once('/').is_some_and(|(app, stream)| valid_name(app) && valid_name(stream))
}

/// Where a job's output goes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkSpec {
    /// Subscribers over SSE/WebSocket (and jobs chained to this one).
    #[default]
    Subscribers,
}

/// What happens when a stage's input queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Backpressure {
    /// Wait: the slowness propagates back to the source. Nothing is lost.
    #[default]
    Block,
    /// Drop the oldest queued batch to make room (counted).
    DropOldest,
    /// Drop the incoming batch (counted).
    DropNewest,
}

/// The type of a declared parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ParamType {
    /// A signed 64-bit integer.
    Int,
    /// A float.
    Float,
    /// `true` or `false`.
    Bool,
    /// Any text.
    Text,
}

impl ParamType {
    /// Whether `value` is a valid value of this type.
    pub fn accepts(self, value: &str) -> bool {
        match self {
            ParamType::Int => value.parse::<i64>().is_ok(),
            ParamType::Float => value.parse::<f64>().is_ok_and(f64::is_finite),
            ParamType::Bool => matches!(value, "true" | "false"),
            ParamType::Text => true,
        }
    }
}

/// A parameter value. In JSON it may be written as a string, a number or a boolean; stages
/// receive it as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ParamValue(pub String);

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(ParamValue(s)),
            serde_json::Value::Number(n) => Ok(ParamValue(n.to_string())),
            serde_json::Value::Bool(b) => Ok(ParamValue(b.to_string())),
            other => {
                Err(serde::de::Error::custom(format!("a parameter value is a string, number or boolean, not {other}")))
            }
        }
    }
}

/// A declared job parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ParameterSpec {
    /// Its name.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z][a-z0-9-]{0,62}$"))]
    pub name: String,
    /// Its type; values are checked against it.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// The value used when a submission gives none.
    #[serde(default)]
    pub default: Option<ParamValue>,
    /// Whether a submission must give it (only meaningful without a default).
    #[serde(default)]
    pub required: bool,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
}

/// One stage of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StageSpec {
    /// The stage's name, unique in the job.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z][a-z0-9-]{0,62}$"))]
    pub name: String,
    /// The component that implements it.
    pub artifact: ArtifactRef,
    /// Fixed parameters of this stage (in addition to the job's parameters; a name may not
    /// be both).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::stage_params))]
    pub params: BTreeMap<String, ParamValue>,
    /// How many workers run it (default 1).
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub workers: u32,
    /// How events reach this stage's workers from the previous stage or the source.
    #[serde(default)]
    pub routing: Routing,
    /// What each worker needs.
    #[serde(default)]
    pub resources: Resources,
    /// The period of the stage's `tick`, in ms (default 1000).
    #[serde(default = "default_tick_ms")]
    #[cfg_attr(feature = "openapi", schema(minimum = 10, maximum = 3_600_000))]
    pub tick_ms: u64,
    /// Where the stage's workers may go (default: anywhere).
    #[serde(default)]
    pub constraints: Constraints,
    /// How the stage scales itself (default: it does not; `workers` stays as set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<crate::scaling::ScalingPolicy>,
}

fn one() -> u32 {
    1
}

fn default_tick_ms() -> u64 {
    1_000
}

/// How a stage's input is spread over its workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Routing {
    /// Batches go to each worker in turn.
    #[default]
    RoundRobin,
    /// Every event whose `fields` have the same values goes to the same worker.
    KeyHash {
        /// The fields that make the key (at least one).
        #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::key_fields))]
        fields: Vec<String>,
    },
    /// Every worker gets every batch.
    Broadcast,
}

/// How the scheduler chooses among agents that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Fitness {
    /// Fill agents one after another: fewest agents used (default).
    #[default]
    BinPack,
    /// Put each worker where the most room is left: even load.
    Spread,
}

/// How strongly a placement constraint holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Strength {
    /// Not asked for (default).
    #[default]
    Off,
    /// Preferred: honoured when some agent allows it.
    Soft,
    /// Required: a worker no agent allows stays unplaced, with the reason.
    Hard,
}

/// A label an agent must or should carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LabelConstraint {
    /// The label's name.
    pub name: String,
    /// The value it must have.
    pub value: String,
    /// `hard` (default) or `soft`.
    #[serde(default = "hard")]
    pub strength: Strength,
}

fn hard() -> Strength {
    Strength::Hard
}

/// Where a stage's workers may go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Constraints {
    /// At most one worker of the stage per agent.
    #[serde(default)]
    pub unique_agent: Strength,
    /// The stage's workers spread evenly over zones.
    #[serde(default)]
    pub zone_balance: Strength,
    /// Labels the agent must (hard) or should (soft) carry.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    pub labels: Vec<LabelConstraint>,
}

/// How many jobs of a cluster should run at once (Mantis's SLA).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Sla {
    /// The master keeps at least this many jobs running, submitting with default
    /// parameters as needed (default 0).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub min_jobs: u32,
    /// Submissions beyond this many active jobs are refused (default 0: no limit).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub max_jobs: u32,
}

/// What one worker needs from its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Resources {
    /// CPU in millicores (default 250).
    #[serde(default = "default_cpu")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 4_294_967_295_u64))]
    pub cpu_millis: u32,
    /// Memory in MiB, also the cap on the worker's linear memory (default 64).
    #[serde(default = "default_memory")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 4_294_967_295_u64))]
    pub memory_mib: u32,
    /// Network in Mbps (default 10).
    #[serde(default = "default_network")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 4_294_967_295_u64))]
    pub network_mbps: u32,
}

fn default_cpu() -> u32 {
    250
}
fn default_memory() -> u32 {
    64
}
fn default_network() -> u32 {
    10
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpu_millis: default_cpu(), memory_mib: default_memory(), network_mbps: default_network() }
    }
}

/// A reference to an artifact: `name@version` (a tag) or `sha256:<64 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ArtifactRef {
    /// By tag.
    Tag {
        /// The artifact's name.
        name: String,
        /// Its version.
        version: String,
    },
    /// By content.
    Sha256(String),
}

/// Why a text is not an [`ArtifactRef`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactRefError {
    /// `sha256:` without 64 lowercase hex digits.
    #[error("`{0}`: a sha256 reference is `sha256:` and 64 lowercase hex digits")]
    Sha256(String),
    /// Neither form.
    #[error(
        "`{0}`: an artifact reference is `name@version` (a version is 1 to 64 of letters, digits, '.', '-', '+', '_') or `sha256:<hex>`"
    )]
    Malformed(String),
}

impl TryFrom<String> for ArtifactRef {
    type Error = ArtifactRefError;

    fn try_from(s: String) -> Result<Self, ArtifactRefError> {
        if let Some(hex) = s.strip_prefix("sha256:") {
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Ok(ArtifactRef::Sha256(hex.to_owned()));
            }
            return Err(ArtifactRefError::Sha256(s));
        }
        match s.split_once('@') {
            Some((name, version)) if valid_name(name) && is_tag_version(version) => {
                Ok(ArtifactRef::Tag { name: name.to_owned(), version: version.to_owned() })
            }
            _ => Err(ArtifactRefError::Malformed(s)),
        }
    }
}

impl From<ArtifactRef> for String {
    fn from(r: ArtifactRef) -> String {
        r.to_string()
    }
}

impl std::fmt::Display for ArtifactRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArtifactRef::Tag { name, version } => write!(f, "{name}@{version}"),
            ArtifactRef::Sha256(hex) => write!(f, "sha256:{hex}"),
        }
    }
}

/// What is wrong with a spec: where (a path like `stages[1].routing.fields`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct SpecError {
    /// Where in the spec.
    pub path: String,
    /// What is wrong there.
    pub problem: String,
}

fn err(path: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError { path: path.into(), problem: problem.into() }
}

fn valid_name(name: &str) -> bool {
    crate::ids::is_name(name)
}

/// Whether `version` is an artifact tag's version: 1 to 64 of letters, digits, `.`, `-`, `+`
/// and `_`.
pub fn is_tag_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 64
        && version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'_'))
}

impl SourceSpec {
    /// Whether events reach the job through its ingest endpoint (posted, or sent by a gateway
    /// from an application stream).
    pub fn takes_ingest(&self) -> bool {
        matches!(self, SourceSpec::Ingest | SourceSpec::App { .. })
    }
}

impl JobSpec {
    /// Parses and validates a spec from JSON.
    pub fn parse(json: &str) -> Result<Self, SpecError> {
        let spec: JobSpec = serde_json::from_str(json)
            .map_err(|e| err(format!("line {} column {}", e.line(), e.column()), e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks names, counts, limits, routing and parameters; returns the first problem.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !valid_name(&self.name) {
            return Err(err("name", "1 to 63 of a-z, 0-9 and '-', starting with a letter"));
        }
        if let SourceSpec::Synthetic { generator, events_per_second } = &self.source {
            if generator != "device-logs" {
                return Err(err("source.generator", format!("unknown generator `{generator}` (known: device-logs)")));
            }
            if !(1..=10_000_000).contains(events_per_second) {
                return Err(err("source.events-per-second", "between 1 and 10,000,000"));
            }
        }
        if let SourceSpec::Job { cluster, .. } = &self.source
            && !valid_name(cluster)
        {
            return Err(err("source.cluster", "not a valid cluster name"));
        }
        if let SourceSpec::App { stream, .. } = &self.source
            && !valid_stream(stream)
        {
            return Err(err(
                "source.stream",
                "`<app>/<stream>`, each 1 to 63 of a-z, 0-9 and '-', starting with a letter",
            ));
        }
        if self.sla.max_jobs != 0 && self.sla.min_jobs > self.sla.max_jobs {
            return Err(err("sla.min-jobs", "must not exceed sla.max-jobs"));
        }
        if self.sla.min_jobs > limits::SLA_JOBS || self.sla.max_jobs > limits::SLA_JOBS {
            return Err(err("sla", format!("at most {} jobs", limits::SLA_JOBS)));
        }
        if self.parameters.len() > limits::PARAMS {
            return Err(err("parameters", format!("at most {} parameters", limits::PARAMS)));
        }
        for (i, p) in self.parameters.iter().enumerate() {
            let path = format!("parameters[{i}]");
            if !valid_name(&p.name) {
                return Err(err(format!("{path}.name"), "1 to 63 of a-z, 0-9 and '-', starting with a letter"));
            }
            if self.parameters[..i].iter().any(|q| q.name == p.name) {
                return Err(err(format!("{path}.name"), format!("parameter `{}` is declared twice", p.name)));
            }
            if let Some(ParamValue(v)) = &p.default {
                check_value(&format!("{path}.default"), v)?;
                if !p.ty.accepts(v) {
                    return Err(err(format!("{path}.default"), format!("`{v}` is not a valid {:?}", p.ty)));
                }
            }
        }
        if self.stages.is_empty() || self.stages.len() > limits::STAGES {
            return Err(err("stages", format!("a job has 1 to {} stages", limits::STAGES)));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            self.validate_stage(i, stage)?;
        }
        Ok(())
    }

    fn validate_stage(&self, i: usize, stage: &StageSpec) -> Result<(), SpecError> {
        let path = format!("stages[{i}]");
        if !valid_name(&stage.name) {
            return Err(err(format!("{path}.name"), "1 to 63 of a-z, 0-9 and '-', starting with a letter"));
        }
        if self.stages[..i].iter().any(|s| s.name == stage.name) {
            return Err(err(format!("{path}.name"), format!("stage `{}` appears twice", stage.name)));
        }
        if !(1..=limits::WORKERS).contains(&stage.workers) {
            return Err(err(format!("{path}.workers"), format!("between 1 and {}", limits::WORKERS)));
        }
        if let Routing::KeyHash { fields } = &stage.routing
            && (fields.is_empty() || fields.iter().any(String::is_empty))
        {
            return Err(err(
                format!("{path}.routing.fields"),
                "key-hash routing needs at least one non-empty field name",
            ));
        }
        if !(limits::TICK_MS.0..=limits::TICK_MS.1).contains(&stage.tick_ms) {
            return Err(err(
                format!("{path}.tick-ms"),
                format!("between {} and {}", limits::TICK_MS.0, limits::TICK_MS.1),
            ));
        }
        let r = stage.resources;
        if r.cpu_millis == 0 || r.memory_mib == 0 {
            return Err(err(format!("{path}.resources"), "cpu-millis and memory-mib must be positive"));
        }
        if stage.constraints.labels.len() > limits::PARAMS {
            return Err(err(format!("{path}.constraints.labels"), format!("at most {} labels", limits::PARAMS)));
        }
        if stage.params.len() > limits::PARAMS {
            return Err(err(format!("{path}.params"), format!("at most {} parameters", limits::PARAMS)));
        }
        if let Some(policy) = &stage.scaling {
            policy.validate(&format!("{path}.scaling"))?;
            if !(policy.min..=policy.max).contains(&stage.workers) {
                return Err(err(format!("{path}.workers"), "within the scaling policy's `min` and `max`"));
            }
        }
        for (name, ParamValue(value)) in &stage.params {
            check_value(&format!("{path}.params.{name}"), value)?;
            if self.parameters.iter().any(|p| &p.name == name) {
                return Err(err(
                    format!("{path}.params.{name}"),
                    format!("`{name}` is also a job parameter; give it one home so that overrides are unambiguous"),
                ));
            }
        }
        Ok(())
    }

    /// The parameters a stage's workers receive: the job's declared parameters (with
    /// `overrides` applied, then defaults) and the stage's own `params`. Declared parameters
    /// without a value are left out.
    pub fn stage_params(&self, stage: &StageSpec, overrides: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .parameters
            .iter()
            .filter_map(|p| {
                let value = overrides.get(&p.name).cloned().or_else(|| p.default.as_ref().map(|d| d.0.clone()))?;
                Some((p.name.clone(), value))
            })
            .collect();
        out.extend(stage.params.iter().map(|(k, v)| (k.clone(), v.0.clone())));
        out
    }
}

/// Why a job's parameter values were refused (the code is the API's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A value for a parameter the spec does not declare (`unknown_parameter`).
    #[error("`{name}` is not a parameter of `{job}` (declared: {declared})")]
    Unknown {
        /// The name given.
        name: String,
        /// The spec's name.
        job: String,
        /// The declared names, comma-separated.
        declared: String,
    },
    /// A value that does not fit the parameter's type, or is too long (`invalid_parameter`).
    #[error("parameter `{name}`: `{value}` is not a valid {ty:?}")]
    Invalid {
        /// The parameter.
        name: String,
        /// The value given (cut at 100 characters).
        value: String,
        /// Its declared type.
        ty: ParamType,
    },
    /// A required parameter without a default and without a value (`missing_parameter`).
    #[error("parameter `{name}` is required")]
    Missing {
        /// The parameter.
        name: String,
    },
}

impl ParamError {
    /// The API's code for it.
    pub fn code(&self) -> &'static str {
        match self {
            ParamError::Unknown { .. } => "unknown_parameter",
            ParamError::Invalid { .. } => "invalid_parameter",
            ParamError::Missing { .. } => "missing_parameter",
        }
    }
}

impl JobSpec {
    /// Checks the values `given` for the spec's declared parameters: every name declared,
    /// every value of its type and at most [`limits::PARAM_VALUE_LEN`] bytes, every required
    /// parameter without a default given. Returns them as they are, for
    /// [`JobSpec::stage_params`]. The one check of parameters, for the master's submissions
    /// and `squilla run` alike.
    pub fn check_params(&self, given: &BTreeMap<String, String>) -> Result<(), ParamError> {
        for (name, value) in given {
            let Some(declared) = self.parameters.iter().find(|p| &p.name == name) else {
                let declared: Vec<&str> = self.parameters.iter().map(|p| p.name.as_str()).collect();
                return Err(ParamError::Unknown {
                    name: name.clone(),
                    job: self.name.clone(),
                    declared: declared.join(", "),
                });
            };
            if !declared.ty.accepts(value) || value.len() > limits::PARAM_VALUE_LEN {
                return Err(ParamError::Invalid {
                    name: name.clone(),
                    value: value.chars().take(100).collect(),
                    ty: declared.ty,
                });
            }
        }
        for p in &self.parameters {
            if p.required && p.default.is_none() && !given.contains_key(&p.name) {
                return Err(ParamError::Missing { name: p.name.clone() });
            }
        }
        Ok(())
    }
}

fn check_value(path: &str, value: &str) -> Result<(), SpecError> {
    if value.len() > limits::PARAM_VALUE_LEN {
        return Err(err(path, format!("a parameter value is at most {} bytes", limits::PARAM_VALUE_LEN)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
        "name": "errors",
        "source": {"kind": "synthetic", "generator": "device-logs", "events-per-second": 100},
        "parameters": [{"name": "window-ms", "type": "int", "default": 30000}],
        "stages": [
            {"name": "keep", "artifact": "filter@0.1.0", "params": {"field": "status", "op": "ge", "value": 500}},
            {"name": "rate", "artifact": "device-errors@0.1.0", "workers": 2,
             "routing": {"kind": "key-hash", "fields": ["device-type"]}}
        ]
    }"#;

    #[test]
    fn a_spec_parses_with_defaults() {
        let spec = JobSpec::parse(SPEC).unwrap();
        assert_eq!(spec.stages[0].workers, 1);
        assert_eq!(spec.stages[0].tick_ms, 1_000);
        assert_eq!(spec.stages[1].resources, Resources::default());
        assert_eq!(spec.backpressure, Backpressure::Block);
        assert_eq!(spec.stages[0].params["value"], ParamValue("500".into()));
        let overrides = BTreeMap::from([("window-ms".to_string(), "10000".to_string())]);
        let params = spec.stage_params(&spec.stages[0], &overrides);
        assert_eq!(params[0], ("window-ms".into(), "10000".into()));
        assert_eq!(params.len(), 4);
    }

    #[test]
    fn problems_are_reported_with_their_path() {
        let cases = [
            (SPEC.replace("\"errors\"", "\"Errors\""), "name"),
            (SPEC.replace("\"fields\": [\"device-type\"]", "\"fields\": []"), "stages[1].routing.fields"),
            (SPEC.replace("\"workers\": 2", "\"workers\": 0"), "stages[1].workers"),
            (SPEC.replace("\"default\": 30000", "\"default\": \"soon\""), "parameters[0].default"),
            (SPEC.replace("\"op\": \"ge\"", "\"window-ms\": 5"), "stages[0].params.window-ms"),
            (SPEC.replace("filter@0.1.0", "filter"), "line 6 column 100"),
            (SPEC.replace("\"name\": \"keep\"", "\"name\": \"rate\""), "stages[1].name"),
        ];
        for (json, path) in cases {
            let e = JobSpec::parse(&json).unwrap_err();
            assert!(e.path.starts_with(path.split(" column").next().unwrap()), "{path}: got {e}");
        }
    }

    #[test]
    fn artifact_refs() {
        assert!(ArtifactRef::try_from(format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(ArtifactRef::try_from("sha256:xyz".to_string()).is_err());
        assert_eq!(ArtifactRef::try_from("a-b@1.2".to_string()).unwrap().to_string(), "a-b@1.2");
    }
}
