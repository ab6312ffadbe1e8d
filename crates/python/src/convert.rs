//! JSON data to Python objects and back.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyList, PyString, PyTuple};
use serde_json::Value;

/// JSON data as the Python objects `json.loads` would give, built directly.
pub(crate) fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
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
pub(crate) fn from_python(object: &Bound<'_, PyAny>) -> Value {
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

pub(crate) fn to_py(py: Python<'_>, s: &str) -> Py<PyAny> {
    s.into_pyobject(py).map(|o| o.into_any().unbind()).unwrap_or_else(|_| py.None())
}
