"""schemathesis hooks for .ci/api-conformance.

- An artifact upload's body is raw bytes.
- Seeded path parameters: .ci/api-conformance seeds an artifact, a cluster and two jobs, and
  passes their ids in SEED_* variables. In the coverage and fuzzing phases, a case whose path
  was generated to be valid gets the seeded ids in place of random ones, so that it reaches
  the handler's logic instead of a 404; a case generated with an invalid path keeps it, so
  that the refusal of bad paths is still checked. (Pinning the parameters in the config
  would also replace the invalid values, and then report the valid request's success as a
  schema-violating request accepted.) The stateful phase keeps the ids its links carry.
"""

import os

import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import TestPhase

schemathesis.serializer.alias("application/wasm", "application/octet-stream")

_JOB = os.environ.get("SEED_JOB", "")
_VICTIM = os.environ.get("SEED_VICTIM", "")
_SHA256 = os.environ.get("SEED_SHA256", "")
_CLUSTER = "conformance"
_STAGE = "keep"

# operationId -> the path parameters it is given.
SEEDS = {
    "getJob": {"id": _JOB},
    "killJob": {"id": _VICTIM},
    "ingest": {"id": _JOB},
    "scaleStage": {"id": _JOB, "stage": _STAGE},
    "resubmitWorker": {"id": _JOB, "stage": _STAGE, "index": 0},
    "submitJob": {"name": _CLUSTER},
    "getCluster": {"name": _CLUSTER},
    "getClusterVersion": {"name": _CLUSTER},
    "getArtifact": {"sha256": _SHA256},
    "downloadArtifact": {"sha256": _SHA256},
    "deleteArtifact": {"sha256": _SHA256},
}


@schemathesis.hook
def before_call(context, case, **kwargs):
    seeds = SEEDS.get(case.operation.definition.raw.get("operationId"))
    meta = case._meta
    if not seeds or meta is None:
        return
    if meta.phase.name not in (TestPhase.COVERAGE, TestPhase.FUZZING):
        return
    if meta.is_negative_at(ParameterLocation.PATH):
        return
    for name, value in seeds.items():
        if value != "" and name in case.path_parameters:
            case.path_parameters[name] = value
