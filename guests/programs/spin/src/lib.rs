//! Loops forever in `process` once it sees an event whose `spin` field is true; otherwise
//! passes events through. `tick` is well-behaved, so tests can see the instance answer until
//! the bad batch arrives.

use squilla_sdk::prelude::*;

struct Spin;

#[stage]
impl Stage for Spin {
    fn init(_: &Params) -> Result<Self, StageError> {
        Ok(Spin)
    }

    fn process(&mut self, input: BatchView<'_>, out: &mut BatchBuilder) -> Result<(), StageError> {
        let mut counter = 0u64;
        for event in input.events() {
            if event.get("spin") == Some(ValueRef::Bool(true)) {
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            out.push_ref(event);
        }
        Ok(())
    }
}
