//! Myelin's embedded CPython host: Synapse's Python modules, unchanged, on Myelin.
//!
//! # Layout
//! - `loader`: [`PythonModules`], the loader core falls back to for `module:` names that are not
//!   native. It starts the interpreter on first use, so servers without Python modules never pay
//!   for it.
//! - `runtime`: `PythonRuntime`, one dedicated thread running an asyncio loop with Twisted's
//!   asyncio reactor installed before any module is imported (`py/myelin_host.py`); module code
//!   runs only there.
//! - `callbacks`: `PyHost`, the object behind the shim's `ModuleApi`; it registers Python
//!   callbacks into the shared registry as ordinary [`myelin_module_api`] callbacks.
//! - `ops`: the `ModuleApi` operations modules call; `web`: Twisted resources as web resources;
//!   `convert`: JSON to Python objects and back.
//! - `py/synapse/`: the compatibility package (`synapse.module_api` and friends).
//!
//! # Key decisions
//! - Work reaches the Python thread through a Rust queue and a wake-up socket the asyncio loop
//!   watches, so a request thread never waits for the GIL (the Python thread holds it while it
//!   runs) and a burst of calls costs one wake-up. Results come back through one-shot channels,
//!   always as JSON text (or bytes for web responses), so no Python object is touched outside
//!   the GIL.
//! - Return values are normalised in Python (`myelin_host.classify`), with Synapse's own rules,
//!   into a small JSON vocabulary that becomes the typed decisions here.
//! - Web resources are served by Twisted itself: each request is fed as HTTP bytes to a real
//!   `twisted.web.server.Site` over an in-memory transport, so 405/`Allow`, HEAD, trailing-slash
//!   404, "Request did not return bytes" and `NOT_DONE_YET` behave as on Synapse.
#![forbid(unsafe_code)]

mod callbacks;
mod convert;
mod loader;
mod ops;
mod runtime;
mod web;

use callbacks::*;
use convert::*;
pub use loader::PythonModules;
use loader::*;
use ops::*;
use runtime::*;
use web::*;

/// The shim and host files, written to a private directory at start-up.
const FILES: &[(&str, &str)] = &[
    ("myelin_host.py", include_str!("../py/myelin_host.py")),
    ("synapse/__init__.py", include_str!("../py/synapse/__init__.py")),
    ("synapse/api/__init__.py", include_str!("../py/synapse/api/__init__.py")),
    ("synapse/api/errors.py", include_str!("../py/synapse/api/errors.py")),
    ("synapse/config/__init__.py", include_str!("../py/synapse/config/__init__.py")),
    ("synapse/config/_base.py", include_str!("../py/synapse/config/_base.py")),
    ("synapse/events/__init__.py", include_str!("../py/synapse/events/__init__.py")),
    ("synapse/events/utils.py", include_str!("../py/synapse/events/utils.py")),
    ("synapse/http/__init__.py", include_str!("../py/synapse/http/__init__.py")),
    ("synapse/http/server.py", include_str!("../py/synapse/http/server.py")),
    ("synapse/http/servlet.py", include_str!("../py/synapse/http/servlet.py")),
    ("synapse/logging/__init__.py", include_str!("../py/synapse/logging/__init__.py")),
    ("synapse/logging/context.py", include_str!("../py/synapse/logging/context.py")),
    ("synapse/media/__init__.py", include_str!("../py/synapse/media/__init__.py")),
    ("synapse/media/_base.py", include_str!("../py/synapse/media/_base.py")),
    ("synapse/media/media_storage.py", include_str!("../py/synapse/media/media_storage.py")),
    ("synapse/media/storage_provider.py", include_str!("../py/synapse/media/storage_provider.py")),
    ("synapse/metrics/__init__.py", include_str!("../py/synapse/metrics/__init__.py")),
    (
        "synapse/metrics/background_process_metrics.py",
        include_str!("../py/synapse/metrics/background_process_metrics.py"),
    ),
    ("synapse/module_api/__init__.py", include_str!("../py/synapse/module_api/__init__.py")),
    ("synapse/module_api/errors.py", include_str!("../py/synapse/module_api/errors.py")),
    ("synapse/module_api/callbacks/__init__.py", include_str!("../py/synapse/module_api/callbacks/__init__.py")),
    ("synapse/module_api/callbacks/federation.py", include_str!("../py/synapse/module_api/callbacks/federation.py")),
    ("synapse/rest/__init__.py", include_str!("../py/synapse/rest/__init__.py")),
    ("synapse/rest/media/__init__.py", include_str!("../py/synapse/rest/media/__init__.py")),
    ("synapse/rest/media/v1/__init__.py", include_str!("../py/synapse/rest/media/v1/__init__.py")),
    ("synapse/rest/media/v1/_base.py", include_str!("../py/synapse/rest/media/v1/_base.py")),
    ("synapse/rest/media/v1/storage_provider.py", include_str!("../py/synapse/rest/media/v1/storage_provider.py")),
    ("synapse/spam_checker_api/__init__.py", include_str!("../py/synapse/spam_checker_api/__init__.py")),
    ("synapse/types/__init__.py", include_str!("../py/synapse/types/__init__.py")),
    ("synapse/util/__init__.py", include_str!("../py/synapse/util/__init__.py")),
    ("synapse/util/caches/__init__.py", include_str!("../py/synapse/util/caches/__init__.py")),
    ("synapse/util/caches/descriptors.py", include_str!("../py/synapse/util/caches/descriptors.py")),
];

#[cfg(test)]
mod tests {
    use myelin_module_api::callbacks::NAMES;

    /// The keyword parameters of the shim's `register_<method>_callbacks`.
    fn shim_parameters(method: &str) -> Vec<String> {
        let shim = include_str!("../py/synapse/module_api/__init__.py");
        let start = shim.find(&format!("def register_{method}_callbacks(")).expect("the shim registers this method");
        let signature = &shim[start..start + shim[start..].find("):").unwrap()];
        signature.split([',', '(', '*']).filter_map(|p| p.trim().strip_suffix("=None")).map(str::to_owned).collect()
    }

    /// module-api's list is the one list: the shim accepts each name, and this host converts
    /// each one's arguments and results (a `"name" =>` arm in `register_spam` or
    /// `register_third_party`).
    #[test]
    fn the_shim_and_the_host_handle_every_callback_module_api_lists() {
        let host = include_str!("callbacks.rs");
        for (method, names) in NAMES {
            let parameters = shim_parameters(method);
            for name in *names {
                assert!(
                    parameters.iter().any(|p| p == name),
                    "register_{method}_callbacks in the shim does not take {name}: {parameters:?}"
                );
                if *name != "auth_checkers" {
                    assert!(
                        host.contains(&format!("\"{name}\" =>"))
                            || host.contains(&format!("\"{name}\" |"))
                            || host.contains(&format!("me.callback(\n                \"{name}\",")),
                        "the Python host does not convert {name}"
                    );
                }
            }
        }
    }
}
