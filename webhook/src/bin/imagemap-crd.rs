//! Prints the ImageMap CRD generated from the Rust types (`make crd` writes it into the chart).

fn main() {
    print!("{}", imagemap::types::crd_yaml());
}
