//! Rebuilds the crate when one of its queries changes: the query macros
//! make Cargo track the `.sql` files of statements that return rows, not
//! of those that return none.
fn main() {
    println!("cargo:rerun-if-changed=queries");
}
