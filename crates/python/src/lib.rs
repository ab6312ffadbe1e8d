//! Myelin's embedded CPython host: Synapse's Python modules, unchanged, on Myelin.
//!
//! # Layout
//! - [`PythonModules`]: the loader core falls back to for `module:` names that are not native.
//!   It starts the interpreter on first use, so servers without Python modules never pay for it.
//! - `PythonRuntime`: one dedicated thread runs an asyncio loop with Twisted's asyncio reactor
//!   installed before any module is imported (`py/myelin_host.py`); module code runs only there.
//! - `PyHost`: the object behind the shim's `ModuleApi`; it registers Python callbacks into the
//!   shared registry as ordinary [`myelin_module_api`] callbacks.
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

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use myelin_core::modules::{ForeignLoadError, ForeignModule, ForeignModules, ForeignSettings};
use myelin_module_api::spam::*;
use myelin_module_api::web::{Request, Response, WebResource};
use myelin_module_api::{EventView, ModuleApi, ModuleError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyCFunction, PyDict, PyFloat, PyList, PyString, PyTuple};
use serde_json::{Map, Value, json};

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
    ("synapse/metrics/__init__.py", include_str!("../py/synapse/metrics/__init__.py")),
    (
        "synapse/metrics/background_process_metrics.py",
        include_str!("../py/synapse/metrics/background_process_metrics.py"),
    ),
    ("synapse/module_api/__init__.py", include_str!("../py/synapse/module_api/__init__.py")),
    ("synapse/module_api/errors.py", include_str!("../py/synapse/module_api/errors.py")),
    ("synapse/spam_checker_api/__init__.py", include_str!("../py/synapse/spam_checker_api/__init__.py")),
    ("synapse/types/__init__.py", include_str!("../py/synapse/types/__init__.py")),
    ("synapse/util/__init__.py", include_str!("../py/synapse/util/__init__.py")),
];

/// Work for the Python thread: runs there, in the reactor, with the GIL held.
type Job = Box<dyn FnOnce(Python<'_>) -> PyResult<()> + Send>;

/// The interpreter thread and its asyncio loop.
struct PythonRuntime {
    /// `myelin_host`, imported on the Python thread.
    host: Py<PyModule>,
    /// Jobs for the Python thread. Submitting never takes the GIL: the job is queued and, if the
    /// thread has not been woken since its last drain, one byte goes down `wake`.
    jobs: std::sync::mpsc::Sender<Job>,
    /// The writing end of a socket pair whose other end the asyncio loop watches.
    wake: std::os::unix::net::UnixStream,
    /// Set between a wake-up byte being written and the Python thread draining the queue, so a
    /// burst of submissions costs one wake-up.
    wake_pending: Arc<AtomicBool>,
    /// Where the shim lives; removed when the runtime goes.
    _dir: tempfile::TempDir,
    /// Tokio, for the async ModuleApi calls Python makes; set when modules are instantiated.
    tokio: OnceLock<tokio::runtime::Handle>,
}

fn py_err(e: PyErr) -> String {
    Python::attach(|py| {
        let tb = e.traceback(py).and_then(|t| t.format().ok()).unwrap_or_default();
        format!("{tb}{e}")
    })
}

/// How long the Python thread waits, GIL released, for another job after finishing one, before
/// going back to the asyncio loop. Under load the next call is usually that close, and taking it
/// from the queue directly skips a socket wake-up and a loop iteration.
const LINGER: Duration = Duration::from_micros(50);

/// How long of [`LINGER`] is spent spinning before parking: a job that comes that soon then
/// costs its submitter no futex wake-up.
const SPIN: Duration = Duration::from_micros(15);

/// The next job within [`LINGER`], spinning for [`SPIN`] first.
fn next_job(jobs: &std::sync::mpsc::Receiver<Job>) -> Result<Job, std::sync::mpsc::RecvTimeoutError> {
    let start = Instant::now();
    while start.elapsed() < SPIN {
        match jobs.try_recv() {
            Ok(job) => return Ok(job),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return Err(std::sync::mpsc::RecvTimeoutError::Disconnected);
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    jobs.recv_timeout(LINGER - SPIN)
}

/// The most time one drain may take before the loop gets a turn (timers, Twisted I/O).
const DRAIN_BUDGET: Duration = Duration::from_millis(2);

/// The asyncio reader callback: empties the wake-up socket, then runs queued jobs, lingering
/// briefly for more, within [`DRAIN_BUDGET`].
fn drainer(
    py: Python<'_>,
    reader: std::os::unix::net::UnixStream,
    jobs: std::sync::mpsc::Receiver<Job>,
    wake_pending: Arc<AtomicBool>,
) -> PyResult<Bound<'_, PyCFunction>> {
    let run = |py: Python<'_>, job: Job| {
        if let Err(e) = job(py) {
            let tb = e.traceback(py).and_then(|t| t.format().ok()).unwrap_or_default();
            tracing::error!(error = %e, traceback = %tb, "a job on the Python thread failed");
        }
    };
    // Only the Python thread drains, so this lock is never contended; closures must be Sync.
    let jobs = Mutex::new(jobs);
    PyCFunction::new_closure(py, None, None, move |args: &Bound<'_, PyTuple>, _kw| -> PyResult<()> {
        let py = args.py();
        let next = || jobs.lock().unwrap_or_else(|p| p.into_inner()).try_recv();
        let mut buf = [0u8; 64];
        // Non-blocking: stops at WouldBlock once the socket is empty.
        while matches!((&reader).read(&mut buf), Ok(n) if n == buf.len()) {}
        // `wake_pending` stays set while this drain runs, so submitters skip the socket.
        let deadline = Instant::now() + DRAIN_BUDGET;
        loop {
            while let Ok(job) = next() {
                run(py, job);
                if Instant::now() > deadline {
                    // Come back after the loop's other work, flag still set.
                    return py.import("myelin_host")?.call_method0("rewake").map(drop);
                }
            }
            match py.detach(|| next_job(&jobs.lock().unwrap_or_else(|p| p.into_inner()))) {
                Ok(job) => run(py, job),
                Err(_) => break,
            }
        }
        // A job queued after this point writes a new byte; one queued before it is taken here.
        wake_pending.store(false, Ordering::SeqCst);
        while let Ok(job) = next() {
            run(py, job);
        }
        Ok(())
    })
}

impl PythonRuntime {
    fn start(settings: &ForeignSettings) -> Result<Arc<Self>, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        for (path, text) in FILES {
            let p = dir.path().join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&p, text).map_err(|e| e.to_string())?;
        }
        let shim = dir.path().to_string_lossy().into_owned();
        // The configured virtualenv, else the one the server was started in.
        let venv = settings.virtualenv.clone().or_else(|| std::env::var_os("VIRTUAL_ENV").map(Into::into));
        let site = venv.as_deref().map(site_packages).transpose()?;
        let extra: Vec<String> = settings.path.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let (wake, reader) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        wake.set_nonblocking(true).map_err(|e| e.to_string())?;
        reader.set_nonblocking(true).map_err(|e| e.to_string())?;
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let wake_pending = Arc::new(AtomicBool::new(false));
        let pending = wake_pending.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Result<Py<PyModule>, String>>();
        std::thread::Builder::new()
            .name("python".into())
            .spawn(move || {
                let started = Python::attach(|py| -> PyResult<Py<PyModule>> {
                    let sys = py.import("sys")?;
                    let path = sys.getattr("path")?;
                    path.call_method1("insert", (0, shim))?;
                    for (i, dir) in extra.iter().enumerate() {
                        path.call_method1("insert", (i + 1, dir))?;
                    }
                    if let Some(site) = site {
                        // As `pip install` put them there, .pth files included.
                        py.import("site")?.call_method1("addsitedir", (site.to_string_lossy().into_owned(),))?;
                    }
                    let host = py.import("myelin_host")?;
                    host.call_method0("start")?;
                    let fd = reader.as_raw_fd();
                    host.call_method1("watch", (fd, drainer(py, reader, queue, pending)?))?;
                    Ok(host.unbind())
                });
                match started {
                    Ok(host) => {
                        let run = Python::attach(|py| host.clone_ref(py));
                        let _ = tx.send(Ok(run));
                        Python::attach(|py| {
                            if let Err(e) = host.bind(py).call_method0("run") {
                                tracing::error!(error = %e, "the Python module thread stopped");
                            }
                        });
                    }
                    Err(e) => {
                        let _ = tx.send(Err(py_err(e)));
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let host = rx.recv().map_err(|e| e.to_string())??;
        Ok(Arc::new(PythonRuntime { host, jobs, wake, wake_pending, _dir: dir, tokio: OnceLock::new() }))
    }

    /// Runs `f` on the Python thread, in the reactor, with the GIL. Never takes the GIL here.
    fn submit(&self, f: impl FnOnce(Python<'_>) -> PyResult<()> + Send + 'static) {
        if self.jobs.send(Box::new(f)).is_err() {
            tracing::error!("the Python thread has stopped; a module call was dropped");
            return;
        }
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            // A full socket buffer already means a pending wake-up, so WouldBlock is fine.
            let _ = (&self.wake).write(&[1]);
        }
    }

    /// Calls `myelin_host.<function>(*args, done)`; the receiver gets what `done` is given.
    fn call(
        self: &Arc<Self>,
        function: &'static str,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Vec<Py<PyAny>>> + Send + 'static,
    ) -> futures::channel::oneshot::Receiver<Value> {
        let (tx, rx) = futures::channel::oneshot::channel::<Value>();
        let me = self.clone();
        self.submit(move |py| {
            let tx = Mutex::new(Some(tx));
            let done = PyCFunction::new_closure(py, None, None, move |a: &Bound<'_, PyTuple>, _kw| -> PyResult<()> {
                let answer = from_python(&a.get_item(0)?);
                if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = tx.send(answer);
                }
                Ok(())
            })?;
            let mut all = args(py)?;
            all.push(done.into_any().unbind());
            me.host.bind(py).call_method1(function, PyTuple::new(py, all)?)?;
            Ok(())
        });
        rx
    }

    fn call_blocking(
        self: &Arc<Self>,
        function: &'static str,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Vec<Py<PyAny>>> + Send + 'static,
    ) -> Result<Value, String> {
        let rx = self.call(function, args);
        futures::executor::block_on(rx).map_err(|_| "the Python thread dropped the call".to_owned())
    }
}

/// JSON data as the Python objects `json.loads` would give, built directly.
fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or_default().into_pyobject(py)?.into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            PyList::new(py, items.iter().map(|v| to_python(py, v)).collect::<PyResult<Vec<_>>>()?)?.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_python(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

/// A Python answer as JSON data: dicts, lists, tuples and scalars map across; any other object
/// becomes its `str()`, as `json.dumps(default=str)` would have made it.
fn from_python(object: &Bound<'_, PyAny>) -> Value {
    if object.is_none() {
        Value::Null
    } else if let Ok(b) = object.cast::<PyBool>() {
        Value::Bool(b.is_true())
    } else if let Ok(i) = object.extract::<i64>() {
        Value::from(i)
    } else if let Ok(f) = object.cast::<PyFloat>() {
        Value::from(f.value())
    } else if let Ok(s) = object.cast::<PyString>() {
        Value::String(s.to_string_lossy().into_owned())
    } else if let Ok(d) = object.cast::<PyDict>() {
        Value::Object(
            d.iter().map(|(k, v)| (k.str().map(|s| s.to_string()).unwrap_or_default(), from_python(&v))).collect(),
        )
    } else if let Ok(l) = object.cast::<PyList>() {
        Value::Array(l.iter().map(|v| from_python(&v)).collect())
    } else if let Ok(t) = object.cast::<PyTuple>() {
        Value::Array(t.iter().map(|v| from_python(&v)).collect())
    } else {
        Value::String(object.str().map(|s| s.to_string()).unwrap_or_default())
    }
}

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

    fn runtime(&self) -> Result<Arc<PythonRuntime>, String> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt.clone());
        }
        let settings = self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let rt = PythonRuntime::start(&settings)?;
        Ok(self.runtime.get_or_init(|| rt).clone())
    }
}

fn to_py(py: Python<'_>, s: &str) -> Py<PyAny> {
    s.into_pyobject(py).map(|o| o.into_any().unbind()).unwrap_or_else(|_| py.None())
}

impl ForeignModules for PythonModules {
    fn load(&self, name: &str, config: Value) -> Result<Box<dyn ForeignModule>, ForeignLoadError> {
        self.load_with(name, config, false)
    }

    fn load_legacy_spam_checker(&self, name: &str, config: Value) -> Result<Box<dyn ForeignModule>, ForeignLoadError> {
        self.load_with(name, config, true)
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
fn site_packages(venv: &std::path::Path) -> Result<std::path::PathBuf, String> {
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
    fn load_with(&self, name: &str, config: Value, legacy: bool) -> Result<Box<dyn ForeignModule>, ForeignLoadError> {
        let rt = self.runtime().map_err(ForeignLoadError::Fatal)?;
        let (n, c) = (name.to_owned(), config.to_string());
        let answer = rt
            .call_blocking("load_module", move |py| {
                Ok(vec![to_py(py, &n), to_py(py, &c), legacy.into_pyobject(py)?.to_owned().into_any().unbind()])
            })
            .map_err(ForeignLoadError::Fatal)?;
        if let Some(index) = answer.get("ok").and_then(Value::as_u64) {
            return Ok(Box::new(PythonModule { name: name.to_owned(), index, runtime: rt }));
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

struct PythonModule {
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

/// The host object behind the shim's `ModuleApi`.
#[pyclass]
struct PyHost {
    api: ModuleApi,
    runtime: Arc<PythonRuntime>,
}

fn module_error(v: &Value) -> Option<ModuleError> {
    if let Some(m) = v.get("matrix") {
        return Some(ModuleError::Matrix {
            status: m["status"].as_u64().unwrap_or(500) as u16,
            errcode: m["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
            message: m["error"].as_str().unwrap_or_default().to_owned(),
            fields: m["fields"].as_object().cloned().unwrap_or_default(),
        });
    }
    v.get("exception").map(|tb| ModuleError::Other(tb.as_str().unwrap_or_default().to_owned()))
}

/// The user ID an auth checker vouched for, if any.
fn vouched_user(v: Value) -> Result<Option<String>, ModuleError> {
    if let Some(e) = module_error(&v) {
        return Err(e);
    }
    if let Some(w) = v.get("warning").and_then(Value::as_str) {
        tracing::warn!("{w}");
    }
    Ok(v["user"].as_str().map(str::to_owned))
}

fn decision(v: Value) -> Result<Decision, ModuleError> {
    if let Some(e) = module_error(&v) {
        return Err(e);
    }
    if let Some(w) = v.get("warning").and_then(Value::as_str) {
        tracing::warn!("{w}");
    }
    match v.get("deny") {
        Some(code) => Ok(Decision::deny_with(
            code.as_str().unwrap_or("M_FORBIDDEN"),
            v["fields"].as_object().cloned().unwrap_or_default(),
        )),
        None => Ok(Decision::Allow),
    }
}

impl PyHost {
    /// A callback that runs `function` on the Python thread with `args` (as Python data), normalising
    /// the result as `kind` requires.
    fn invoke(
        &self,
        kind: &'static str,
        function: &Arc<Py<PyAny>>,
        args: Value,
    ) -> BoxFuture<'static, Result<Value, ModuleError>> {
        let f = function.clone();
        let rx = self
            .runtime
            .call("invoke", move |py| Ok(vec![to_py(py, kind), f.clone_ref(py), to_python(py, &args)?.unbind()]));
        Box::pin(async move { rx.await.map_err(|_| ModuleError::other("the Python thread dropped the call")) })
    }

    fn callback<A: Send + 'static, R: Send + 'static>(
        self: &Arc<Self>,
        kind: &'static str,
        function: Py<PyAny>,
        args: impl Fn(A) -> Value + Send + Sync + 'static,
        result: fn(Value) -> Result<R, ModuleError>,
    ) -> Callback<A, R> {
        let me = self.clone();
        let function = Arc::new(function);
        Arc::new(move |a: A| {
            let call = me.invoke(kind, &function, args(a));
            Box::pin(async move { result(call.await?) })
        })
    }
}

#[pymethods]
impl PyHost {
    fn server_name(&self) -> String {
        self.api.server_name().to_owned()
    }

    /// The callbacks Myelin calls for `register_<method>_callbacks` (module-api's list).
    fn callback_names(&self, method: &str) -> Vec<&'static str> {
        myelin_module_api::callbacks::names(method).to_vec()
    }

    fn public_baseurl(&self) -> String {
        String::new()
    }

    /// Adds one callback to the shared registry; `arity` picks Synapse's argument forms.
    fn register_spam(&self, _module: &str, name: &str, function: Py<PyAny>, arity: i64) -> PyResult<()> {
        let me = Arc::new(PyHost { api: self.api.clone(), runtime: self.runtime.clone() });
        let mut cbs = SpamCheckerCallbacks::default();
        match name {
            "check_event_for_spam" => {
                cbs.check_event_for_spam = Some(me.callback(
                    "check_event_for_spam",
                    function,
                    |(e,): (EventView,)| json!([Value::Object(e.as_json().clone())]),
                    |v| {
                        if let Some(e) = module_error(&v) {
                            return Err(e);
                        }
                        if let Some(m) = v.get("message").and_then(Value::as_str) {
                            return Ok(EventDecision::DenyWithMessage(m.to_owned()));
                        }
                        Ok(match decision(v)? {
                            Decision::Allow => EventDecision::Allow,
                            Decision::Deny(d) => EventDecision::Deny(d),
                        })
                    },
                ))
            }
            "federated_user_may_invite" => {
                cbs.federated_user_may_invite = Some(me.callback(
                    "federated_user_may_invite",
                    function,
                    |(e,): (EventView,)| json!([Value::Object(e.as_json().clone())]),
                    decision,
                ))
            }
            "should_drop_federated_event" => {
                cbs.should_drop_federated_event = Some(me.callback(
                    "should_drop_federated_event",
                    function,
                    |(e,): (EventView,)| json!([Value::Object(e.as_json().clone())]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["bool"].as_bool().unwrap_or(false)),
                    },
                ))
            }
            "user_may_invite" => {
                cbs.user_may_invite = Some(me.callback(
                    "user_may_invite",
                    function,
                    |(a, b, c): (String, String, String)| json!([a, b, c]),
                    decision,
                ))
            }
            "user_may_join_room" => {
                cbs.user_may_join_room = Some(me.callback(
                    "user_may_join_room",
                    function,
                    |(a, b, c): (String, String, bool)| json!([a, b, c]),
                    decision,
                ))
            }
            "user_may_create_room" => {
                cbs.user_may_create_room = Some(me.callback(
                    "user_may_create_room",
                    function,
                    // Exactly two parameters: the new form with the room config (Synapse).
                    move |(u, c): (String, RoomConfig)| if arity == 2 { json!([u, c]) } else { json!([u]) },
                    decision,
                ))
            }
            "user_may_create_room_alias" => {
                cbs.user_may_create_room_alias = Some(me.callback(
                    "user_may_create_room_alias",
                    function,
                    |(a, b): (String, String)| json!([a, b]),
                    decision,
                ))
            }
            "user_may_publish_room" => {
                cbs.user_may_publish_room = Some(me.callback(
                    "user_may_publish_room",
                    function,
                    |(a, b): (String, String)| json!([a, b]),
                    decision,
                ))
            }
            "user_may_send_state_event" => {
                cbs.user_may_send_state_event = Some(me.callback(
                    "user_may_send_state_event",
                    function,
                    |(a, b, c, d, e): StateEventArgs| json!([a, b, c, d, e]),
                    decision,
                ))
            }
            "check_username_for_spam" => {
                cbs.check_username_for_spam = Some(me.callback(
                    "check_username_for_spam",
                    function,
                    move |(p, r): (UserProfile, String)| {
                        let profile =
                            json!({"user_id": p.user_id, "display_name": p.display_name, "avatar_url": p.avatar_url});
                        if arity == 2 { json!([profile, r]) } else { json!([profile]) }
                    },
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["bool"].as_bool().unwrap_or(false)),
                    },
                ))
            }
            "check_registration_for_spam" => {
                cbs.check_registration_for_spam = Some(me.callback(
                    "check_registration_for_spam",
                    function,
                    |(e, u, i, p): RegistrationArgs| json!([e, u, i, p]),
                    |v| {
                        if let Some(e) = module_error(&v) {
                            return Err(e);
                        }
                        Ok(match v["registration"].as_str() {
                            Some("shadow_ban") => RegistrationBehaviour::ShadowBan,
                            Some("deny") => RegistrationBehaviour::Deny,
                            _ => RegistrationBehaviour::Allow,
                        })
                    },
                ))
            }
            "check_login_for_spam" => {
                cbs.check_login_for_spam = Some(me.callback(
                    "check_login_for_spam",
                    function,
                    |(a, b, c, d, e): LoginArgs| json!([a, b, c, d, e]),
                    decision,
                ))
            }
            "check_media_file_for_spam" => {
                cbs.check_media_file_for_spam = Some(me.callback(
                    "check_media_file_for_spam",
                    function,
                    |(f,): (MediaFile,)| json!([f.path.to_string_lossy(), f.media_id, f.server_name, f.thumbnail]),
                    decision,
                ))
            }
            other => {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!("unknown spam checker callback {other}")));
            }
        }
        self.api
            .register_spam_checker_callbacks(cbs)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// Adds one third-party rules or account validity callback to the shared registry.
    fn register_third_party(&self, _module: &str, name: &str, function: Py<PyAny>) -> PyResult<()> {
        use myelin_module_api::third_party::*;
        let me = Arc::new(PyHost { api: self.api.clone(), runtime: self.runtime.clone() });
        let view_json = |e: &EventView| Value::Object(e.as_json().clone());
        let mut rules = ThirdPartyRulesCallbacks::default();
        let mut validity = AccountValidityCallbacks::default();
        match name {
            "check_event_allowed" => {
                rules.check_event_allowed = Some(me.callback(
                    "check_event_allowed",
                    function,
                    move |(e, state): (EventView, StateEvents)| {
                        json!([view_json(&e), state.iter().map(view_json).collect::<Vec<_>>()])
                    },
                    |v| {
                        if let Some(e) = module_error(&v) {
                            return Err(e);
                        }
                        if !v["allowed"].as_bool().unwrap_or(false) {
                            return Ok(EventAllowed::Deny);
                        }
                        // A replacement is a whole event dict; its content is what changes.
                        Ok(match v["replacement"].get("content").and_then(Value::as_object) {
                            Some(c) => EventAllowed::Replace(c.clone()),
                            None => EventAllowed::Allow,
                        })
                    },
                ))
            }
            "on_create_room" => {
                rules.on_create_room = Some(me.callback(
                    "on_create_room",
                    function,
                    |(u, c, admin): (String, Map<String, Value>, bool)| json!([u, c, admin]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["config"].as_object().cloned()),
                    },
                ))
            }
            "on_new_event" => {
                rules.on_new_event = Some(me.callback(
                    "on_new_event",
                    function,
                    move |(e, state): (EventView, StateEvents)| {
                        json!([view_json(&e), state.iter().map(view_json).collect::<Vec<_>>()])
                    },
                    |v| module_error(&v).map_or(Ok(()), Err),
                ))
            }
            "is_user_expired" => {
                validity.is_user_expired = Some(me.callback(
                    "is_user_expired",
                    function,
                    |(u,): (String,)| json!([u]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["expired"].as_bool()),
                    },
                ))
            }
            "on_user_registration" => {
                validity.on_user_registration = Some(me.callback(
                    "on_user_registration",
                    function,
                    |(u,): (String,)| json!([u]),
                    |v| module_error(&v).map_or(Ok(()), Err),
                ))
            }
            "check_3pid_auth" => {
                let cb = me.callback(
                    "check_3pid_auth",
                    function,
                    |(m, a, p): (String, String, String)| json!([m, a, p]),
                    vouched_user,
                );
                let auth = myelin_module_api::auth::PasswordAuthProviderCallbacks {
                    check_3pid_auth: Some(cb),
                    ..Default::default()
                };
                return self
                    .api
                    .register_password_auth_provider_callbacks(auth)
                    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()));
            }
            "on_logged_out" => {
                let cb = me.callback(
                    "on_logged_out",
                    function,
                    |(u, d, t): (String, Option<String>, String)| json!([u, d, t]),
                    |v| module_error(&v).map_or(Ok(()), Err),
                );
                let auth = myelin_module_api::auth::PasswordAuthProviderCallbacks {
                    on_logged_out: Some(cb),
                    ..Default::default()
                };
                return self
                    .api
                    .register_password_auth_provider_callbacks(auth)
                    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()));
            }
            other => return Err(pyo3::exceptions::PyTypeError::new_err(format!("unknown callback {other}"))),
        }
        let result = if matches!(name, "is_user_expired" | "on_user_registration") {
            self.api.register_account_validity_callbacks(validity)
        } else {
            self.api.register_third_party_rules_callbacks(rules)
        };
        result.map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// Adds one `auth_checkers` entry: `(login_type, fields) -> function`.
    fn register_auth_checker(
        &self,
        _module: &str,
        login_type: String,
        fields: Vec<String>,
        function: Py<PyAny>,
    ) -> PyResult<()> {
        let me = Arc::new(PyHost { api: self.api.clone(), runtime: self.runtime.clone() });
        let cb = me.callback(
            "auth_checker",
            function,
            |(user, login_type, dict): (String, String, Map<String, Value>)| json!([user, login_type, dict]),
            vouched_user,
        );
        let auth = myelin_module_api::auth::PasswordAuthProviderCallbacks {
            auth_checkers: vec![((login_type, fields), cb)],
            ..Default::default()
        };
        self.api
            .register_password_auth_provider_callbacks(auth)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// Serves `path` through the module's Twisted resource (mounted by the caller).
    fn register_web(&self, _module: &str, path: &str) -> PyResult<bool> {
        let resource = PyResource { runtime: self.runtime.clone(), path: path.to_owned() };
        self.api
            .register_web_resource(path, resource)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        Ok(true)
    }

    /// Runs an asynchronous ModuleApi operation on Tokio; `resolve(json)` fires on the reactor.
    fn call(&self, op: String, args: String, resolve: Py<PyAny>) -> PyResult<()> {
        let Some(handle) = self.runtime.tokio.get().cloned() else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("ModuleApi calls are not available before start-up"));
        };
        let api = self.api.clone();
        let runtime = self.runtime.clone();
        handle.spawn(async move {
            let args: Value = serde_json::from_str(&args).unwrap_or_default();
            let answer = run_op(&api, &op, &args).await;
            runtime.submit(move |py| {
                resolve.call1(py, (answer.to_string(),))?;
                Ok(())
            });
        });
        Ok(())
    }
}

fn ok_or_error(r: Result<Value, ModuleError>) -> Value {
    match r {
        Ok(v) => json!({"ok": v}),
        Err(ModuleError::Matrix { status, errcode, message, fields }) => {
            json!({"error": {"status": status, "errcode": errcode, "message": message, "fields": fields}})
        }
        Err(e) => json!({"error": {"status": 500, "errcode": "M_UNKNOWN", "message": e.to_string()}}),
    }
}

async fn run_op(api: &ModuleApi, op: &str, a: &Value) -> Value {
    let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
    match op {
        "get_userinfo_by_id" => json!({"ok": api.get_userinfo_by_id(&s("user_id")).await.map(|u| json!({
            "user_id": u.user_id, "is_admin": u.is_admin, "is_guest": u.is_guest,
            "is_deactivated": u.is_deactivated, "is_shadow_banned": u.is_shadow_banned, "creation_ts": u.creation_ts}))}),
        "get_profile_for_user" => json!({"ok": api.get_profile_for_user(&s("user")).await.map(|p| json!({
            "display_name": p.display_name, "avatar_url": p.avatar_url}))}),
        "create_and_send_event_into_room" => ok_or_error(
            api.create_and_send_event_into_room(a["event"].as_object().cloned().unwrap_or_default())
                .await
                .map(|e| Value::Object(e.as_json().clone())),
        ),
        "update_room_membership" => ok_or_error(
            api.update_room_membership(&s("sender"), &s("target"), &s("room_id"), &s("membership"))
                .await
                .map(|e| Value::Object(e.as_json().clone())),
        ),
        "create_room" => ok_or_error(
            api.create_room(&s("user_id"), a["config"].as_object().cloned().unwrap_or_default())
                .await
                .map(|(r, al)| json!([r, al])),
        ),
        "lookup_room_alias" => {
            ok_or_error(api.lookup_room_alias(&s("alias")).await.map(|(r, servers)| json!([r, servers])))
        }
        "get_room_state" => ok_or_error(
            api.get_room_state(&s("room_id"))
                .await
                .map(|evs| Value::Array(evs.into_iter().map(|e| Value::Object(e.as_json().clone())).collect())),
        ),
        "get_global_account_data" => {
            ok_or_error(api.get_global_account_data(&s("user_id"), &s("type")).await.map(|v| v.unwrap_or(Value::Null)))
        }
        "put_global_account_data" => ok_or_error(
            api.put_global_account_data(
                &s("user_id"),
                &s("type"),
                a["content"].as_object().cloned().unwrap_or_default(),
            )
            .await
            .map(|_| Value::Null),
        ),
        "get_user_by_req" => ok_or_error(
            api.get_user_by_access_token(&s("token"), a["allow_expired"].as_bool().unwrap_or(false))
                .await
                .map(Value::String),
        ),
        "register_user" => ok_or_error(
            api.register_user(&s("localpart"), a["displayname"].as_str(), a["admin"].as_bool().unwrap_or(false))
                .await
                .map(Value::String),
        ),
        "register_device" => ok_or_error(
            api.register_device(&s("user_id"), a["device_id"].as_str(), a["display_name"].as_str())
                .await
                .map(|(d, t)| json!([d, t])),
        ),
        "set_user_admin" => ok_or_error(
            api.set_user_admin(&s("user_id"), a["admin"].as_bool().unwrap_or(false)).await.map(|_| Value::Null),
        ),
        "set_displayname" => {
            ok_or_error(api.set_displayname(&s("user_id"), &s("displayname")).await.map(|_| Value::Null))
        }
        "room_is_public" => ok_or_error(
            api.public_room_list_manager().room_is_in_public_room_list(&s("room_id")).await.map(Value::Bool),
        ),
        "set_room_public" => {
            let m = api.public_room_list_manager();
            let r = if a["public"].as_bool().unwrap_or(false) {
                m.add_room_to_public_room_list(&s("room_id")).await
            } else {
                m.remove_room_from_public_room_list(&s("room_id")).await
            };
            ok_or_error(r.map(|_| Value::Null))
        }
        "http" => {
            let body = if a.get("body").is_some() { a["body"].to_string().into_bytes() } else { Vec::new() };
            let mut headers: Vec<(String, String)> = a["headers"]
                .as_array()
                .map(|h| {
                    h.iter().filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned()))).collect()
                })
                .unwrap_or_default();
            if !body.is_empty() {
                headers.push(("Content-Type".into(), "application/json".into()));
            }
            let request = myelin_module_api::http::HttpRequest { method: s("method"), url: s("url"), headers, body };
            match api.http_client().request(request).await {
                Ok(r) if (200..300).contains(&r.status) => match serde_json::from_slice::<Value>(&r.body) {
                    Ok(v) => json!({"ok": v}),
                    Err(e) => json!({"exception": format!("invalid JSON in response: {e}")}),
                },
                Ok(r) => {
                    json!({"http_status": r.status, "body": base64::engine::general_purpose::STANDARD.encode(&r.body)})
                }
                Err(e) => json!({"exception": e.to_string()}),
            }
        }
        other => {
            json!({"error": {"status": 500, "errcode": "M_UNKNOWN", "message": format!("unknown operation {other}")}})
        }
    }
}

/// A module's Twisted resource, served through a real `Site` on the Python thread.
struct PyResource {
    runtime: Arc<PythonRuntime>,
    path: String,
}

impl WebResource for PyResource {
    fn handle(&self, request: Request) -> BoxFuture<'static, Response> {
        let (tx, rx) = futures::channel::oneshot::channel::<(u16, String, Vec<u8>)>();
        let path = self.path.clone();
        let method = request.method().as_str().to_owned();
        let uri = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
        let headers: Vec<Value> =
            request.headers().iter().filter_map(|(k, v)| Some(json!([k.as_str(), v.to_str().ok()?]))).collect();
        let client = request
            .extensions()
            .get::<myelin_module_api::web::ClientAddress>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        let body = request.into_body();
        self.runtime.submit(move |py| {
            let tx = Mutex::new(Some(tx));
            let done = PyCFunction::new_closure(py, None, None, move |a: &Bound<'_, PyTuple>, _kw| -> PyResult<()> {
                let status: u16 = a.get_item(0)?.extract()?;
                let headers: String = a.get_item(1)?.extract()?;
                let body: Vec<u8> = a.get_item(2)?.extract()?;
                if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = tx.send((status, headers, body));
                }
                Ok(())
            })?;
            let host = py.import("myelin_host")?;
            host.call_method1(
                "serve",
                (
                    path,
                    method,
                    uri,
                    Value::Array(headers).to_string(),
                    pyo3::types::PyBytes::new(py, &body),
                    client,
                    done,
                ),
            )?;
            Ok(())
        });
        Box::pin(async move {
            let Ok((status, headers, body)) = rx.await else {
                return myelin_module_api::web::json_response(
                    500,
                    &json!({"errcode": "M_UNKNOWN", "error": "Internal server error"}),
                );
            };
            let mut builder = http::Response::builder().status(status);
            let parsed: Vec<(String, String)> = serde_json::from_str::<Vec<Vec<String>>>(&headers)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone())))
                .collect();
            for (k, v) in parsed {
                // The transport-level headers are Myelin's to set.
                if !["connection", "transfer-encoding", "content-length", "date", "server"]
                    .contains(&k.to_lowercase().as_str())
                {
                    builder = builder.header(k, v);
                }
            }
            builder.body(Bytes::from(body)).unwrap_or_else(|_| http::Response::new(Bytes::new()))
        })
    }
}

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
        let host = include_str!("lib.rs");
        for (method, names) in NAMES {
            let parameters = shim_parameters(method);
            for name in *names {
                assert!(
                    parameters.iter().any(|p| p == name),
                    "register_{method}_callbacks in the shim does not take {name}: {parameters:?}"
                );
                if *name != "auth_checkers" {
                    assert!(host.contains(&format!("\"{name}\" =>")), "the Python host does not convert {name}");
                }
            }
        }
    }
}
