// The same rpath as the `myelin` binary, for this crate's own benchmark binary.

include!("../myelin/build.rs");
