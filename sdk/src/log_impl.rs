//! Log lines from a stage: to the host's per-worker log on WebAssembly, to stderr natively.

#[cfg(target_family = "wasm")]
fn write(level: crate::__private::bindings::squilla::stage::log::Level, message: &str) {
    crate::__private::bindings::squilla::stage::log::log(level, message);
}

#[cfg(not(target_family = "wasm"))]
fn write(level: crate::__private::bindings::squilla::stage::log::Level, message: &str) {
    eprintln!("[{level:?}] {message}");
}

macro_rules! levels {
    ($($name:ident => $level:ident),*) => {$(
        #[doc = concat!("Writes `message` to the worker's log at level `", stringify!($name), "`.")]
        pub fn $name(message: impl AsRef<str>) {
            write(crate::__private::bindings::squilla::stage::log::Level::$level, message.as_ref());
        }
    )*};
}

levels!(trace => Trace, debug => Debug, info => Info, warn => Warn, error => Error);
