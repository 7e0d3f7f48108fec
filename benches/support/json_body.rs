//! The 10 KiB JSON body (a list of small objects, like an API's list answer) that the
//! compression benchmark measures and tests/compression.rs checks, from one place so the
//! two stay the same shape.

use bytes::Bytes;

/// About 10 KiB of JSON objects in a list.
pub fn json_body() -> Bytes {
    let mut body = String::from("[");
    let mut i = 0;
    while body.len() < 10 * 1024 - 80 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            "{{\"id\":{i},\"sku\":\"SKU-{:05}\",\"name\":\"item {i}\",\"in_stock\":{}}}",
            i * 7,
            i % 3 == 0
        ));
        i += 1;
    }
    body.push(']');
    Bytes::from(body)
}
