//! Attribute macros of the kernel: `#[notrace]` and `#[ktest]`.

use proc_macro::TokenStream;
use quote::quote;
use syn::{ItemFn, parse_macro_input};

/// Gives a function no ftrace entry site: the compiler emits no patchable nops
/// for it, so tracing can never call into it. Used by the ftrace machinery,
/// the exception entry and the early boot path, which must not recurse into
/// the tracer or run it before it exists.
#[proc_macro_attribute]
pub fn notrace(attribute: TokenStream, item: TokenStream) -> TokenStream {
    if !attribute.is_empty() {
        return syn::Error::new(proc_macro2::Span::call_site(), "#[notrace] takes no arguments")
            .to_compile_error()
            .into();
    }
    let function = parse_macro_input!(item as ItemFn);
    quote! {
        #[patchable_function_entry(prefix_nops = 0, entry_nops = 0)]
        #function
    }
    .into()
}

/// Keeps a function patchable: never inlined, and its address taken in a
/// `#[used]` static, so the optimiser keeps the standard ELFv2 calling
/// convention. Without it, a function internal to the kernel may lose
/// constant or unused arguments (interprocedural constant propagation, dead
/// argument elimination) or have its result folded into callers, and a
/// replacement written against its source signature would then receive the
/// wrong registers. This is the Rust counterpart of what GCC's
/// `-flive-patching=inline-clone` guarantees for Linux.
#[proc_macro_attribute]
pub fn livepatchable(attribute: TokenStream, item: TokenStream) -> TokenStream {
    if !attribute.is_empty() {
        return syn::Error::new(proc_macro2::Span::call_site(), "#[livepatchable] takes no arguments")
            .to_compile_error()
            .into();
    }
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    let anchor = quote::format_ident!("__LIVEPATCHABLE_{}", name.to_string().to_uppercase());
    quote! {
        #[inline(never)]
        #function

        #[used]
        static #anchor: crate::livepatch::Anchor = crate::livepatch::Anchor(#name as *const ());
    }
    .into()
}

/// Registers an in-kernel test case, collected into the test kernel.
///
/// `#[ktest]` runs the function in its own kernel thread during the suite;
/// `#[ktest(isolated)]` runs it alone in a fresh boot, for tests that crash or
/// fault on purpose; `#[ktest(should_panic)]` (implies isolated) passes only if
/// the kernel panics.
#[proc_macro_attribute]
pub fn ktest(attribute: TokenStream, item: TokenStream) -> TokenStream {
    let mut isolated = false;
    let mut should_panic = false;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("isolated") {
            isolated = true;
            Ok(())
        } else if meta.path.is_ident("should_panic") {
            isolated = true;
            should_panic = true;
            Ok(())
        } else {
            Err(meta.error("expected `isolated` or `should_panic`"))
        }
    });
    parse_macro_input!(attribute with parser);
    let function = parse_macro_input!(item as ItemFn);
    let name = &function.sig.ident;
    let registration = quote::format_ident!("__KTEST_{}", name.to_string().to_uppercase());
    quote! {
        #[cfg(feature = "ktest")]
        #function

        #[cfg(feature = "ktest")]
        #[used]
        #[unsafe(link_section = ".ktests")]
        static #registration: crate::ktest::KernelTest = crate::ktest::KernelTest {
            name: concat!(module_path!(), "::", stringify!(#name)),
            function: #name,
            isolated: #isolated,
            should_panic: #should_panic,
        };
    }
    .into()
}
