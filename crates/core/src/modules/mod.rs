//! Modules: loading `modules:` entries, and the one callback registry all runtimes share.
//!
//! Loading happens in two steps, as in Synapse. At config load, each entry's `module:` name is
//! resolved (native registry; a Python runtime will be the fallback) and its `parse_config` runs,
//! so `check-config` catches bad module configs. At start-up, after the database is ready and
//! before any listener opens, [`instantiate`] builds each module in config order with its own
//! `ModuleApi`; then [`ModuleRegistry::freeze`] ends registration. Dispatch reads the frozen
//! lists without locking.

pub mod auth;
mod host;
pub mod presence;
pub mod repository;
pub mod spam_checker;
pub mod third_party;

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use myelin_module_api::spam::{Callback, SpamCheckerCallbacks};
use myelin_module_api::web::WebResource;
use myelin_module_api::{Module, ModuleApi, ModuleError};
use serde_json::{Map, Value};

use crate::Homeserver;
use crate::config::ConfigError;
use crate::media_storage::{FileSystemBackend, ProviderSettings, StorageProvider};
use std::path::PathBuf;

type ParseFn = fn(Value) -> Result<Box<dyn Any + Send>, myelin_module_api::ConfigError>;
type BuildFn = fn(Box<dyn Any + Send>, &ModuleApi) -> Result<Box<dyn Any + Send + Sync>, ModuleError>;

/// A compiled-in module type, erased so the binary can list them by name.
#[derive(Clone, Copy)]
pub struct NativeModule {
    /// The `module:` name.
    pub name: &'static str,
    parse: ParseFn,
    build: BuildFn,
}

impl NativeModule {
    /// The registry entry for module type `M`.
    pub fn of<M: Module>() -> Self {
        NativeModule {
            name: M::NAME,
            parse: |v| M::parse_config(v).map(|c| Box::new(c) as Box<dyn Any + Send>),
            build: |c, api| {
                let config = *c.downcast::<M::Config>().map_err(|_| ModuleError::other("config type mismatch"))?;
                M::new(config, api).map(|m| Box::new(m) as Box<dyn Any + Send + Sync>)
            },
        }
    }
}

/// A runtime for modules that are not compiled in (Python now, WebAssembly later). Names not in
/// the native registry are handed to it.
pub trait ForeignModules: Send + Sync {
    /// Resolves `name` and runs its `parse_config` on `config`.
    fn load(&self, name: &str, config: Value) -> Result<Box<dyn ForeignModule>, ForeignLoadError>;
    /// The same for a legacy `spam_checker:` entry (built with keyword arguments, its methods
    /// discovered by name).
    fn load_legacy_spam_checker(&self, name: &str, config: Value) -> Result<Box<dyn ForeignModule>, ForeignLoadError>;
    /// Where the foreign modules come from: the `python:` config section (`virtualenv`,
    /// `path`), with relative paths already resolved. Called before any module loads.
    fn configure(&self, settings: &ForeignSettings) -> Result<(), String>;
    /// The same for a `media_storage_providers` entry (a class built as `Class(hs, config)`).
    fn load_storage_provider(
        &self,
        name: &str,
        config: Value,
    ) -> Result<Box<dyn ForeignStorageProvider>, ForeignLoadError>;
}

/// A foreign storage provider whose config is parsed, waiting to be built.
pub trait ForeignStorageProvider: Send {
    /// Builds the provider; `api` is what its `hs.get_module_api()` answers.
    fn instantiate(
        self: Box<Self>,
        api: &ModuleApi,
        media_store: &std::path::Path,
    ) -> Result<Arc<dyn crate::media_storage::StorageBackend>, String>;
}

/// The `python:` config section: which virtualenv's packages and which extra directories
/// Python modules are imported from. Without it, `VIRTUAL_ENV` and `PYTHONPATH` apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForeignSettings {
    /// A virtualenv whose site-packages are added (`pip install` into it is all an admin does).
    pub virtualenv: Option<std::path::PathBuf>,
    /// Extra directories put first on `sys.path`.
    pub path: Vec<std::path::PathBuf>,
}

/// Reads the `python:` section; `base` anchors relative paths.
pub(crate) fn load_foreign_settings(
    section: Option<&Value>,
    base: &std::path::Path,
) -> Result<ForeignSettings, ConfigError> {
    let at = |path: &[&str], message: &str| {
        ConfigError::at(&path.iter().map(|p| p.to_string()).collect::<Vec<_>>(), message)
    };
    let mut settings = ForeignSettings::default();
    let obj = match section {
        None | Some(Value::Null) => return Ok(settings),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(at(&["python"], "expected a mapping")),
    };
    let resolve = |p: &str| {
        let p = std::path::Path::new(p);
        if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
    };
    match obj.get("virtualenv") {
        None | Some(Value::Null) => {}
        Some(Value::String(dir)) => settings.virtualenv = Some(resolve(dir)),
        Some(_) => return Err(at(&["python", "virtualenv"], "expected a string")),
    }
    match obj.get("path") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let Value::String(dir) = item else {
                    return Err(at(&["python", "path", &format!("<item {i}>")], "expected a string"));
                };
                settings.path.push(resolve(dir));
            }
        }
        Some(_) => return Err(at(&["python", "path"], "expected a list of directories")),
    }
    Ok(settings)
}

/// Why a foreign module could not be loaded.
#[derive(Debug)]
pub enum ForeignLoadError {
    /// Its `parse_config` raised a config error at `path` (below `config:`).
    Config {
        /// Path segments below the module's config.
        path: Vec<String>,
        /// The message.
        message: String,
    },
    /// Anything else (import failure, missing class): printed as is, like Synapse's traceback.
    Fatal(String),
}

/// A foreign module whose config is parsed, waiting to be built.
pub trait ForeignModule: Send {
    /// Builds the module with its `ModuleApi`.
    fn instantiate(self: Box<Self>, api: &ModuleApi) -> Result<(), String>;
}

/// The native modules a binary knows, by name, and the fallback runtime for the others.
#[derive(Clone, Default)]
pub struct NativeModules {
    natives: Vec<NativeModule>,
    foreign: Option<Arc<dyn ForeignModules>>,
}

impl NativeModules {
    /// A registry of these modules.
    pub fn new(modules: Vec<NativeModule>) -> Self {
        NativeModules { natives: modules, foreign: None }
    }
    /// Adds the runtime that loads names the native registry lacks.
    pub fn with_foreign(mut self, foreign: Arc<dyn ForeignModules>) -> Self {
        self.foreign = Some(foreign);
        self
    }
    /// Passes the `python:` section to the foreign loader, if this build has one.
    pub(crate) fn configure_foreign(&self, settings: &ForeignSettings) -> Result<(), ConfigError> {
        match &self.foreign {
            Some(foreign) => foreign.configure(settings).map_err(|e| ConfigError::at(&["python".to_owned()], e)),
            None => Ok(()),
        }
    }

    fn find(&self, name: &str) -> Option<NativeModule> {
        self.natives.iter().find(|m| m.name == name).copied()
    }
    /// The known names.
    pub fn names(&self) -> Vec<&'static str> {
        self.natives.iter().map(|m| m.name).collect()
    }
}

enum Kind {
    Native(NativeModule, Box<dyn Any + Send>),
    Foreign(Box<dyn ForeignModule>),
    /// A `media_storage_providers` entry: the built-in `file_system` one (its directory) or a
    /// foreign class.
    StorageProvider(ProviderSettings, Result<PathBuf, Box<dyn ForeignStorageProvider>>),
}

/// A `modules:` entry whose config has been parsed, waiting to be instantiated.
pub struct LoadedModule {
    /// The `module:` string.
    pub name: String,
    kind: Kind,
}

/// Synapse's falsy test for `config:` (missing, null, `{}`, `[]`, `0`, `""`, `false` give `{}`).
fn is_falsy(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Resolves each `modules:` entry and runs its `parse_config`, with Synapse's error paths.
pub(crate) fn load_module_configs(
    value: Option<&Value>,
    natives: &NativeModules,
) -> Result<Vec<LoadedModule>, ConfigError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ConfigError {
                path: vec!["modules".into()],
                lines: vec!["expected a list".into()],
                raw: false,
            });
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = vec!["modules".to_owned(), format!("<item {i}>")];
        let Value::Object(obj) = item else {
            return Err(ConfigError { path: item_path, lines: vec!["expected a mapping".into()], raw: false });
        };
        let mut module_path = item_path.clone();
        module_path.push("module".into());
        let Some(Value::String(name)) = obj.get("module") else {
            return Err(ConfigError { path: module_path, lines: vec!["expected a string".into()], raw: false });
        };
        let raw = obj.get("config").filter(|v| !is_falsy(v)).cloned().unwrap_or(Value::Object(Map::new()));
        let mut config_path = item_path.clone();
        config_path.push("config".into());
        let failed = |path: Vec<String>, message: String| {
            let mut full = config_path.clone();
            full.extend(path);
            ConfigError {
                path: full,
                lines: vec![format!("Failed to parse config for module '{name}':"), message],
                raw: false,
            }
        };
        let kind = match (natives.find(name), &natives.foreign) {
            (Some(native), _) => {
                let parsed = (native.parse)(raw).map_err(|e| failed(e.path, e.message))?;
                Kind::Native(native, parsed)
            }
            (None, Some(foreign)) => match foreign.load(name, raw) {
                Ok(m) => Kind::Foreign(m),
                Err(ForeignLoadError::Config { path, message }) => return Err(failed(path, message)),
                Err(ForeignLoadError::Fatal(text)) => {
                    return Err(ConfigError { path: vec![], lines: vec![text], raw: true });
                }
            },
            (None, None) => {
                return Err(ConfigError {
                    path: module_path,
                    lines: vec![format!(
                        "Unknown module '{name}': no built-in module has this name (known: {})",
                        natives.names().join(", ")
                    )],
                    raw: false,
                });
            }
        };
        out.push(LoadedModule { name: name.clone(), kind });
    }
    Ok(out)
}

/// Loads the legacy `spam_checker:` section (one mapping or a list), after `modules:`, as Synapse.
pub(crate) fn load_legacy_spam_checkers(
    value: Option<&Value>,
    natives: &NativeModules,
) -> Result<Vec<LoadedModule>, ConfigError> {
    let items: Vec<&Value> = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(_)) => vec![value.unwrap_or(&Value::Null)],
        Some(Value::Array(items)) => items.iter().collect(),
        Some(_) => {
            return Err(ConfigError {
                path: vec![],
                lines: vec!["spam_checker syntax is incorrect".into()],
                raw: false,
            });
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let item_path = vec!["spam_checker".to_owned(), format!("<item {i}>")];
        let Value::Object(obj) = item else {
            return Err(ConfigError { path: item_path, lines: vec!["expected a mapping".into()], raw: false });
        };
        let Some(Value::String(name)) = obj.get("module") else {
            let mut p = item_path.clone();
            p.push("module".into());
            return Err(ConfigError { path: p, lines: vec!["expected a string".into()], raw: false });
        };
        let raw = obj.get("config").filter(|v| !is_falsy(v)).cloned().unwrap_or(Value::Object(Map::new()));
        let Some(foreign) = &natives.foreign else {
            return Err(ConfigError {
                path: item_path,
                lines: vec![format!("Legacy spam checker '{name}' needs the Python runtime")],
                raw: false,
            });
        };
        let kind = match foreign.load_legacy_spam_checker(name, raw) {
            Ok(m) => Kind::Foreign(m),
            Err(ForeignLoadError::Config { path, message }) => {
                let mut full = item_path.clone();
                full.push("config".into());
                full.extend(path);
                return Err(ConfigError {
                    path: full,
                    lines: vec![format!("Failed to parse config for module '{name}':"), message],
                    raw: false,
                });
            }
            Err(ForeignLoadError::Fatal(text)) => {
                return Err(ConfigError { path: vec![], lines: vec![text], raw: true });
            }
        };
        out.push(LoadedModule { name: name.clone(), kind });
    }
    Ok(out)
}

/// Loads `media_storage_providers` (or the `backup_media_store_path` shorthand, which names
/// the built-in `file_system` provider), with Synapse's keys, defaults and error paths.
pub(crate) fn load_storage_providers(
    root: &Map<String, Value>,
    natives: &NativeModules,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Vec<LoadedModule>, ConfigError> {
    let at = |path: Vec<String>, message: String| ConfigError { path, lines: vec![message], raw: false };
    let mut entries: Vec<(Vec<String>, &Map<String, Value>)> = Vec::new();
    let backup;
    match root.get("media_storage_providers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = vec!["media_storage_providers".to_owned(), format!("<item {i}>")];
                let Value::Object(obj) = item else { return Err(at(path, "expected a mapping".into())) };
                entries.push((path, obj));
            }
        }
        Some(_) => return Err(at(vec!["media_storage_providers".into()], "expected a list".into())),
    }
    match root.get("backup_media_store_path") {
        None | Some(Value::Null) => {}
        Some(Value::String(dir)) => {
            if !entries.is_empty() {
                return Err(at(vec![], "Cannot use both 'backup_media_store_path' and 'storage_providers'".into()));
            }
            let synchronous = match root.get("synchronous_backup_media_store") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(at(vec!["synchronous_backup_media_store".into()], "expected a boolean".into())),
            };
            backup = serde_json::json!({
                "module": "file_system", "store_local": true, "store_remote": true,
                "store_synchronous": synchronous, "config": {"directory": dir},
            });
            entries.push((vec!["backup_media_store_path".into()], backup.as_object().expect("a mapping")));
        }
        Some(_) => return Err(at(vec!["backup_media_store_path".into()], "expected a string".into())),
    }
    let mut out = Vec::new();
    for (path, obj) in entries {
        let sub = |key: &str| {
            let mut p = path.clone();
            p.push(key.to_owned());
            p
        };
        let Some(Value::String(name)) = obj.get("module") else {
            return Err(at(sub("module"), "expected a string".into()));
        };
        let flag = |key: &str| match obj.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(at(sub(key), "expected a boolean".into())),
        };
        let settings = ProviderSettings {
            store_local: flag("store_local")?,
            store_remote: flag("store_remote")?,
            store_synchronous: flag("store_synchronous")?,
        };
        let raw = obj.get("config").filter(|v| !is_falsy(v)).cloned().unwrap_or(Value::Object(Map::new()));
        let failed = |below: Vec<String>, message: String| {
            let mut full = sub("config");
            full.extend(below);
            ConfigError {
                path: full,
                lines: vec![format!("Failed to parse config for module '{name}':"), message],
                raw: false,
            }
        };
        let backend = if crate::media_storage::is_file_system(name) {
            match raw.get("directory") {
                Some(Value::String(dir)) => {
                    let dir = resolve(dir);
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        failed(vec!["directory".into()], format!("Couldn't create directory {}: {e}", dir.display()))
                    })?;
                    Ok(dir)
                }
                _ => return Err(failed(vec![], "'directory'".into())),
            }
        } else {
            let Some(foreign) = &natives.foreign else {
                return Err(at(sub("module"), format!("Storage provider '{name}' needs the Python runtime")));
            };
            match foreign.load_storage_provider(name, raw) {
                Ok(p) => Err(p),
                Err(ForeignLoadError::Config { path, message }) => return Err(failed(path, message)),
                Err(ForeignLoadError::Fatal(text)) => {
                    return Err(ConfigError { path: vec![], lines: vec![text], raw: true });
                }
            }
        };
        out.push(LoadedModule { name: name.clone(), kind: Kind::StorageProvider(settings, backend) });
    }
    Ok(out)
}

/// Builds the modules in config order. An error is fatal to start-up ("Error during startup").
pub fn instantiate(hs: &Arc<Homeserver>, modules: Vec<LoadedModule>) -> Result<(), String> {
    let host: Arc<dyn myelin_module_api::Host> = Arc::new(host::HostHandle {
        hs: Arc::downgrade(hs),
        http: hs
            .config
            .federation
            .ip_filter
            .web_client_builder(hs.config.insecure_outbound_tls)
            .and_then(|b| b.timeout(std::time::Duration::from_secs(60)).build().map_err(|e| e.to_string()))
            .map_err(|e| format!("HTTP client: {e}"))?,
        ip_filter: hs.config.federation.ip_filter.clone(),
        server_name: hs.server_name().to_owned(),
    });
    for module in modules {
        let api = ModuleApi::new(host.clone(), &module.name);
        match module.kind {
            Kind::Native(native, parsed) => {
                let instance = (native.build)(parsed, &api)
                    .map_err(|e| format!("module '{}' failed to start: {e}", module.name))?;
                hs.modules.instances.lock().unwrap_or_else(|p| p.into_inner()).push(instance);
            }
            Kind::Foreign(foreign) => foreign.instantiate(&api)?,
            Kind::StorageProvider(settings, backend) => {
                let media_store = hs.config.media_store_path.clone();
                let backend: Arc<dyn crate::media_storage::StorageBackend> = match backend {
                    Ok(directory) => Arc::new(FileSystemBackend { media_store, directory }),
                    Err(foreign) => foreign.instantiate(&api, &media_store)?,
                };
                let provider = StorageProvider { name: module.name.clone(), settings, backend };
                hs.modules
                    .with_builder("a storage provider", |b| b.storage_providers.push(provider))
                    .map_err(|e| e.to_string())?;
            }
        }
        tracing::info!(module = %module.name, "loaded module");
    }
    Ok(())
}

/// One registered callback with its per-module counters.
pub(crate) struct Registered<A, R> {
    pub(crate) module: Arc<str>,
    /// The callback's name, as Synapse's (`check_event_for_spam`).
    pub(crate) name: &'static str,
    pub(crate) callback: Callback<A, R>,
    pub(crate) calls: AtomicU64,
    pub(crate) nanos: AtomicU64,
}

impl<A, R> Registered<A, R> {
    pub(crate) fn new(module: &str, name: &'static str, callback: Callback<A, R>) -> Self {
        Registered { module: module.into(), name, callback, calls: AtomicU64::new(0), nanos: AtomicU64::new(0) }
    }
}

/// Declares one dispatch list per callback of a module-api category (its list macro passes
/// the callbacks), with `add` (a module's callback struct, in registration order) and
/// `for_each_metric`: `category!(dispatch_lists, ListsName, CallbacksStruct)`.
macro_rules! dispatch_lists {
    ($lists:ident, $callbacks:ident | $($(#[$doc:meta])* $name:ident: $args:ty => $ret:ty;)*) => {
        /// One list per callback, in registration order.
        #[derive(Default)]
        pub(crate) struct $lists {
            $(pub(crate) $name: Vec<super::Registered<$args, $ret>>,)*
        }

        impl $lists {
            pub(crate) fn add(&mut self, module: &str, cbs: $callbacks) {
                $(if let Some(cb) = cbs.$name {
                    self.$name.push(super::Registered::new(module, stringify!($name), cb));
                })*
            }

            pub(crate) fn for_each_metric(&self, f: &mut dyn FnMut(&str, &str, u64, u64)) {
                use std::sync::atomic::Ordering::Relaxed;
                $(for r in &self.$name {
                    f(r.name, &r.module, r.calls.load(Relaxed), r.nanos.load(Relaxed));
                })*
            }
        }
    };
}
pub(crate) use dispatch_lists;

/// The per-callback lists, in registration (config) order.
#[derive(Default)]
pub(crate) struct Callbacks {
    pub(crate) spam: spam_checker::SpamLists,
    pub(crate) rules: third_party::RulesLists,
    pub(crate) account_data: repository::AccountDataLists,
    pub(crate) media: repository::MediaLists,
    pub(crate) ratelimit: repository::RatelimitLists,
    pub(crate) validity: third_party::ValidityLists,
    pub(crate) federation: repository::FederationLists,
    pub(crate) presence_router: presence::PresenceRouterLists,
    pub(crate) unsigned: presence::UnsignedLists,
    pub(crate) auth: auth::AuthLists,
    /// `media_storage_providers`, in config order.
    pub(crate) storage_providers: Vec<StorageProvider>,
    /// Web resources by exact path: `(module, resource)`.
    pub(crate) web: HashMap<String, (Arc<str>, Arc<dyn WebResource>)>,
}

/// Where modules register and where services dispatch.
pub struct ModuleRegistry {
    /// Collects registrations during start-up; `None` once frozen.
    building: Mutex<Option<Callbacks>>,
    /// The lists dispatch reads: set once by [`ModuleRegistry::freeze`], then read lock-free.
    /// An `Arc` so background work (`on_new_event`) can hold them past a request.
    frozen: OnceLock<Arc<Callbacks>>,
    /// Module instances, kept alive for the server's lifetime.
    instances: Mutex<Vec<Box<dyn Any + Send + Sync>>>,
}

impl Default for ModuleRegistry {
    fn default() -> Self {
        ModuleRegistry {
            building: Mutex::new(Some(Callbacks::default())),
            frozen: OnceLock::new(),
            instances: Mutex::new(Vec::new()),
        }
    }
}

/// API roots whose handlers own every path below them: a module resource registered under one
/// can never be reached (Synapse's leaf resources behave the same way).
pub const BUILTIN_ROOTS: &[&str] =
    &["/_matrix/client", "/_matrix/federation", "/_matrix/key", "/_matrix/media", "/_synapse/admin", "/health"];

impl ModuleRegistry {
    fn with_builder<T>(&self, what: &'static str, f: impl FnOnce(&mut Callbacks) -> T) -> Result<T, ModuleError> {
        let mut guard = self.building.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(b) => Ok(f(b)),
            None => Err(ModuleError::RegisteredAfterStartup(what)),
        }
    }

    pub(crate) fn register_spam(&self, module: &str, cbs: SpamCheckerCallbacks) -> Result<(), ModuleError> {
        self.with_builder("spam checker callbacks", |b| b.spam.add(module, cbs))
    }

    pub(crate) fn register_third_party(
        &self,
        module: &str,
        cbs: myelin_module_api::third_party::ThirdPartyRulesCallbacks,
    ) -> Result<(), ModuleError> {
        self.with_builder("third-party rules callbacks", |b| b.rules.add(module, cbs))
    }

    pub(crate) fn register_password_auth(
        &self,
        module: &str,
        cbs: myelin_module_api::auth::PasswordAuthProviderCallbacks,
    ) -> Result<(), ModuleError> {
        self.with_builder("password auth provider callbacks", |b| b.auth.add(module, cbs))
    }

    pub(crate) fn register_federation(
        &self,
        module: &str,
        cbs: myelin_module_api::federation::FederationCallbacks,
    ) -> Result<(), ModuleError> {
        self.with_builder("federation callbacks", |b| b.federation.add(module, cbs))
    }

    pub(crate) fn register_account_data(
        &self,
        module: &str,
        cbs: myelin_module_api::repository::AccountDataCallbacks,
    ) -> Result<(), ModuleError> {
        self.with_builder("account data callbacks", |b| b.account_data.add(module, cbs))
    }

    pub(crate) fn register_media_repository(
        &self,
        module: &str,
        cbs: myelin_module_api::repository::MediaRepositoryCallbacks,
    ) -> Result<(), ModuleError> {
        self.with_builder("media repository callbacks", |b| b.media.add(module, cbs))
    }

    pub(crate) fn register_ratelimit(
        &self,
        module: &str,
        cbs: myelin_module_api::repository::RatelimitCallbacks,
    ) -> Result<(), ModuleError> {
        self.with_builder("ratelimit callbacks", |b| b.ratelimit.add(module, cbs))
    }

    pub(crate) fn register_presence_router(
        &self,
        module: &str,
        cbs: myelin_module_api::presence::PresenceRouterCallbacks,
    ) -> Result<(), ModuleError> {
        self.with_builder("presence router callbacks", |b| b.presence_router.add(module, cbs))
    }

    pub(crate) fn register_unsigned(
        &self,
        module: &str,
        cbs: myelin_module_api::presence::UnsignedCallbacks,
    ) -> Result<(), ModuleError> {
        self.with_builder("unsigned-fields callbacks", |b| b.unsigned.add(module, cbs))
    }

    pub(crate) fn register_account_validity(
        &self,
        module: &str,
        cbs: myelin_module_api::third_party::AccountValidityCallbacks,
    ) -> Result<(), ModuleError> {
        self.with_builder("account validity callbacks", |b| {
            // The legacy hooks replace the built-in account validity: one module each (Synapse).
            let taken = [
                ("on_legacy_send_mail", cbs.on_legacy_send_mail.is_some(), b.validity.on_legacy_send_mail.is_empty()),
                ("on_legacy_renew", cbs.on_legacy_renew.is_some(), b.validity.on_legacy_renew.is_empty()),
                (
                    "on_legacy_admin_request",
                    cbs.on_legacy_admin_request.is_some(),
                    b.validity.on_legacy_admin_request.is_empty(),
                ),
            ];
            if let Some((name, _, _)) = taken.iter().find(|(_, new, free)| *new && !*free) {
                return Err(ModuleError::other(format!("Tried to register {name} twice")));
            }
            b.validity.add(module, cbs);
            Ok(())
        })?
    }

    pub(crate) fn register_web(
        &self,
        module: &str,
        path: &str,
        resource: Arc<dyn WebResource>,
    ) -> Result<(), ModuleError> {
        self.with_builder("a web resource", |b| {
            if let Some((first, _)) = b.web.get(path) {
                tracing::warn!(
                    "Module {module} tried to register a web resource for path {path} but another module \
                     ({first}) has already registered a resource for this path."
                );
                return;
            }
            for root in BUILTIN_ROOTS {
                if path == *root {
                    tracing::warn!(
                        "Module {module} registered a web resource at {path}, which replaces Myelin's whole \
                         {root} API (Synapse behaves the same). This is almost certainly a mistake."
                    );
                } else if path.starts_with(&format!("{root}/")) {
                    tracing::warn!(
                        "Module {module} registered a web resource at {path}, under the built-in API root \
                         {root}: it will never be reached (as in Synapse). Use /_synapse/client/<module>/... instead."
                    );
                }
            }
            b.web.insert(path.to_owned(), (module.into(), resource));
        })
    }

    /// Ends registration; later `register_*` calls fail with "after startup".
    pub fn freeze(&self) {
        let built = self.building.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(built) = built {
            let _ = self.frozen.set(Arc::new(built));
        }
    }

    pub(crate) fn callbacks(&self) -> &Arc<Callbacks> {
        static EMPTY: OnceLock<Arc<Callbacks>> = OnceLock::new();
        self.frozen.get().unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }

    /// Runs `on_new_event` in the background: the request that stored the event does not wait.
    pub(crate) fn spawn_on_new_event(
        &self,
        event: myelin_module_api::EventView,
        state: Vec<myelin_module_api::EventView>,
    ) {
        let callbacks = self.callbacks().clone();
        tokio::spawn(async move { third_party::on_new_event(&callbacks, &event, &state).await });
    }

    /// The module resource serving `path`, if any: the one registered at exactly `path`, else
    /// the nearest registered ancestor that serves subpaths (a Twisted resource tree, whose
    /// children or leaf `postpath` answer, as on Synapse). Below a built-in API root only a
    /// module that registered the root itself is reachable (it replaced that API); anything
    /// registered deeper is shadowed by the built-in handlers, as in Synapse.
    pub fn web_resource(&self, path: &str) -> Option<Arc<dyn WebResource>> {
        let web = &self.callbacks().web;
        if web.is_empty() {
            return None;
        }
        if let Some(root) = BUILTIN_ROOTS.iter().find(|root| path.starts_with(&format!("{root}/"))) {
            return web.get(*root).map(|(_, r)| r.clone());
        }
        if let Some((_, resource)) = web.get(path) {
            return Some(resource.clone());
        }
        let mut prefix = path;
        while let Some(cut) = prefix.rfind('/').filter(|&i| i > 0) {
            prefix = &prefix[..cut];
            if let Some((_, resource)) = web.get(prefix) {
                return resource.serves_subpaths().then(|| resource.clone());
            }
        }
        None
    }

    /// Per-module, per-callback call counts and time, as two OpenMetrics counter families
    /// (appended to the process's metrics).
    pub fn metrics_text(&self) -> String {
        let (mut calls_out, mut seconds_out) = (
            String::from(
                "# HELP myelin_module_callback_calls Module callback calls.\n# TYPE myelin_module_callback_calls counter\n",
            ),
            String::from(
                "# HELP myelin_module_callback_seconds Time spent in module callbacks.\n# TYPE myelin_module_callback_seconds counter\n",
            ),
        );
        let callbacks = self.callbacks();
        let mut each = |callback: &str, module: &str, calls: u64, nanos: u64| {
            let labels =
                format!("module=\"{}\",callback=\"{callback}\"", module.replace('\\', "\\\\").replace('"', "\\\""));
            calls_out.push_str(&format!("myelin_module_callback_calls_total{{{labels}}} {calls}\n"));
            seconds_out
                .push_str(&format!("myelin_module_callback_seconds_total{{{labels}}} {:.9}\n", nanos as f64 / 1e9));
        };
        callbacks.spam.for_each_metric(&mut each);
        callbacks.rules.for_each_metric(&mut each);
        callbacks.validity.for_each_metric(&mut each);
        callbacks.account_data.for_each_metric(&mut each);
        callbacks.media.for_each_metric(&mut each);
        callbacks.ratelimit.for_each_metric(&mut each);
        callbacks.presence_router.for_each_metric(&mut each);
        callbacks.unsigned.for_each_metric(&mut each);
        callbacks.federation.for_each_metric(&mut each);
        calls_out + &seconds_out
    }
}

/// [`invoke`] for callbacks whose failure Synapse logs and treats as no answer: an error or
/// panic is logged (module, callback, error) and gives `None`.
pub(crate) async fn invoke_logged<A, R>(reg: &Registered<A, R>, args: A) -> Option<R> {
    invoke(reg, args)
        .await
        .map_err(|e| tracing::warn!(module = %reg.module, callback = reg.name, error = %e, "module callback failed"))
        .ok()
}

/// Calls one registered callback: counts and times it under its module, and turns a panic into
/// an error, so a module's bug costs only the request that triggered it. Every dispatcher
/// (spam checker, third-party rules, auth) goes through here.
pub(crate) async fn invoke<A, R>(reg: &Registered<A, R>, args: A) -> Result<R, ModuleError> {
    use futures::FutureExt;
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let span = tracing::info_span!("module_callback", module = %reg.module, callback = reg.name);
    let outcome =
        match span.in_scope(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (reg.callback)(args)))) {
            Ok(future) => std::panic::AssertUnwindSafe(future.instrument(span)).catch_unwind().await,
            Err(panic) => Err(panic),
        };
    reg.calls.fetch_add(1, Ordering::Relaxed);
    reg.nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    outcome.unwrap_or_else(|_| Err(ModuleError::Other(format!("module {} panicked", reg.module))))
}
