fn main() {
    let body = imagemap_bench::fixtures::review_body(8, 4, 1);
    let index = imagemap_bench::fixtures::index_with(10);
    let r = imagemap::admission::review(&body, &index).expect("review");
    println!("{}", String::from_utf8_lossy(&r.body));
}
