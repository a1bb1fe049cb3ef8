//! The reference answer: one `/explain` of the photo, alone.

use crate::http::Target;
use serde_json::Value;

/// The class and heatmap every good answer under overload must repeat.
pub struct Reference {
    pub class: u64,
    pub heatmap: Vec<f64>,
}

/// Asks for the reference answer and prints the photo's and the answer's sizes; panics when
/// the server does not answer 200.
pub async fn request(target: &Target, photo: &[u8]) -> Reference {
    let answer = target.explain(photo).await.expect("the server answers");
    assert_eq!(answer.status, 200, "reference request");
    let v: Value = serde_json::from_slice(&answer.body).expect("the reference answer is JSON");
    let reference = Reference {
        class: v["explanations"][0]["class_index"]
            .as_u64()
            .expect("the answer has a class index"),
        heatmap: serde_json::from_value(v["explanations"][0]["heatmap"]["data"].clone())
            .expect("the answer has a heatmap"),
    };
    println!(
        "photo {} bytes, reference class {}, answer {} bytes",
        photo.len(),
        reference.class,
        answer.body.len()
    );
    reference
}
