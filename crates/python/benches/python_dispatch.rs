//! What one Python callback costs through the embedded host: a no-op async `user_may_invite`
//! (bench/modules/noop_spam.py), called through the real registry. Issue 7 aims at under 30 us
//! at the median. Run by bench/run.sh, which sets PYTHONPATH and VIRTUAL_ENV (Twisted).

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use myelin_core::events::SigningKey;
use myelin_core::modules::{self, NativeModules};
use myelin_core::{Config, Homeserver};
use myelin_storage::sqlite::SqliteStore;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = runtime.enter();
    let natives = NativeModules::new(Vec::new()).with_foreign(myelin_python::PythonModules::new());
    let yaml = "server_name: bench\nmodules:\n  - module: noop_spam.NoopInvite\n";
    let (config, loaded): (Config, _) = match Config::parse(yaml, std::path::Path::new("."), &natives) {
        Ok(c) => c,
        Err(e) => panic!("{e} (run with PYTHONPATH=bench/modules and VIRTUAL_ENV set to a venv with Twisted)"),
    };
    let store = SqliteStore::open_in_memory().expect("store");
    let key = SigningKey::from_seed("b", &[1u8; 32]).expect("key");
    let hs = Homeserver::new(config, Arc::new(store), key).expect("homeserver");
    modules::instantiate(&hs, loaded).expect("instantiate");
    hs.modules.freeze();
    c.bench_function("user_may_invite, 1 Python no-op module", |b| {
        b.iter(|| {
            futures::executor::block_on(hs.modules.user_may_invite("@a:bench", "@b:bench", "!r:bench"))
                .expect("allowed")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
