//! The same rpath as the `myelin` binary: the test server links libpython too.

include!("../crates/myelin/build.rs");
