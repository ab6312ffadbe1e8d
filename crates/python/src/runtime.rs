//! The interpreter thread, its asyncio loop, and the queue that brings work to it.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use myelin_core::modules::ForeignSettings;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyTuple};
use serde_json::Value;

use crate::*;

/// Work for the Python thread: runs there, in the reactor, with the GIL held.
pub(crate) type Job = Box<dyn FnOnce(Python<'_>) -> PyResult<()> + Send>;

/// The interpreter thread and its asyncio loop.
pub(crate) struct PythonRuntime {
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
    pub(crate) tokio: OnceLock<tokio::runtime::Handle>,
}

pub(crate) fn py_err(e: PyErr) -> String {
    Python::attach(|py| {
        let tb = e.traceback(py).and_then(|t| t.format().ok()).unwrap_or_default();
        format!("{tb}{e}")
    })
}

/// How long the Python thread waits, GIL released, for another job after finishing one, before
/// going back to the asyncio loop. Under load the next call is usually that close, and taking it
/// from the queue directly skips a socket wake-up and a loop iteration.
pub(crate) const LINGER: Duration = Duration::from_micros(50);

/// How long of [`LINGER`] is spent spinning before parking: a job that comes that soon then
/// costs its submitter no futex wake-up.
pub(crate) const SPIN: Duration = Duration::from_micros(15);

/// The next job within [`LINGER`], spinning for [`SPIN`] first.
pub(crate) fn next_job(jobs: &std::sync::mpsc::Receiver<Job>) -> Result<Job, std::sync::mpsc::RecvTimeoutError> {
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
pub(crate) const DRAIN_BUDGET: Duration = Duration::from_millis(2);

/// The asyncio reader callback: empties the wake-up socket, then runs queued jobs, lingering
/// briefly for more, within [`DRAIN_BUDGET`].
pub(crate) fn drainer(
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
    pub(crate) fn start(settings: &ForeignSettings) -> Result<Arc<Self>, String> {
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
                    host.setattr("_rust_log", pyo3::wrap_pyfunction!(log_record, &host)?)?;
                    host.setattr("_rust_log_enabled", pyo3::wrap_pyfunction!(log_enabled, &host)?)?;
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
    pub(crate) fn submit(&self, f: impl FnOnce(Python<'_>) -> PyResult<()> + Send + 'static) {
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
    pub(crate) fn call(
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

    pub(crate) fn call_blocking(
        self: &Arc<Self>,
        function: &'static str,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Vec<Py<PyAny>>> + Send + 'static,
    ) -> Result<Value, String> {
        let rx = self.call(function, args);
        futures::executor::block_on(rx).map_err(|_| "the Python thread dropped the call".to_owned())
    }
}

/// Whether Myelin's log shows records of this Python level.
#[pyfunction]
fn log_enabled(level: u32) -> bool {
    match level {
        40.. => tracing::enabled!(target: "python", tracing::Level::ERROR),
        30..=39 => tracing::enabled!(target: "python", tracing::Level::WARN),
        20..=29 => tracing::enabled!(target: "python", tracing::Level::INFO),
        _ => tracing::enabled!(target: "python", tracing::Level::DEBUG),
    }
}

/// One Python log record, into Myelin's log: Python's level, the logger's name as `logger`,
/// an exception's traceback as `traceback`.
#[pyfunction]
fn log_record(level: u32, logger: &str, message: &str, traceback: &str) {
    let traceback = (!traceback.is_empty()).then_some(traceback);
    match level {
        40.. => tracing::error!(target: "python", logger, traceback, "{message}"),
        30..=39 => tracing::warn!(target: "python", logger, traceback, "{message}"),
        20..=29 => tracing::info!(target: "python", logger, traceback, "{message}"),
        _ => tracing::debug!(target: "python", logger, traceback, "{message}"),
    }
}
