"""schemathesis hooks for .ci/api-conformance: an artifact upload's body is raw bytes."""

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")
