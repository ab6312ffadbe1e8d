//! Loading Python modules: the `python:` settings, the virtualenv, `ForeignModules`.

use std::sync::{Arc, Mutex, OnceLock};

use myelin_core::modules::{ForeignLoadError, ForeignModule, ForeignModules, ForeignSettings, ForeignStorageProvider};
use myelin_module_api::ModuleApi;
use pyo3::prelude::*;
use serde_json::Value;

use crate::*;

/// The fallback loader: `module:` names that are not native are imported as Python dotted paths.
#[derive(Default)]
pub struct PythonModules {
    runtime: OnceLock<Arc<PythonRuntime>>,
    /// The `python:` config section, read before the interpreter starts.
    settings: Mutex<ForeignSettings>,
}

impl PythonModules {
    /// A loader that starts Python only when a Python module is configured.
    pub fn new() -> Arc<Self> {
        Arc::new(PythonModules::default())
    }

    pub(crate) fn runtime(&self) -> Result<Arc<PythonRuntime>, String> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt.clone());
        }
        let settings = self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let rt = PythonRuntime::start(&settings)?;
        Ok(self.runtime.get_or_init(|| rt).clone())
    }
}

impl ForeignModules for PythonModules {
    fn load(&self, name: &str, config: Value) -> Result<Box<dyn ForeignModule>, ForeignLoadError> {
        Ok(Box::new(self.load_with(name, config, false)?))
    }

    fn load_legacy_spam_checker(&self, name: &str, config: Value) -> Result<Box<dyn ForeignModule>, ForeignLoadError> {
        Ok(Box::new(self.load_with(name, config, true)?))
    }

    fn load_storage_provider(
        &self,
        name: &str,
        config: Value,
    ) -> Result<Box<dyn ForeignStorageProvider>, ForeignLoadError> {
        Ok(Box::new(self.load_with(name, config, false)?))
    }

    fn configure(&self, settings: &ForeignSettings) -> Result<(), String> {
        if let Some(venv) = &settings.virtualenv {
            site_packages(venv)?;
        }
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings.clone();
        Ok(())
    }
}

/// A virtualenv's site-packages for the Python Myelin is linked with.
pub(crate) fn site_packages(venv: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let version = Python::attach(|py| py.version_info().major as u32 * 100 + py.version_info().minor as u32);
    let dir = venv.join(format!("lib/python{}.{}/site-packages", version / 100, version % 100));
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!(
            "virtualenv {} has no {} (is it a virtualenv for Python {}.{}, the Python Myelin was built with?)",
            venv.display(),
            dir.strip_prefix(venv).unwrap_or(&dir).display(),
            version / 100,
            version % 100
        ))
    }
}

impl PythonModules {
    pub(crate) fn load_with(&self, name: &str, config: Value, legacy: bool) -> Result<PythonModule, ForeignLoadError> {
        let rt = self.runtime().map_err(ForeignLoadError::Fatal)?;
        let (n, c) = (name.to_owned(), config.to_string());
        let answer = rt
            .call_blocking("load_module", move |py| {
                Ok(vec![to_py(py, &n), to_py(py, &c), legacy.into_pyobject(py)?.to_owned().into_any().unbind()])
            })
            .map_err(ForeignLoadError::Fatal)?;
        if let Some(index) = answer.get("ok").and_then(Value::as_u64) {
            return Ok(PythonModule { name: name.to_owned(), index, runtime: rt });
        }
        if let Some(e) = answer.get("config_error") {
            return Err(ForeignLoadError::Config {
                path: e["path"]
                    .as_array()
                    .map(|p| p.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
                message: e["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Err(ForeignLoadError::Fatal(answer["fatal"].as_str().unwrap_or("unknown error").to_owned()))
    }
}

pub(crate) struct PythonModule {
    name: String,
    index: u64,
    runtime: Arc<PythonRuntime>,
}

impl ForeignModule for PythonModule {
    fn instantiate(self: Box<Self>, api: &ModuleApi) -> Result<(), String> {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let _ = self.runtime.tokio.set(handle);
        }
        let host = PyHost { api: api.clone(), runtime: self.runtime.clone() };
        let (name, index) = (self.name.clone(), self.index);
        let answer = self.runtime.call_blocking("instantiate", move |py| {
            Ok(vec![to_py(py, &name), index.into_pyobject(py)?.into_any().unbind(), Py::new(py, host)?.into_any()])
        })?;
        match answer.get("fatal") {
            Some(tb) => Err(tb.as_str().unwrap_or_default().to_owned()),
            None => Ok(()),
        }
    }
}

impl ForeignStorageProvider for PythonModule {
    fn instantiate(
        self: Box<Self>,
        api: &ModuleApi,
        media_store: &std::path::Path,
    ) -> Result<Arc<dyn myelin_core::media_storage::StorageBackend>, String> {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let _ = self.runtime.tokio.set(handle);
        }
        let host = PyHost { api: api.clone(), runtime: self.runtime.clone() };
        let (name, index, store) = (self.name.clone(), self.index, media_store.to_string_lossy().into_owned());
        let answer = self.runtime.call_blocking("instantiate_storage_provider", move |py| {
            Ok(vec![
                to_py(py, &name),
                index.into_pyobject(py)?.into_any().unbind(),
                Py::new(py, host)?.into_any(),
                to_py(py, &store),
            ])
        })?;
        match answer.get("ok").and_then(Value::as_u64) {
            Some(provider) => Ok(Arc::new(PyStorageBackend { provider, runtime: self.runtime.clone() })),
            None => Err(answer["fatal"].as_str().unwrap_or("unknown error").to_owned()),
        }
    }
}

/// A Python `StorageProvider` instance, by its index in the host's list.
struct PyStorageBackend {
    provider: u64,
    runtime: Arc<PythonRuntime>,
}

impl PyStorageBackend {
    /// Calls `myelin_host.<function>(provider, path, file_info, *more)` and waits for its answer.
    fn call(
        &self,
        function: &'static str,
        path: String,
        info: &myelin_core::media_storage::FileInfo,
        more: Vec<String>,
    ) -> futures::future::BoxFuture<'static, Result<Value, String>> {
        let (provider, info) = (self.provider, info.to_json().to_string());
        let rx = self.runtime.call(function, move |py| {
            let mut args = vec![provider.into_pyobject(py)?.into_any().unbind(), to_py(py, &path), to_py(py, &info)];
            args.extend(more.iter().map(|m| to_py(py, m)));
            Ok(args)
        });
        Box::pin(async move {
            let answer = rx.await.map_err(|_| "the Python thread dropped the call".to_owned())?;
            match module_error(&answer) {
                Some(e) => Err(e.to_string()),
                None => Ok(answer),
            }
        })
    }
}

impl myelin_core::media_storage::StorageBackend for PyStorageBackend {
    fn store_file(
        &self,
        path: String,
        info: myelin_core::media_storage::FileInfo,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let call = self.call("provider_store_file", path, &info, vec![]);
        Box::pin(async move { call.await.map(|_| ()) })
    }

    fn fetch(
        &self,
        path: String,
        info: myelin_core::media_storage::FileInfo,
        dest: std::path::PathBuf,
    ) -> futures::future::BoxFuture<'static, Result<bool, String>> {
        let call = self.call("provider_fetch", path, &info, vec![dest.to_string_lossy().into_owned()]);
        Box::pin(async move { Ok(call.await?["fetched"].as_bool().unwrap_or(false)) })
    }
}
