use std::time::Instant;
fn main() {
    let (writer, _g) = imagemap::server::log_writer::BatchedWriter::new(std::io::sink());
    let json = std::env::args().nth(1).as_deref() == Some("json");
    let filter = tracing_subscriber::EnvFilter::try_new("info").unwrap();
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(false);
    if json {
        logs.json().flatten_event(true).init()
    } else {
        logs.init()
    }
    let n = 200_000;
    let t = Instant::now();
    for i in 0..n {
        let fields = format!("{}:{}->{}", "spec.containers{c0}.image", "app-0", "localhost:5000/app-0:tilt-1");
        tracing::info!(uid = %"6f5d5e6b-7a0c-4b8e-9d3e-2f1c0a9b8c7d", object = %"ns-0/web-7d9f8b6c5d-", outcome = "patched", swaps = 1, warnings = 1, fields = fields, micros = i as u64, "review");
    }
    println!("{:.2} µs per line", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(tracing::enabled!(tracing::Level::INFO));
    }
    println!("{:.3} µs per enabled!", t.elapsed().as_secs_f64() * 1e6 / n as f64);
}
