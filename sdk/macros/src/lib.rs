//! The `#[stage]` attribute of `squilla-sdk`. Use it as `squilla_sdk::stage`; this crate is
//! an implementation detail and its output refers to `::squilla_sdk` paths only.

use proc_macro::TokenStream;
use quote::quote;
use syn::spanned::Spanned;

/// Exports a Rust type as the component's stage.
///
/// Put it on the `impl squilla_sdk::Stage for YourType` block. It keeps the block as it is and
/// adds, when compiling for WebAssembly, the exports of the `raw-stage` world that drive
/// `YourType`: one instance of it per worker, created by `Stage::init`.
///
/// A component exports exactly one stage: using the attribute twice in one crate fails to link
/// with duplicate export names.
#[proc_macro_attribute]
pub fn stage(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.into_compile_error().into(),
    }
}

fn expand(attr: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> syn::Result<proc_macro2::TokenStream> {
    if !attr.is_empty() {
        return Err(syn::Error::new(attr.span(), "`#[squilla_sdk::stage]` takes no arguments"));
    }
    let block: syn::ItemImpl = syn::parse2(item.clone()).map_err(|e| {
        syn::Error::new(e.span(), "`#[squilla_sdk::stage]` goes on an `impl Stage for YourType { ... }` block")
    })?;
    let Some((_, trait_path, _)) = &block.trait_ else {
        return Err(syn::Error::new(
            block.self_ty.span(),
            "`#[squilla_sdk::stage]` goes on `impl Stage for YourType`, not on an inherent impl",
        ));
    };
    let is_stage = trait_path.segments.last().is_some_and(|s| s.ident == "Stage");
    if !is_stage {
        return Err(syn::Error::new(trait_path.span(), "`#[squilla_sdk::stage]` expects the `Stage` trait here"));
    }
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new(
            block.generics.span(),
            "a stage type cannot be generic: the component needs one concrete type to export",
        ));
    }
    let ty = &block.self_ty;
    // A stage that defines `state` hands its keyed state over: it exports `keyed-state` too.
    let keyed = block.items.iter().any(|item| matches!(item, syn::ImplItem::Fn(f) if f.sig.ident == "state"));
    let (guest, error, export, extra) = if keyed {
        (
            quote!(::squilla_sdk::__private::KeyedGuest),
            quote!(::squilla_sdk::__private::KeyedWitStageError),
            quote!(::squilla_sdk::__private::export_keyed!(__SquillaExport with_types_in ::squilla_sdk::__private::keyed_bindings);),
            quote! {
                impl ::squilla_sdk::__private::KeyedStateGuest for __SquillaExport {
                    fn snapshot(groups: ::std::vec::Vec<u32>)
                        -> ::core::result::Result<::std::vec::Vec<(u32, ::std::vec::Vec<u8>)>, ::squilla_sdk::__private::KeyedWitStageError>
                    {
                        ::squilla_sdk::__private::snapshot(&__SQUILLA_STAGE, groups).map_err(::core::convert::Into::into)
                    }

                    fn restore(state: ::std::vec::Vec<(u32, ::std::vec::Vec<u8>)>)
                        -> ::core::result::Result<(), ::squilla_sdk::__private::KeyedWitStageError>
                    {
                        ::squilla_sdk::__private::restore(&__SQUILLA_STAGE, state).map_err(::core::convert::Into::into)
                    }
                }
            },
        )
    } else {
        (
            quote!(::squilla_sdk::__private::Guest),
            quote!(::squilla_sdk::__private::WitStageError),
            quote!(::squilla_sdk::__private::export!(__SquillaExport with_types_in ::squilla_sdk::__private::bindings);),
            quote!(),
        )
    };
    Ok(quote! {
        #block

        #[cfg(target_family = "wasm")]
        const _: () = {
            ::std::thread_local! {
                static __SQUILLA_STAGE: ::squilla_sdk::__private::StateCell<#ty> =
                    const { ::squilla_sdk::__private::StateCell::new() };
            }

            struct __SquillaExport;

            impl #guest for __SquillaExport {
                fn init(params: ::std::vec::Vec<(::std::string::String, ::std::string::String)>)
                    -> ::core::result::Result<(), ::std::string::String>
                {
                    ::squilla_sdk::__private::init(&__SQUILLA_STAGE, params)
                }

                fn process(batch: ::std::vec::Vec<u8>) -> ::core::result::Result<::std::vec::Vec<u8>, #error> {
                    ::squilla_sdk::__private::process(&__SQUILLA_STAGE, batch).map_err(::core::convert::Into::into)
                }

                fn tick(now_ms: i64) -> ::core::result::Result<::std::vec::Vec<u8>, #error> {
                    ::squilla_sdk::__private::tick(&__SQUILLA_STAGE, now_ms).map_err(::core::convert::Into::into)
                }
            }

            #extra

            #export
        };
    })
}

#[cfg(test)]
mod tests {
    use quote::quote;

    fn error_of(attr: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> String {
        super::expand(attr, item).expect_err("expansion should fail").to_string()
    }

    #[test]
    fn misuse_is_reported_with_a_message_that_says_what_to_write() {
        assert!(
            error_of(
                quote!(),
                quote!(
                    struct S;
                )
            )
            .contains("goes on an `impl Stage for YourType { ... }` block")
        );
        assert!(error_of(quote!(), quote!(impl S { fn f() {} })).contains("not on an inherent impl"));
        assert!(
            error_of(quote!(), quote!(impl Clone for S { fn clone(&self) -> Self { S } }))
                .contains("expects the `Stage` trait")
        );
        assert!(
            error_of(
                quote!(),
                quote!(
                    impl<T> Stage for S<T> {}
                )
            )
            .contains("cannot be generic")
        );
        assert!(error_of(quote!(fast), quote!(impl Stage for S {})).contains("takes no arguments"));
    }

    #[test]
    fn a_stage_impl_is_kept_and_exported_only_on_wasm() {
        let out = super::expand(quote!(), quote!(impl squilla_sdk::Stage for S {})).unwrap().to_string();
        assert!(out.starts_with("impl squilla_sdk :: Stage for S { }"), "{out}");
        assert!(out.contains("# [cfg (target_family = \"wasm\")]"), "{out}");
        assert!(out.contains("__private :: export !"), "{out}");
        assert!(!out.contains("KeyedStateGuest"), "{out}");
    }

    #[test]
    fn a_stage_that_defines_state_also_exports_keyed_state() {
        let item = quote!(impl Stage for S { fn state(&mut self) -> Option<&mut dyn HandOff> { None } });
        let out = super::expand(quote!(), item).unwrap().to_string();
        assert!(out.contains("KeyedStateGuest for __SquillaExport"), "{out}");
        assert!(out.contains("export_keyed !"), "{out}");
    }
}
