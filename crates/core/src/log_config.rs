//! Synapse's `log_config`: a Python `logging` dictConfig file (YAML). What maps onto Myelin's
//! logging is honoured, the rest is named in a warning:
//!
//! - `root.level` sets the level (unless `log_level` is set), and a `synapse` logger's level
//!   does too (Synapse's own loggers are Myelin's);
//! - the root handlers: a file handler (`logging.FileHandler`, `RotatingFileHandler`,
//!   `TimedRotatingFileHandler`, `WatchedFileHandler`) writes to its `filename` (appending; no
//!   rotation: use logrotate's `copytruncate`), a `StreamHandler` writes to stderr, and
//!   Synapse's `PeriodicallyFlushingMemoryHandler` (or `logging.handlers.MemoryHandler`) means
//!   its `target`;
//! - a handler whose formatter is Synapse's `TerseJsonFormatter` or `JsonFormatter` logs JSON
//!   lines.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::ConfigError;

/// What Myelin takes from a `log_config` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSettings {
    /// The level of the root logger (or of `synapse`), lower-cased in Rust's terms.
    pub level: Option<String>,
    /// Log to this file (appending) instead of stderr.
    pub file: Option<PathBuf>,
    /// One JSON object per line.
    pub json: bool,
    /// What was not honoured, one line each.
    pub warnings: Vec<String>,
}

fn level(python: &str) -> Option<String> {
    Some(
        match python.to_ascii_uppercase().as_str() {
            "DEBUG" | "NOTSET" => "debug",
            "INFO" => "info",
            "WARNING" | "WARN" => "warn",
            "ERROR" | "CRITICAL" | "FATAL" => "error",
            _ => return None,
        }
        .to_owned(),
    )
}

/// Reads the file at `path` (relative paths inside it are relative to `base`).
pub(crate) fn load(path: &Path, base: &Path) -> Result<LogSettings, ConfigError> {
    let at = ["log_config".to_owned()];
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::at(&at, format!("{}: cannot read the file: {e}", path.display())))?;
    let Ok(Value::Object(root)) = serde_yaml_ng::from_str::<Value>(&text) else {
        return Err(ConfigError::at(
            &at,
            format!("{}: expected a YAML mapping (Python's logging dictConfig)", path.display()),
        ));
    };
    parse(&root, base).map_err(|message| ConfigError::at(&at, format!("{}: {message}", path.display())))
}

fn parse(root: &Map<String, Value>, base: &Path) -> Result<LogSettings, String> {
    let mut out = LogSettings::default();
    let section = |key: &str| root.get(key).and_then(Value::as_object).cloned().unwrap_or_default();
    let (handlers, formatters, loggers) = (section("handlers"), section("formatters"), section("loggers"));
    let root_logger = section("root");
    if let Some(l) = root_logger.get("level").and_then(Value::as_str) {
        out.level = Some(level(l).ok_or_else(|| format!("root: unknown level '{l}'"))?);
    }
    for (name, logger) in &loggers {
        let l = logger.get("level").and_then(Value::as_str);
        match (name.as_str(), l) {
            ("synapse", Some(l)) => {
                out.level = Some(level(l).ok_or_else(|| format!("loggers.synapse: unknown level '{l}'"))?)
            }
            (_, Some(_)) => out
                .warnings
                .push(format!("log_config: the level of logger '{name}' is not used (Myelin's loggers differ)")),
            _ => {}
        }
    }
    let names: Vec<String> = match root_logger.get("handlers") {
        None => Vec::new(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(_) => return Err("root.handlers: expected a list".into()),
    };
    let mut outputs: Vec<(Option<PathBuf>, bool)> = Vec::new();
    for name in names {
        // Follow a memory handler to its target (Synapse's default config buffers the file).
        let mut current = name.clone();
        for _ in 0..4 {
            let Some(handler) = handlers.get(&current).and_then(Value::as_object) else {
                return Err(format!("root.handlers: no handler named '{current}'"));
            };
            let class = handler.get("class").and_then(Value::as_str).unwrap_or_default();
            let json = handler
                .get("formatter")
                .and_then(Value::as_str)
                .and_then(|f| formatters.get(f))
                .and_then(|f| f.get("class").or_else(|| f.get("()")))
                .and_then(Value::as_str)
                .is_some_and(|c| c.ends_with("JsonFormatter"));
            let short = class.rsplit('.').next().unwrap_or_default();
            match short {
                "PeriodicallyFlushingMemoryHandler" | "MemoryHandler" => {
                    match handler.get("target").and_then(Value::as_str) {
                        Some(target) => {
                            current = target.to_owned();
                            continue;
                        }
                        None => return Err(format!("handlers.{current}: a memory handler needs a 'target'")),
                    }
                }
                "FileHandler" | "RotatingFileHandler" | "TimedRotatingFileHandler" | "WatchedFileHandler" => {
                    let Some(file) = handler.get("filename").and_then(Value::as_str) else {
                        return Err(format!("handlers.{current}: a file handler needs a 'filename'"));
                    };
                    let file = PathBuf::from(file);
                    let file = if file.is_absolute() { file } else { base.join(file) };
                    if short != "FileHandler" && short != "WatchedFileHandler" {
                        out.warnings.push(format!(
                            "log_config: handler '{current}' ({short}) is written without rotation; rotate it externally (e.g. logrotate with copytruncate)"
                        ));
                    }
                    outputs.push((Some(file), json));
                }
                "StreamHandler" => outputs.push((None, json)),
                _ => out
                    .warnings
                    .push(format!("log_config: handler '{current}' ({class}) is not supported and is ignored")),
            }
            break;
        }
    }
    if let Some((file, json)) = outputs.iter().find(|(f, _)| f.is_some()).or(outputs.first()).cloned() {
        out.file = file;
        out.json = json;
    }
    if outputs.len() > 1 {
        out.warnings
            .push("log_config: Myelin writes one log; the first file handler is used (else the console)".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Result<LogSettings, String> {
        let Value::Object(root) = serde_yaml_ng::from_str(yaml).unwrap() else { panic!() };
        parse(&root, Path::new("/etc/synapse"))
    }

    /// Synapse's generated log config (trimmed of comments).
    const SYNAPSE_DEFAULT: &str = "version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.handlers.TimedRotatingFileHandler
    formatter: precise
    filename: homeserver.log
    when: midnight
    backupCount: 3
  buffer:
    class: synapse.logging.handlers.PeriodicallyFlushingMemoryHandler
    target: file
    capacity: 10
    flushLevel: 30
    period: 5
  console:
    class: logging.StreamHandler
    formatter: precise
loggers:
  synapse.storage.SQL:
    level: INFO
root:
  level: WARNING
  handlers: [buffer]
disable_existing_loggers: false
";

    #[test]
    fn synapse_s_generated_log_config_maps() {
        let s = settings(SYNAPSE_DEFAULT).unwrap();
        assert_eq!(s.level.as_deref(), Some("warn"));
        assert_eq!(
            s.file.as_deref(),
            Some(Path::new("/etc/synapse/homeserver.log")),
            "through the buffer, relative to the config"
        );
        assert!(!s.json);
        assert!(s.warnings.iter().any(|w| w.contains("without rotation")), "{:?}", s.warnings);
        assert!(s.warnings.iter().any(|w| w.contains("synapse.storage.SQL")), "{:?}", s.warnings);
    }

    #[test]
    fn json_console_and_errors() {
        let json = "formatters: {structured: {class: synapse.logging.TerseJsonFormatter}}\n\
            handlers: {console: {class: logging.StreamHandler, formatter: structured}}\n\
            loggers: {synapse: {level: DEBUG}}\nroot: {level: INFO, handlers: [console]}\n";
        let s = settings(json).unwrap();
        assert_eq!((s.level.as_deref(), s.file.as_deref(), s.json), (Some("debug"), None, true));
        assert!(settings("root: {level: LOUD}").unwrap_err().contains("unknown level"));
        assert!(settings("root: {handlers: [nope]}").unwrap_err().contains("no handler named 'nope'"));
        assert!(
            settings("handlers: {f: {class: logging.FileHandler}}\nroot: {handlers: [f]}")
                .unwrap_err()
                .contains("filename")
        );
        let odd = settings("handlers: {s: {class: logging.handlers.SysLogHandler}}\nroot: {handlers: [s]}").unwrap();
        assert!(odd.warnings.iter().any(|w| w.contains("not supported")) && odd.file.is_none());
    }
}
