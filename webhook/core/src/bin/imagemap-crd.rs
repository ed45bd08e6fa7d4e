//! Prints the ImageMap CRD generated from the Rust types (`make crd` writes it into the chart).

fn main() {
    match imagemap_core::types::crd_yaml() {
        Ok(yaml) => print!("{yaml}"),
        Err(e) => {
            eprintln!("imagemap-crd: could not render the CRD as YAML: {e}");
            std::process::exit(1);
        }
    }
}
