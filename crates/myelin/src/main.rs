//! The stock `myelin` binary: the built-in modules and nothing else.

fn main() -> std::process::ExitCode {
    myelin::main_with_modules(Vec::new())
}
