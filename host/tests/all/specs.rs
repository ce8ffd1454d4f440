//! Every example's `job.json` is a valid spec whose stages name built examples and whose
//! parameters those stages accept.

use std::collections::BTreeMap;

use squilla_host::Limits;
use squilla_types::{ArtifactRef, JobSpec};

use crate::{example, runtime};

#[test]
fn every_example_job_spec_is_valid_and_its_stages_start() {
    let mut seen = 0;
    for (name, _) in squilla_guests::ALL {
        let path = format!("{}/{name}/job.json", squilla_guests::EXAMPLES_DIR);
        let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let spec = JobSpec::parse(&json).unwrap_or_else(|e| panic!("{path}: {e}"));
        // Required parameters without a default get a value, as a submission would give.
        let overrides: BTreeMap<String, String> = spec
            .parameters
            .iter()
            .filter(|p| p.required && p.default.is_none())
            .map(|p| (p.name.clone(), "value".to_string()))
            .collect();
        for stage in &spec.stages {
            let ArtifactRef::Tag { name: artifact, version } = &stage.artifact else {
                panic!("{path}: examples refer to artifacts by tag");
            };
            assert_eq!(version, "0.1.0", "{path}");
            let params = spec.stage_params(stage, &overrides);
            let limits =
                Limits { memory_bytes: stage.resources.memory_mib as usize * 1024 * 1024, ..Limits::default() };
            example(artifact)
                .instantiate(runtime(), &limits, &params)
                .unwrap_or_else(|e| panic!("{path}: stage {} does not start: {e}", stage.name));
            seen += 1;
        }
    }
    assert!(seen >= squilla_guests::ALL.len());
}
