//! The seed's example module (seed/modules.md, "Example"), in Rust.
//!
//! It serves `/_synapse/client/demo/hello?name=X`, answering `{"hello": "X"}`, and denies room
//! creation to the user named by `denied_user` in its config. It depends only on
//! `myelin-module-api`, like any third-party module.
#![forbid(unsafe_code)]

use myelin_module_api::spam::{Decision, SpamCheckerCallbacks, callback};
use myelin_module_api::web::{Request, Response, json_response};
use myelin_module_api::{ConfigError, Module, ModuleApi, ModuleError};
use serde_json::{Map, Value, json};

/// The demo module.
pub struct DemoModule;

/// Its parsed config.
pub struct DemoConfig {
    /// The user whose room creation is refused.
    pub denied_user: Option<String>,
}

impl Module for DemoModule {
    const NAME: &'static str = "myelin.demo.DemoModule";
    type Config = DemoConfig;

    fn parse_config(config: Value) -> Result<DemoConfig, ConfigError> {
        match config.get("denied_user") {
            None | Some(Value::Null) => Ok(DemoConfig { denied_user: None }),
            Some(Value::String(u)) if u.starts_with('@') && u.contains(':') => {
                Ok(DemoConfig { denied_user: Some(u.clone()) })
            }
            Some(_) => {
                Err(ConfigError::at("denied_user must be a full user ID such as @evil:example.com", &["denied_user"]))
            }
        }
    }

    fn new(config: DemoConfig, api: &ModuleApi) -> Result<Self, ModuleError> {
        api.register_web_resource("/_synapse/client/demo/hello", hello)?;
        let denied = config.denied_user;
        api.register_spam_checker_callbacks(SpamCheckerCallbacks {
            user_may_create_room: Some(callback(move |user_id: String, _config: Map<String, Value>| {
                let denied = denied.clone();
                async move { Ok(Decision::from_may(denied.as_deref() != Some(user_id.as_str()))) }
            })),
            ..Default::default()
        })?;
        Ok(DemoModule)
    }
}

/// `GET /_synapse/client/demo/hello?name=X`.
async fn hello(request: Request) -> Response {
    let name = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("name="))
        .map(percent_decode)
        .unwrap_or_default();
    json_response(200, &json!({ "hello": name }))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
