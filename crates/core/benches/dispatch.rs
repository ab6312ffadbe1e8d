//! What a module callback chain costs on the dispatch path: three native modules, each with a
//! no-op `user_may_invite` (and `check_event_for_spam`), called through the real registry with
//! its ordering, panic containment and per-module metrics. Aim (issue 6): under 1 us.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use myelin_core::events::SigningKey;
use myelin_core::modules::{self, NativeModule, NativeModules};
use myelin_core::{Config, Homeserver};
use myelin_module_api::spam::{Decision, EventDecision, SpamCheckerCallbacks, callback};
use myelin_module_api::{ConfigError, EventView, Module, ModuleApi, ModuleError};
use myelin_storage::sqlite::SqliteStore;
use serde_json::{Value, json};

struct NoOp;

impl Module for NoOp {
    const NAME: &'static str = "bench.NoOp";
    type Config = ();
    fn parse_config(_: Value) -> Result<(), ConfigError> {
        Ok(())
    }
    fn new(_: (), api: &ModuleApi) -> Result<Self, ModuleError> {
        api.register_spam_checker_callbacks(SpamCheckerCallbacks {
            user_may_invite: Some(callback(|_: String, _: String, _: String| async { Ok(Decision::Allow) })),
            check_event_for_spam: Some(callback(|_: EventView| async { Ok(EventDecision::Allow) })),
            ..Default::default()
        })?;
        Ok(NoOp)
    }
}

fn server(modules: usize) -> Arc<Homeserver> {
    let natives = NativeModules::new(vec![NativeModule::of::<NoOp>()]);
    let list: String = (0..modules).map(|_| "  - module: bench.NoOp\n").collect();
    let yaml = format!("server_name: bench\nmodules:\n{list}");
    let (config, loaded): (Config, _) = Config::parse(&yaml, std::path::Path::new("."), &natives).unwrap();
    let store = SqliteStore::open_in_memory().unwrap();
    let key = SigningKey::from_seed("b", &[1u8; 32]).unwrap();
    let hs = Homeserver::new(config, Arc::new(store), key).unwrap();
    modules::instantiate(&hs, loaded).unwrap();
    hs.modules.freeze();
    hs
}

fn bench(c: &mut Criterion) {
    let three = server(3);
    let none = server(0);
    let event = EventView::new(
        json!({"event_id": "$e", "type": "m.room.message", "sender": "@a:bench", "room_id": "!r:bench", "content": {"body": "hi"}})
            .as_object()
            .unwrap()
            .clone(),
    );
    c.bench_function("user_may_invite, 3 no-op modules", |b| {
        b.iter(|| {
            futures::executor::block_on(three.modules.user_may_invite("@a:bench", "@b:bench", "!r:bench")).unwrap()
        })
    });
    c.bench_function("check_event_for_spam, 3 no-op modules", |b| {
        b.iter(|| futures::executor::block_on(three.modules.check_event_for_spam(&event)).unwrap())
    });
    c.bench_function("user_may_invite, no modules", |b| {
        b.iter(|| {
            futures::executor::block_on(none.modules.user_may_invite("@a:bench", "@b:bench", "!r:bench")).unwrap()
        })
    });
}

/// One `rc_message` check on a bucket that never fills (what every send pays).
fn rate_limit(c: &mut Criterion) {
    use myelin_core::ratelimit::{Limiter, RateLimit};
    let limiter = Limiter::new("rc_message", RateLimit { per_second: 1e9, burst_count: 1e9 });
    for i in 0..10_000 {
        limiter.check(&format!("@user{i}:bench")).unwrap();
    }
    c.bench_function("rate limit check, 10k buckets", |b| b.iter(|| limiter.check("@user42:bench").unwrap()));
}

criterion_group!(benches, bench, rate_limit);
criterion_main!(benches);
