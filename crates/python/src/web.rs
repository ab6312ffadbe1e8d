//! Module web resources served by Twisted on the Python thread.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use myelin_module_api::web::{Request, Response, WebResource};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyTuple};
use serde_json::{Value, json};

use crate::*;

/// A module's Twisted resource, served through a real `Site` on the Python thread.
pub(crate) struct PyResource {
    pub(crate) runtime: Arc<PythonRuntime>,
    pub(crate) path: String,
}

impl WebResource for PyResource {
    /// Twisted routes below the resource itself (children, `isLeaf` and `postpath`).
    fn serves_subpaths(&self) -> bool {
        true
    }

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
