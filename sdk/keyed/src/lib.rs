//! The bindings of the `raw-keyed-stage` world (`wit/stage.wit`), for stages of `squilla-sdk`
//! that hand their keyed state over. They live in a crate of their own because the world
//! exports `raw-handler` as `raw-stage` does, and the export glue of one interface can be
//! generated only once per crate. Use them through `squilla-sdk`.
#![allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]

wit_bindgen::generate!({
    path: "../../wit",
    world: "squilla:stage/raw-keyed-stage",
    pub_export_macro: true,
    default_bindings_module: "::squilla_sdk::__private::keyed_bindings",
});
