fn main() {
    let lang = "rust";
    println!("runner-test: {} ok", lang);
}
