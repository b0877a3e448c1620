//! docs/profile-schema.md stays the contract: its example loads, and it
//! names every field a profile can carry.

use std::path::Path;

use serde_json::Value;
use standin_validate::Profile;

fn doc() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/profile-schema.md"))
        .unwrap()
}

fn example() -> String {
    let d = doc();
    let after = d.split("## Example").nth(1).expect("an Example section");
    let block = after.split("```json").nth(1).expect("a json block");
    block.split("```").next().unwrap().to_string()
}

fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push(k.clone());
                keys(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| keys(x, out)),
        _ => {}
    }
}

#[test]
fn example_loads_and_every_field_is_documented() {
    let ex = example();
    let p =
        Profile::from_json(ex.as_bytes(), "docs example").expect("the documented example loads");
    assert!(p.volumes[1].lvm);
    // Every field set: the example plus the few it leaves out.
    let mut v = serde_json::to_value(&p).unwrap();
    v["services_to_stop"] = serde_json::json!(["x.service"]);
    v["volumes"][0]["md"] = Value::Bool(true);
    let full: Profile = serde_json::from_value(v).unwrap();
    let mut all = Vec::new();
    keys(&serde_json::to_value(&full).unwrap(), &mut all);
    all.sort();
    all.dedup();
    assert!(all.len() >= 40, "{all:?}");
    let d = doc();
    for k in all {
        assert!(
            d.contains(&format!("| `{k}` |")),
            "docs/profile-schema.md does not document `{k}`"
        );
    }
}
