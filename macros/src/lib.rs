//! Attribute macros of the kernel: `#[notrace]`, `#[livepatchable]` and `#[ktest]`.

use proc_macro::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Block, FnArg, ItemFn, Pat, PatIdent, ReturnType, Type, parse_macro_input};

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

/// Makes a function a target live patches may replace, and keeps every
/// caller honest about it: the callers' machine code must call the function
/// with the registers its source signature gives, and must assume nothing
/// about what it does or returns, because a replacement may do anything the
/// signature allows. The expansion:
///
/// - `#[inline(never)]`: every call stays a call;
/// - each argument passes through `core::hint::black_box` on entry, an empty
///   `asm!` that reads and writes memory and takes the value: no argument is
///   dead (dead argument elimination would stop setting its register at
///   call sites), none is returned unchanged, none points at memory the
///   function only reads (callers would keep values in registers across the
///   call);
/// - the body runs in a closure (so `return` and `?` leave the closure, not
///   the function) under `if black_box(true)`, and writes its result into a
///   `MaybeUninit` slot that then passes through `black_box(&mut slot)`; the
///   function returns what the slot holds. LLVM sees a path that skips the
///   body and returns whatever the barrier left: callers cannot propagate a
///   constant result (interprocedural constant propagation), a body that
///   always diverges (`loop {}`, `panic!`) does not make the function
///   `noreturn` (callers keep the code after the call, which a replacement
///   returns to), and with the barriers' memory effects the function is never
///   "pure", so no call is merged with another or deleted when its result is
///   unused. At run time `black_box(true)` is `true`: the body always runs;
/// - its address is taken in a `#[used]` static in the `.klp_livepatchable`
///   section: the function stays "address taken" (LLVM then never rewrites
///   its signature: no argument promotion, no specialised clones), and the
///   livepatch core accepts as a target only a function listed there.
///
/// The calling convention stays the one the signature declares (the Rust ABI
/// of this compiler, or `extern "C"` when written so); a replacement must have
/// exactly the same signature. This is the Rust counterpart of what GCC's
/// `-flive-patching=inline-clone` guarantees for Linux. Only plain
/// non-generic free functions qualify (a generic has no single address, a
/// method's replacement could not be named, a `const` or `async` body is not
/// a call).
#[proc_macro_attribute]
pub fn livepatchable(attribute: TokenStream, item: TokenStream) -> TokenStream {
    if !attribute.is_empty() {
        return syn::Error::new(proc_macro2::Span::call_site(), "#[livepatchable] takes no arguments")
            .to_compile_error()
            .into();
    }
    let function = parse_macro_input!(item as ItemFn);
    match livepatchable_expansion(function) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// The expansion of `#[livepatchable]` (see there).
fn livepatchable_expansion(mut function: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let signature = &function.sig;
    let refuse = |span: proc_macro2::Span, what: &str| {
        Err(syn::Error::new(span, format!("#[livepatchable] cannot apply to {what}: it must be a plain free function")))
    };
    if let Some(token) = &signature.constness {
        return refuse(token.span, "a const fn");
    }
    if let Some(token) = &signature.asyncness {
        return refuse(token.span, "an async fn");
    }
    if !signature.generics.params.is_empty() {
        return refuse(signature.generics.span(), "a generic function (it has no single address)");
    }
    let output = match &signature.output {
        ReturnType::Default => quote! { () },
        ReturnType::Type(_, ty) => {
            if let Type::ImplTrait(_) = **ty {
                return refuse(ty.span(), "a function returning `impl Trait`");
            }
            quote! { #ty }
        }
    };
    // Every argument is bound to its pattern through the barrier. A plain
    // name stays the parameter's name (so the DWARF, and the signature `klp
    // patchable` shows, say `value: u64`); any other pattern gets a fresh one.
    let mut bindings = Vec::new();
    for (index, input) in function.sig.inputs.iter_mut().enumerate() {
        let FnArg::Typed(argument) = input else {
            return refuse(input.span(), "a method");
        };
        let fresh = match &*argument.pat {
            Pat::Ident(PatIdent { by_ref: None, subpat: None, ident, .. }) => ident.clone(),
            _ => quote::format_ident!("livepatchable_argument_{}", index),
        };
        let pattern = core::mem::replace(
            &mut *argument.pat,
            Pat::Ident(PatIdent {
                attrs: Vec::new(),
                by_ref: None,
                mutability: None,
                ident: fresh.clone(),
                subpat: None,
            }),
        );
        bindings.push(quote! { let #pattern = ::core::hint::black_box(#fresh); });
    }
    let body = &function.block;
    // The body runs only if `black_box(true)`, which LLVM cannot evaluate: as
    // far as it can tell, a path skips the body and returns whatever the
    // barrier on `livepatchable_result` left in it. So the function returns
    // even if its body never does (no `noreturn` inferred, callers keep the
    // code after the call), and its result is never known. At run time the
    // body always runs and writes the result.
    let block: Block = syn::parse2(quote! {{
        #(#bindings)*
        let mut livepatchable_result = ::core::mem::MaybeUninit::<#output>::uninit();
        if ::core::hint::black_box(true) {
            #[allow(clippy::redundant_closure_call)]
            livepatchable_result.write((|| -> #output #body)());
        }
        ::core::hint::black_box(&mut livepatchable_result);
        // SAFETY: `black_box` returns its argument, so the body ran and wrote the result.
        unsafe { livepatchable_result.assume_init() }
    }})?;
    *function.block = block;
    let name = &function.sig.ident;
    let anchor = quote::format_ident!("__LIVEPATCHABLE_{}", name.to_string().to_uppercase());
    Ok(quote! {
        #[inline(never)]
        #function

        #[used]
        #[unsafe(link_section = ".klp_livepatchable")]
        static #anchor: crate::livepatch::Anchor = crate::livepatch::Anchor(#name as *const ());
    })
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
