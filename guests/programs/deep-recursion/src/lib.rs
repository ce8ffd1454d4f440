//! Recurses without a base case in `process`, so the wasm stack limit must stop it.

use squilla_sdk::prelude::*;

struct Deep;

// Recursing without end is the point of this program.
#[allow(unconditional_recursion)]
#[inline(never)]
fn descend(depth: u64, pad: [u64; 8]) -> u64 {
    let next = std::hint::black_box(pad);
    descend(depth + 1, next) + next[(depth % 8) as usize]
}

#[stage]
impl Stage for Deep {
    fn init(_: &Params) -> Result<Self, StageError> {
        Ok(Deep)
    }

    fn process(&mut self, _input: BatchView<'_>, _out: &mut BatchBuilder) -> Result<(), StageError> {
        std::hint::black_box(descend(0, [1; 8]));
        Ok(())
    }
}
