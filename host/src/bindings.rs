//! Host bindings generated from `wit/stage.wit`, one module per stage world. The `log` and
//! `metrics` interfaces are generated once (in `raw`) and shared by `typed` and `keyed`.

#[allow(missing_docs)]
pub mod raw {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "squilla:stage/raw-stage",
    });
}

#[allow(missing_docs)]
pub mod typed {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "squilla:stage/typed-stage",
        with: {
            "squilla:stage/log": super::raw::squilla::stage::log,
            "squilla:stage/metrics": super::raw::squilla::stage::metrics,
            "squilla:stage/types": super::raw::squilla::stage::types,
        },
    });
}

#[allow(missing_docs)]
pub mod keyed {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "squilla:stage/raw-keyed-stage",
        with: {
            "squilla:stage/log": super::raw::squilla::stage::log,
            "squilla:stage/metrics": super::raw::squilla::stage::metrics,
            "squilla:stage/types": super::raw::squilla::stage::types,
        },
    });
}

pub use raw::squilla::stage::log::Level;
pub use raw::squilla::stage::types::{
    Event as WitEvent, Field as WitField, StageError as WitStageError, Value as WitValue,
};
