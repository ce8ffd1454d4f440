//! The stage contract's function types, checked against a component's exports without
//! compiling it.
//!
//! An upload that exports `squilla:stage/raw-handler@0.1.0` (or the typed one) by name but with
//! other types would be accepted by a check of names alone and fail only on an agent. So the
//! master checks the types too, from the component's type section as the validator read it:
//! each of `init`, `process` and `tick` must exist with the parameters and results of
//! `wit/stage.wit` (record field and variant case names included; parameter names are not part
//! of the check, as in wasmtime's own).

use wasmparser::PrimitiveValType;
use wasmparser::component_types::{ComponentDefinedType, ComponentEntityType, ComponentValType};
use wasmparser::types::TypesRef;

use crate::Flavour;

/// A value type of the contract.
#[derive(Debug, Clone)]
enum Ty {
    Bool,
    U8,
    S64,
    F64,
    String,
    List(Box<Ty>),
    Tuple(Vec<Ty>),
    Record(Vec<(&'static str, Ty)>),
    Variant(Vec<(&'static str, Option<Ty>)>),
    Result(Option<Box<Ty>>, Option<Box<Ty>>),
}

fn list(t: Ty) -> Ty {
    Ty::List(Box::new(t))
}

fn result(ok: Option<Ty>, err: Ty) -> Ty {
    Ty::Result(ok.map(Box::new), Some(Box::new(err)))
}

fn stage_error() -> Ty {
    Ty::Record(vec![("message", Ty::String), ("retryable", Ty::Bool)])
}

fn event() -> Ty {
    let value = Ty::Variant(vec![
        ("null", None),
        ("boolean", Some(Ty::Bool)),
        ("int", Some(Ty::S64)),
        ("float", Some(Ty::F64)),
        ("text", Some(Ty::String)),
        ("bytes", Some(list(Ty::U8))),
    ]);
    let field = Ty::Record(vec![("name", Ty::String), ("value", value)]);
    Ty::Record(vec![("timestamp-ms", Ty::S64), ("fields", list(field))])
}

/// The functions of a flavour's interface: name, parameter types, result type.
fn functions(flavour: Flavour) -> Vec<(&'static str, Vec<Ty>, Ty)> {
    let batch = match flavour {
        Flavour::Raw => list(Ty::U8),
        Flavour::Typed => list(event()),
    };
    vec![
        ("init", vec![list(Ty::Tuple(vec![Ty::String, Ty::String]))], result(None, Ty::String)),
        ("process", vec![batch.clone()], result(Some(batch.clone()), stage_error())),
        ("tick", vec![Ty::S64], result(Some(batch), stage_error())),
    ]
}

fn describe(t: &Ty) -> String {
    match t {
        Ty::Bool => "bool".into(),
        Ty::U8 => "u8".into(),
        Ty::S64 => "s64".into(),
        Ty::F64 => "f64".into(),
        Ty::String => "string".into(),
        Ty::List(t) => format!("list<{}>", describe(t)),
        Ty::Tuple(ts) => format!("tuple<{}>", ts.iter().map(describe).collect::<Vec<_>>().join(", ")),
        Ty::Record(fields) => format!("record {{ {} }}", fields.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")),
        Ty::Variant(cases) => format!("variant {{ {} }}", cases.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")),
        Ty::Result(ok, err) => format!(
            "result<{}, {}>",
            ok.as_ref().map_or("_".into(), |t| describe(t)),
            err.as_ref().map_or("_".into(), |t| describe(t))
        ),
    }
}

/// Whether `actual` is `expected`; `Err` says where it differs.
fn matches(types: &TypesRef<'_>, actual: &ComponentValType, expected: &Ty) -> Result<(), String> {
    let wrong = || Err(format!("expected {}", describe(expected)));
    let primitive = |p: &PrimitiveValType| match (p, expected) {
        (PrimitiveValType::Bool, Ty::Bool)
        | (PrimitiveValType::U8, Ty::U8)
        | (PrimitiveValType::S64, Ty::S64)
        | (PrimitiveValType::F64, Ty::F64)
        | (PrimitiveValType::String, Ty::String) => Ok(()),
        _ => wrong(),
    };
    let id = match actual {
        ComponentValType::Primitive(p) => return primitive(p),
        ComponentValType::Type(id) => *id,
    };
    match (&types[id], expected) {
        (ComponentDefinedType::Primitive(p), _) => primitive(p),
        (ComponentDefinedType::List { element, .. }, Ty::List(t)) => {
            matches(types, element, t).map_err(|e| format!("in a list: {e}"))
        }
        (ComponentDefinedType::Tuple(tuple), Ty::Tuple(ts)) if tuple.types.len() == ts.len() => {
            tuple.types.iter().zip(ts).try_for_each(|(a, e)| matches(types, a, e))
        }
        (ComponentDefinedType::Record(record), Ty::Record(fields)) if record.fields.len() == fields.len() => {
            for ((name, ty), (want, expected)) in record.fields.iter().zip(fields) {
                if name.as_str() != *want {
                    return Err(format!("record field `{}` where `{want}` belongs", name.as_str()));
                }
                matches(types, ty, expected).map_err(|e| format!("field `{want}`: {e}"))?;
            }
            Ok(())
        }
        (ComponentDefinedType::Variant(variant), Ty::Variant(cases)) if variant.cases.len() == cases.len() => {
            for ((name, case), (want, expected)) in variant.cases.iter().zip(cases) {
                if name.as_str() != *want {
                    return Err(format!("variant case `{}` where `{want}` belongs", name.as_str()));
                }
                match (&case.ty, expected) {
                    (None, None) => {}
                    (Some(a), Some(e)) => matches(types, a, e).map_err(|e| format!("case `{want}`: {e}"))?,
                    _ => return Err(format!("case `{want}`: wrong payload")),
                }
            }
            Ok(())
        }
        (ComponentDefinedType::Result { ok, err, .. }, Ty::Result(want_ok, want_err)) => {
            for (actual, expected, side) in [(ok, want_ok, "ok"), (err, want_err, "error")] {
                match (actual, expected) {
                    (None, None) => {}
                    (Some(a), Some(e)) => matches(types, a, e).map_err(|e| format!("result {side}: {e}"))?,
                    _ => return Err(format!("result {side}: expected {}", describe(expected_or(expected)))),
                }
            }
            Ok(())
        }
        _ => wrong(),
    }
}

fn expected_or(t: &Option<Box<Ty>>) -> &Ty {
    static NOTHING: Ty = Ty::Tuple(Vec::new());
    t.as_deref().unwrap_or(&NOTHING)
}

/// Checks that the component's export `interface` has the functions of `flavour` with the
/// contract's types; `Err` names the first function that does not and why.
pub(crate) fn check_exports(types: &TypesRef<'_>, interface: &str, flavour: Flavour) -> Result<(), String> {
    let Some(item) = types.component_item_for_export(interface) else {
        return Err(format!("`{interface}` is not exported"));
    };
    let ComponentEntityType::Instance(instance) = item.ty else {
        return Err(format!("`{interface}` is not an instance"));
    };
    let exports = &types[instance].exports;
    for (name, params, expected) in functions(flavour) {
        let Some(item) = exports.get(name) else { return Err(format!("it has no function `{name}`")) };
        let ComponentEntityType::Func(func) = item.ty else { return Err(format!("`{name}` is not a function")) };
        let func = &types[func];
        if func.async_ {
            return Err(format!("`{name}` is async; the contract's functions are not"));
        }
        if func.params.len() != params.len() {
            return Err(format!(
                "`{name}` takes {} parameter(s); the contract says {}",
                func.params.len(),
                params.len()
            ));
        }
        for ((pname, actual), expected) in func.params.iter().zip(&params) {
            matches(types, actual, expected).map_err(|e| format!("`{name}` parameter `{}`: {e}", pname.as_str()))?;
        }
        match &func.result {
            Some(actual) => matches(types, actual, &expected).map_err(|e| format!("`{name}` result: {e}"))?,
            None => return Err(format!("`{name}` returns nothing; the contract says {}", describe(&expected))),
        }
    }
    Ok(())
}
